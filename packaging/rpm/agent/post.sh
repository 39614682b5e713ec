# %post ($1: 1 on install, 2 on upgrade): the data directory, then systemd's preset on a fresh
# install (as %systemd_post does; RHEL's default preset leaves the unit disabled).
[ -d /var/lib/fleetwatch ] || install -d -m 0755 -o root -g root /var/lib/fleetwatch
[ -d /var/lib/fleetwatch/agent ] || install -d -m 0750 -o fleetwatch -g fleetwatch /var/lib/fleetwatch/agent
[ -d /etc/fleetwatch/pki ] || install -d -m 0755 -o root -g root /etc/fleetwatch/pki
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload preset fleetwatch-agent.service >/dev/null 2>&1 || :
    fi
    if [ ! -e /etc/fleetwatch/pki/agent.pem ]; then
        echo "fleetwatch-agent: issue its certificate on the aggregator host with"
        echo "  fleetwatch-aggregator pki issue --dir /etc/fleetwatch/pki --agent \$(hostname)"
        echo "copy ca.pem, agent.pem and agent.key to /etc/fleetwatch/pki/, then"
        echo "  systemctl enable --now fleetwatch-agent"
        echo "Step by step: /usr/share/doc/fleetwatch-agent/README.md"
    fi
fi
exit 0

# %post ($1: 1 on install, 2 on upgrade): the data directory and, once, a random admin token for
# the HTTP API; then systemd's preset on a fresh install (as %systemd_post does).
[ -d /var/lib/fleetwatch ] || install -d -m 0755 -o root -g root /var/lib/fleetwatch
[ -d /var/lib/fleetwatch/aggregator ] || install -d -m 0750 -o fleetwatch -g fleetwatch /var/lib/fleetwatch/aggregator
[ -d /etc/fleetwatch/pki ] || install -d -m 0755 -o root -g root /etc/fleetwatch/pki
if [ ! -e /etc/fleetwatch/admin.token ]; then
    (
        umask 077
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > /etc/fleetwatch/admin.token.new
        echo >> /etc/fleetwatch/admin.token.new
    )
    chown root:fleetwatch /etc/fleetwatch/admin.token.new
    chmod 0640 /etc/fleetwatch/admin.token.new
    mv /etc/fleetwatch/admin.token.new /etc/fleetwatch/admin.token
    echo "fleetwatch-aggregator: admin token for the HTTP API written to /etc/fleetwatch/admin.token"
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload preset fleetwatch-aggregator.service >/dev/null 2>&1 || :
    fi
    echo "fleetwatch-aggregator: create the fleet CA and this host's certificate with"
    echo "  fleetwatch-aggregator pki init  --dir /etc/fleetwatch/pki"
    echo "  fleetwatch-aggregator pki issue --dir /etc/fleetwatch/pki --server <this host's DNS name>"
    echo "copy the certificate and key to the paths in /etc/fleetwatch/aggregator.toml, then"
    echo "  systemctl enable --now fleetwatch-aggregator"
    echo "Step by step: /usr/share/doc/fleetwatch-aggregator/README.md"
fi
exit 0

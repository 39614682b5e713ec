# %postun ($1: 0 on erase, 1 on upgrade): reload systemd; on upgrade restart the unit if it was
# running (as %systemd_postun_with_restart). Configuration edited by the operator is kept as
# .rpmsave, and the data in /var/lib/fleetwatch/aggregator stays: remove it by hand if wanted.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart fleetwatch-aggregator.service >/dev/null 2>&1 || :
    fi
fi
exit 0

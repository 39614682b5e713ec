# %preun ($1: 0 on erase, 1 on upgrade): on erase, stop and disable the unit (as %systemd_preun).
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now fleetwatch-aggregator.service >/dev/null 2>&1 || :
fi
exit 0

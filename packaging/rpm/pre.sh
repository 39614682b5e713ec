# %pre: create the fleetwatch system user (shared by fleetwatch-agent and fleetwatch-aggregator).
getent group fleetwatch >/dev/null || groupadd --system fleetwatch
getent passwd fleetwatch >/dev/null || useradd --system --gid fleetwatch \
    --home-dir /var/lib/fleetwatch --no-create-home --shell /usr/sbin/nologin \
    --comment "fleetwatch agent and aggregator" fleetwatch
exit 0

#!/usr/bin/env bash
# End-to-end test of the fleetwatch packages (CI calls it; run it as root on Debian/Ubuntu).
#
#  1. builds the four packages with packaging/build.sh (release build included) and checks the
#     .deb control data and the .rpm file lists, scriptlets and dependencies (rpm -qp);
#  2. installs the .debs with dpkg into a fresh Debian bookworm root (debootstrap --variant=
#     minbase plus systemd, installed but not running there; the pristine root is cached as a
#     tarball under the work dir, so only the first run downloads it) and checks files, modes,
#     the fleetwatch user, the units (systemd-analyze verify) and check-config;
#  3. runs the installed binaries inside that root (chroot, own network namespace, /proc
#     mounted) as the service user: the aggregator with a CA, server certificate and token made
#     as packaging/README.md says, and an agent that starts before its certificate exists,
#     waits, and shows up in GET /api/fleet/hosts once the certificate is in place;
#  4. upgrades to rebuilt packages of a higher revision and checks that an edited config and
#     the stored data survive; removes, then purges, and checks what goes and what stays.
#
#   packaging/test-packages.sh [--no-build]
#
#   --no-build   use the release binaries already built (skips cargo build)
#
# Environment: FLEETWATCH_PKGTEST_DIR (work dir, default <repo>/target/pkgtest),
# FLEETWATCH_DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Prints a PASS or FAIL line per check and ends with "packages: N passed, M failed"; exits
# non-zero on any failure. Background processes, the /proc mount and the network namespace are
# cleaned up on every exit.
set -euo pipefail

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
cd "$repo"

build_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build_args+=(--no-build) ;;
        -h | --help) sed -n '2,25p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-packages.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

work=${FLEETWATCH_PKGTEST_DIR:-$repo/target/pkgtest}
mirror=${FLEETWATCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
root="$work/root"
base_tar="$work/$suite-minbase-systemd.tar"
logs="$work/logs"
pkgdir="$repo/target/packages"
upgrade_dir="$work/upgrade"
netns="fwpkgtest$$"
agent_name=pkgtest-host
api=http://127.0.0.1:4741
started=$(date +%s)

checks_log=/dev/null
passed=0
failed=0
pids=()
proc_mounted=0
netns_made=0

pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
    local what=$1
    shift
    echo "# $what: $*" >>"$checks_log"
    if "$@" >>"$checks_log" 2>&1; then pass "$what"; else fail "$what"; fi
}
# A failure the rest of the test can not go on after.
die() {
    fail "$*"
    exit 1
}
step() { echo "--- $* ($(($(date +%s) - started)) s)"; }
# True while PID runs (a zombie not yet reaped counts as gone).
alive() {
    local _pid _comm state
    [ -r "/proc/$1/stat" ] || return 1
    read -r _pid _comm state _ <"/proc/$1/stat" || return 1
    [ "$state" != Z ]
}

cleanup() {
    local status=$? pid
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                alive "$pid" || break
                sleep 0.5
            done
            if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    done
    if [ "$proc_mounted" = 1 ]; then
        umount "$root/proc" 2>/dev/null || umount -l "$root/proc" || true
    fi
    if [ "$netns_made" = 1 ]; then
        ip netns delete "$netns" 2>/dev/null || true
    fi
    echo "packages: $passed passed, $failed failed"
    if [ "$status" = 0 ] && [ "$failed" -gt 0 ]; then status=1; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "must run as root (dpkg into a chroot, mount, network namespaces)"

# Network namespaces left by an earlier run that was killed (-9) before it could clean up.
for ns in $(ip netns list 2>/dev/null | awk '/^fwpkgtest[0-9]+/ {print $1}'); do
    alive "${ns#fwpkgtest}" || ip netns delete "$ns" 2>/dev/null || true
done

# --- host tools ---------------------------------------------------------------------------
step "host tools"
missing=()
for pair in debootstrap:debootstrap rpm:rpm rpm2cpio:rpm2cpio cpio:cpio ip:iproute2 curl:curl \
    strip:binutils file:file dpkg-deb:dpkg chroot:coreutils mount:mount; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- build ----------------------------------------------------------------------------------
mkdir -p "$logs"
checks_log="$logs/checks.log"
: >"$checks_log"

step "build"
packaging/build.sh "${build_args[@]}" || die "packaging/build.sh"
version=$(cargo pkgid -p fleetwatch-agent | sed 's/.*[@#]//')
arch=$(dpkg --print-architecture)
rpm_arch=$(uname -m)
deb_of() { echo "$pkgdir/${1}_${version}-1_${arch}.deb"; }
rpm_of() { echo "$pkgdir/$1-$version-1.$rpm_arch.rpm"; }
for p in fleetwatch-agent fleetwatch-aggregator; do
    check "$p: .deb built ($(basename "$(deb_of "$p")"))" test -s "$(deb_of "$p")"
    check "$p: .rpm built ($(basename "$(rpm_of "$p")"))" test -s "$(rpm_of "$p")"
done
[ "$failed" = 0 ] || die "packages missing"

# --- .deb metadata ----------------------------------------------------------------------------
step "deb metadata"
for p in fleetwatch-agent fleetwatch-aggregator; do
    deb=$(deb_of "$p")
    check "$p.deb: version $version-1 from the workspace" \
        test "$(dpkg-deb -f "$deb" Version)" = "$version-1"
    check "$p.deb: depends on libc6 and passwd" \
        grep -Eq 'libc6.*passwd|passwd.*libc6' <<<"$(dpkg-deb -f "$deb" Depends)"
    check "$p.deb: /etc/fleetwatch/${p#fleetwatch-}.toml is a conffile" \
        grep -qx "/etc/fleetwatch/${p#fleetwatch-}.toml" <<<"$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)"
    listing=$(dpkg-deb -c "$deb")
    check "$p.deb: /usr/bin/$p, mode 0755, owned by root" \
        grep -Eq "^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/$p$" <<<"$listing"
    check "$p.deb: systemd unit" grep -Eq "\./(usr/)?lib/systemd/system/$p\.service$" <<<"$listing"
    check "$p.deb: install guide in /usr/share/doc/$p" grep -q "\./usr/share/doc/$p/README.md$" <<<"$listing"
done
deb=$(deb_of fleetwatch-aggregator)
for f in configs/dashboards/*.toml; do
    check "fleetwatch-aggregator.deb: /etc/fleetwatch/dashboards/${f##*/} is a conffile" \
        grep -qx "/etc/fleetwatch/dashboards/${f##*/}" <<<"$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)"
done

# --- .rpm checks (Debian's rpm, rpm -qp) -----------------------------------------------------
step "rpm metadata"
rpmq() { rpm -qp --nosignature "$@" 2>/dev/null; }
for p in fleetwatch-agent fleetwatch-aggregator; do
    r=$(rpm_of "$p")
    c=${p#fleetwatch-}
    check "$p.rpm: name, version $version, release 1" \
        test "$(rpmq --qf '%{NAME} %{VERSION} %{RELEASE}' "$r")" = "$p $version 1"
    files=$(rpmq --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$r")
    check "$p.rpm: /usr/bin/$p, mode 0755, root" grep -Eq "^-rwxr-xr-x root:root +/usr/bin/$p$" <<<"$files"
    check "$p.rpm: /etc/fleetwatch/$c.toml is %config(noreplace)" \
        grep -Eq "^-rw-r--r-- root:root cn /etc/fleetwatch/$c.toml$" <<<"$files"
    want_conf="/etc/fleetwatch/$c.toml"
    if [ "$c" = aggregator ]; then
        want_conf=$( (printf '%s\n%s\n' "$want_conf" /etc/fleetwatch/rules/fleet.yml
            for f in configs/dashboards/*.toml; do echo "/etc/fleetwatch/dashboards/${f##*/}"; done) | LC_ALL=C sort)
    fi
    check "$p.rpm: rpm -qpc lists only the config (and the aggregator's default rules and dashboards)" \
        test "$(rpmq -c "$r")" = "$want_conf"
    check "$p.rpm: systemd unit in /usr/lib/systemd/system" \
        grep -q " /usr/lib/systemd/system/$p.service$" <<<"$files"
    check "$p.rpm: install guide is %doc" grep -Eq " d +/usr/share/doc/$p/README.md$" <<<"$files"
    rm -rf "$work/rpm-x" && mkdir -p "$work/rpm-x"
    (cd "$work/rpm-x" && rpm2cpio "$r" | cpio -idm --quiet 2>/dev/null) || true
    check "$p.rpm: unit file identical to packaging/systemd/$p.service" \
        cmp -s "$work/rpm-x/usr/lib/systemd/system/$p.service" "packaging/systemd/$p.service"
    check "$p.rpm: binary is stripped" sh -c "! file -b '$work/rpm-x/usr/bin/$p' | grep -q 'not stripped'"
    requires=$(rpmq -R "$r")
    check "$p.rpm: requires shadow-utils (useradd in %pre)" grep -q '^shadow-utils' <<<"$requires"
    check "$p.rpm: requires /bin/sh (scriptlets)" grep -qx '/bin/sh' <<<"$requires"
    check "$p.rpm: requires libc.so.6 (found automatically)" grep -q '^libc\.so\.6' <<<"$requires"
    scripts=$(rpmq --scripts "$r")
    check "$p.rpm: %pre creates the fleetwatch user" \
        grep -q 'useradd --system --gid fleetwatch' <<<"$scripts"
    check "$p.rpm: %post makes /var/lib/fleetwatch/$c" grep -q "/var/lib/fleetwatch/$c" <<<"$scripts"
    check "$p.rpm: %preun disables the unit on erase" \
        grep -q "disable --now $p.service" <<<"$scripts"
    check "$p.rpm: %postun restarts the unit on upgrade" \
        grep -q "try-restart $p.service" <<<"$scripts"
    for tag in PREIN POSTIN PREUN POSTUN; do
        check "$p.rpm: %$tag scriptlet is valid sh" sh -n <<<"$(rpmq --qf "%{$tag}" "$r")"
    done
done

# --- a fresh Debian root --------------------------------------------------------------------
step "debian root"
mkdir -p "$work" "$logs"
if [ ! -s "$base_tar" ]; then
    echo "debootstrap $suite (minbase + systemd) from $mirror, once; cached as $base_tar"
    rm -rf "$work/base"
    debootstrap --variant=minbase --include=systemd "$suite" "$work/base" "$mirror" \
        >"$logs/debootstrap.log" 2>&1 ||
        die "debootstrap (log: $logs/debootstrap.log)"
    tar -C "$work/base" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$work/base"
fi
if mountpoint -q "$root/proc" 2>/dev/null; then umount -l "$root/proc"; fi
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$base_tar" || die "unpacking $base_tar"
pass "fresh $suite root in $root"

# Run a command inside the root (as root, or with --userspec/--groups before the command).
in_root() { chroot "$root" "$@"; }
as_user() { chroot --userspec=fleetwatch:fleetwatch "$root" "$@"; }
dpkg_root() { DEBIAN_FRONTEND=noninteractive chroot "$root" dpkg "$@" </dev/null; }
stat_of() { in_root stat -c '%a %U:%G' "$1" 2>/dev/null || echo missing; }

# --- install --------------------------------------------------------------------------------
step "install"
mkdir -p "$root/tmp/pkgs"
cp "$(deb_of fleetwatch-agent)" "$(deb_of fleetwatch-aggregator)" "$root/tmp/pkgs/"
if dpkg_root -i /tmp/pkgs/fleetwatch-agent_"$version"-1_"$arch".deb \
    /tmp/pkgs/fleetwatch-aggregator_"$version"-1_"$arch".deb >"$logs/install.log" 2>&1; then
    pass "dpkg -i of both packages into the fresh root"
else
    cat "$logs/install.log"
    die "dpkg -i of both packages into the fresh root"
fi
check "install prints the agent's certificate guidance" grep -q 'pki issue --dir /etc/fleetwatch/pki --agent' "$logs/install.log"
check "install prints the aggregator's pki guidance" grep -q 'pki init  --dir /etc/fleetwatch/pki' "$logs/install.log"

for p in fleetwatch-agent fleetwatch-aggregator; do
    c=${p#fleetwatch-}
    # shellcheck disable=SC2016 # ${Status} is dpkg-query's format, not the shell's
    check "$p: installed at $version-1" \
        test "$(in_root dpkg-query -W -f '${Status} ${Version}' "$p")" = "install ok installed $version-1"
    check "$p: /usr/bin/$p 755 root:root" test "$(stat_of "/usr/bin/$p")" = "755 root:root"
    check "$p: /etc/fleetwatch/$c.toml 644 root:root" test "$(stat_of "/etc/fleetwatch/$c.toml")" = "644 root:root"
    check "$p: shipped config is configs/$c.toml" cmp -s "$root/etc/fleetwatch/$c.toml" "configs/$c.toml"
    check "$p: /var/lib/fleetwatch/$c 750 fleetwatch:fleetwatch" \
        test "$(stat_of "/var/lib/fleetwatch/$c")" = "750 fleetwatch:fleetwatch"
    unit=/usr/lib/systemd/system/$p.service
    check "$p: unit installed ($unit)" test -f "$root$unit"
    check "$p: unit identical to packaging/systemd/$p.service" cmp -s "$root$unit" "packaging/systemd/$p.service"
    for key in "User=fleetwatch" "NoNewPrivileges=yes" "ProtectSystem=strict" "ProtectHome=" \
        "PrivateTmp=yes" "Restart=on-failure" "StateDirectory=fleetwatch/$c" \
        "ExecStart=/usr/bin/$p run --config /etc/fleetwatch/$c.toml"; do
        check "$p: unit has $key" grep -q "^$key" "$root$unit"
    done
done
check "/var/lib/fleetwatch 755 root:root" test "$(stat_of /var/lib/fleetwatch)" = "755 root:root"
check "fleetwatch-agent: unit may read logs (SupplementaryGroups adm systemd-journal)" \
    grep -qx 'SupplementaryGroups=adm systemd-journal' "$root/usr/lib/systemd/system/fleetwatch-agent.service"
user_entry=$(in_root getent passwd fleetwatch || true)
check "user fleetwatch exists ($user_entry)" test -n "$user_entry"
uid=$(cut -d: -f3 <<<"$user_entry")
check "user fleetwatch is a system user (uid $uid < 1000)" test "${uid:-1000}" -lt 1000
check "user fleetwatch has no login shell" grep -q ':/usr/sbin/nologin$' <<<"$user_entry"
check "user fleetwatch's home is /var/lib/fleetwatch" test "$(cut -d: -f6 <<<"$user_entry")" = /var/lib/fleetwatch
check "group fleetwatch exists" in_root getent group fleetwatch
check "admin token 640 root:fleetwatch" test "$(stat_of /etc/fleetwatch/admin.token)" = "640 root:fleetwatch"
check "admin token is 64 hex characters" grep -Eqx '[0-9a-f]{64}' "$root/etc/fleetwatch/admin.token"
check "fleetwatch-agent enabled at install (systemctl is-enabled)" \
    test "$(in_root systemctl is-enabled fleetwatch-agent.service 2>&1)" = enabled
check "fleetwatch-aggregator not enabled before it has certificates" \
    test "$(in_root systemctl is-enabled fleetwatch-aggregator.service 2>&1)" = disabled
check "groups adm and systemd-journal exist for the agent's unit" in_root getent group adm systemd-journal

# systemd is installed in the root but not running: verify the units offline.
for p in fleetwatch-agent fleetwatch-aggregator; do
    if in_root systemd-analyze verify "/usr/lib/systemd/system/$p.service" >"$logs/verify-$p.log" 2>&1 &&
        ! grep -q . "$logs/verify-$p.log"; then
        pass "$p: systemd-analyze verify, no warnings"
    else
        cat "$logs/verify-$p.log"
        fail "$p: systemd-analyze verify, no warnings"
    fi
    score=$(in_root systemd-analyze security --offline=yes "/usr/lib/systemd/system/$p.service" 2>/dev/null |
        grep -o 'Overall exposure level.*' || true)
    echo "info: $p: ${score:-systemd-analyze security gave no score}"
done

# --- check-config with the shipped configs --------------------------------------------------
step "check-config"
for p in fleetwatch-agent fleetwatch-aggregator; do
    c=${p#fleetwatch-}
    check "$p check-config -c /etc/fleetwatch/$c.toml (as root)" in_root "$p" check-config -c "/etc/fleetwatch/$c.toml"
    check "$p check-config with the default path (as fleetwatch)" as_user "$p" check-config
done
printf '[host]\nintervall_seconds = 3\n' >"$root/tmp/bad.toml"
if bad=$(in_root fleetwatch-agent check-config -c /tmp/bad.toml 2>&1); then
    fail "fleetwatch-agent check-config refuses a bad key (it exited 0)"
else
    check "fleetwatch-agent check-config refuses a bad key and names it" grep -q intervall_seconds <<<"$bad"
fi

# --- a real run in the root -----------------------------------------------------------------
step "real run"
mount -t proc proc "$root/proc" || die "mount /proc in the root"
proc_mounted=1
ip netns add "$netns" || die "ip netns add $netns"
netns_made=1
ip netns exec "$netns" ip link set lo up || die "loopback up in $netns"
in_ns() { ip netns exec "$netns" "$@"; }
token=$(cat "$root/etc/fleetwatch/admin.token")
api_get() { in_ns curl -fsS -m 5 -H "Authorization: Bearer $token" "$api$1"; }

# Start a binary from the root as the unit would (user fleetwatch, its groups, NO_COLOR), in the
# test's network namespace; records its PID.
# ip netns exec and chroot both exec, so $! is the service process itself.
start_bg() {
    local log=$1 groups=$2
    shift 2
    NO_COLOR=1 ip netns exec "$netns" chroot --userspec=fleetwatch:fleetwatch --groups="$groups" \
        "$root" "$@" >"$log" 2>&1 &
    pids+=("$!")
    last_pid=$!
}
# Stop a process by PID with SIGTERM; true when it exits 0 within 20 s.
stop_pid() {
    local pid=$1 status=0
    kill -TERM "$pid" 2>/dev/null || return 1
    for _ in $(seq 1 40); do
        alive "$pid" || break
        sleep 0.5
    done
    if alive "$pid"; then return 1; fi
    wait "$pid" || status=$?
    return "$status"
}
# wait_for SECONDS COMMAND...: polls once a second.
wait_for() {
    local n=$1
    shift
    for _ in $(seq 1 "$n"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    return 1
}

# The operator's steps from packaging/README.md: CA, server certificate, copy to the paths
# the shipped config expects. The agent's config names the server (its address is loopback).
in_root fleetwatch-aggregator pki init --dir /etc/fleetwatch/pki >"$logs/pki.log" 2>&1 || die "pki init"
in_root fleetwatch-aggregator pki issue --dir /etc/fleetwatch/pki --server localhost >>"$logs/pki.log" 2>&1 ||
    die "pki issue --server"
in_root install -m 0644 -o root -g root /etc/fleetwatch/pki/servers/localhost.pem /etc/fleetwatch/pki/servers/aggregator.pem
in_root install -m 0640 -o root -g fleetwatch /etc/fleetwatch/pki/servers/localhost.key /etc/fleetwatch/pki/servers/aggregator.key
pass "pki init, pki issue --server, certificate in place"
check "the CA key is not readable by fleetwatch" test "$(stat_of /etc/fleetwatch/pki/ca.key)" = "600 root:root"
sed -i 's/^server_name = ""/server_name = "localhost"   # edited by the package test/' "$root/etc/fleetwatch/agent.toml"
check "agent.toml edited (server_name)" grep -q '^server_name = "localhost"' "$root/etc/fleetwatch/agent.toml"

start_bg "$logs/aggregator.log" fleetwatch fleetwatch-aggregator run -c /etc/fleetwatch/aggregator.toml
agg_pid=$last_pid
if wait_for 30 in_ns curl -fsS -m 2 "$api/readyz"; then
    pass "aggregator runs as fleetwatch and is ready (pid $agg_pid)"
else
    cat "$logs/aggregator.log"
    die "aggregator ready within 30 s"
fi
check "API refuses a request without the token" \
    test "$(in_ns curl -s -o /dev/null -w '%{http_code}' "$api/api/fleet/hosts")" = 401

# The agent starts before its certificate exists: it must keep running and retry.
start_bg "$logs/agent.log" fleetwatch,adm,systemd-journal fleetwatch-agent run -c /etc/fleetwatch/agent.toml
agent_pid=$last_pid
sleep 4
check "agent without a certificate keeps running (pid $agent_pid)" alive "$agent_pid"
check "agent without a certificate names the missing file and retries" \
    grep -q 'agent.pem: No such file.*retry_in=' "$logs/agent.log"

in_root fleetwatch-aggregator pki issue --dir /etc/fleetwatch/pki --agent "$agent_name" >>"$logs/pki.log" 2>&1 ||
    die "pki issue --agent"
in_root install -m 0644 -o root -g root "/etc/fleetwatch/pki/agents/$agent_name.pem" /etc/fleetwatch/pki/agent.pem
in_root install -m 0640 -o root -g fleetwatch "/etc/fleetwatch/pki/agents/$agent_name.key" /etc/fleetwatch/pki/agent.key
pass "pki issue --agent $agent_name, certificate in place"

host_known() { api_get /api/fleet/hosts | grep -q "\"host\":\"$agent_name\""; }
host_up() { api_get /api/fleet/hosts | grep -q "\"host\":\"$agent_name\".*\"status\":\"up\"\|\"status\":\"up\".*\"host\":\"$agent_name\""; }
if wait_for 90 host_up; then
    pass "agent's host $agent_name is up in GET /api/fleet/hosts"
else
    api_get /api/fleet/hosts || true
    tail -n 20 "$logs/agent.log" "$logs/aggregator.log"
    fail "agent's host $agent_name is up in GET /api/fleet/hosts within 90 s"
fi
check "agent still running after it connected" alive "$agent_pid"
up_query=$(api_get "/api/v1/query?query=up%7Bhost%3D%22$agent_name%22%7D" || true)
check "Prometheus API: up{host=\"$agent_name\"} is 1" grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up_query"
check "agent's buffer is in its data directory" test -d "$root/var/lib/fleetwatch/agent/buffer"
check "aggregator's data directory holds its store" test -n "$(ls -A "$root/var/lib/fleetwatch/aggregator")"
check "agent stops on SIGTERM with status 0" stop_pid "$agent_pid"
check "aggregator stops on SIGTERM with status 0" stop_pid "$agg_pid"

# --- upgrade to a rebuilt package of a higher revision --------------------------------------
step "upgrade"
rm -rf "$upgrade_dir"
packaging/build.sh --no-build --deb-only --fast --revision 2 --out "$upgrade_dir" >"$logs/build-upgrade.log" 2>&1 ||
    { cat "$logs/build-upgrade.log"; die "rebuild at revision 2"; }
cp "$upgrade_dir"/*.deb "$root/tmp/pkgs/"
token_before=$(cat "$root/etc/fleetwatch/admin.token")
if dpkg_root -i /tmp/pkgs/fleetwatch-agent_"$version"-2_"$arch".deb \
    /tmp/pkgs/fleetwatch-aggregator_"$version"-2_"$arch".deb >"$logs/upgrade.log" 2>&1; then
    pass "dpkg -i upgrade to $version-2"
else
    cat "$logs/upgrade.log"
    die "dpkg -i upgrade to $version-2"
fi
for p in fleetwatch-agent fleetwatch-aggregator; do
    # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not the shell's
    check "$p: now $version-2" test "$(in_root dpkg-query -W -f '${Version}' "$p")" = "$version-2"
done
check "edited agent.toml survived the upgrade" grep -q '^server_name = "localhost"   # edited by the package test' "$root/etc/fleetwatch/agent.toml"
no_dpkg_leftovers() { ! compgen -G "$root/etc/fleetwatch/*.dpkg-*" >/dev/null; }
check "no *.dpkg-new/-old/-dist left in /etc/fleetwatch" no_dpkg_leftovers
check "admin token unchanged by the upgrade" test "$(cat "$root/etc/fleetwatch/admin.token")" = "$token_before"
check "data directories kept their owner" test "$(stat_of /var/lib/fleetwatch/aggregator)" = "750 fleetwatch:fleetwatch"
check "check-config passes with the edited agent.toml" in_root fleetwatch-agent check-config -c /etc/fleetwatch/agent.toml

start_bg "$logs/aggregator-2.log" fleetwatch fleetwatch-aggregator run -c /etc/fleetwatch/aggregator.toml
agg_pid=$last_pid
if wait_for 30 in_ns curl -fsS -m 2 "$api/readyz"; then
    check "after the upgrade the aggregator still knows $agent_name" host_known
else
    cat "$logs/aggregator-2.log"
    fail "aggregator ready after the upgrade"
fi
check "upgraded aggregator stops on SIGTERM with status 0" stop_pid "$agg_pid"
umount "$root/proc" && proc_mounted=0

# --- remove, then purge -----------------------------------------------------------------------
step "remove and purge"
dpkg_root -r fleetwatch-agent >"$logs/remove.log" 2>&1 || { cat "$logs/remove.log"; fail "dpkg -r fleetwatch-agent"; }
check "remove: binary gone" test ! -e "$root/usr/bin/fleetwatch-agent"
check "remove: edited agent.toml kept" grep -q 'edited by the package test' "$root/etc/fleetwatch/agent.toml"
check "remove: agent data kept" test -d "$root/var/lib/fleetwatch/agent/buffer"
dpkg_root --purge fleetwatch-agent fleetwatch-aggregator >"$logs/purge.log" 2>&1 ||
    { cat "$logs/purge.log"; fail "dpkg --purge"; }
not_known_to_dpkg() { ! in_root dpkg-query -W "$1" >/dev/null 2>&1; }
for p in fleetwatch-agent fleetwatch-aggregator; do
    c=${p#fleetwatch-}
    check "purge: $p unknown to dpkg" not_known_to_dpkg "$p"
    check "purge: /etc/fleetwatch/$c.toml gone" test ! -e "$root/etc/fleetwatch/$c.toml"
    check "purge: /var/lib/fleetwatch/$c gone" test ! -e "$root/var/lib/fleetwatch/$c"
    check "purge: /usr/bin/$p gone" test ! -e "$root/usr/bin/$p"
    check "purge: unit gone" test ! -e "$root/usr/lib/systemd/system/$p.service"
    check "purge: no enablement symlink left" test ! -e "$root/etc/systemd/system/multi-user.target.wants/$p.service"
done
check "purge: admin token gone" test ! -e "$root/etc/fleetwatch/admin.token"
check "purge: the operator's fleet CA is kept" test -s "$root/etc/fleetwatch/pki/ca.key"
echo "info: user fleetwatch after purge: $(in_root getent passwd fleetwatch || echo removed) (kept, as Debian does)"

step "done"

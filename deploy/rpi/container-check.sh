#!/usr/bin/env bash
# Prove deploy/rpi under a real systemd: boot a Debian bookworm root file system with
# systemd-nspawn (systemd as the container's PID 1), run install.sh from this checkout inside it
# and check the service (deploy/rpi/container_checks.py lists the checks). amd64 natively, arm64
# (the Pi 4's architecture) through qemu-user-static and binfmt_misc.
#
#   sudo deploy/rpi/container-check.sh                # the host's architecture
#   sudo deploy/rpi/container-check.sh --arch all     # amd64 and arm64 (or --arch arm64)
#   sudo deploy/rpi/container-check.sh --rebuild      # debootstrap the root file systems again
#
# Root file systems are built once and cached in $WEBSCALE_NSPAWN_CACHE (default
# /var/cache/webscale-nspawn, or --cache DIR); every run boots a throwaway copy (--ephemeral).
# The container shares the host's network (pip needs it): ports 443 and 8443 must be free.
# Needs root and: systemd-container, debootstrap, util-linux; for a foreign architecture also
# qemu-user-static and binfmt-support. A missing tool skips the check, saying so, except with
# CI=true, where it is an error. See deploy/rpi/README.md ("Checking it under systemd").
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${WEBSCALE_NSPAWN_CACHE:-/var/cache/webscale-nspawn}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# What every root file system gets besides Debian's required packages: systemd as init, the
# README's prerequisites (python3-venv), and the clients the checks use (curl; certutil and
# tstclnt from libnss3-tools for the browser-trust check). Part of the cache key.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,curl,procps,iproute2,libnss3-tools
RECIPE="debootstrap --variant=minbase --include=$PACKAGES $SUITE $MIRROR, hostname webscale-pi"
# Inside the container: the checkout (read-only) and the host's CA certificates.
SRC_IN_CONTAINER=/srv/webscale
HOST_CA_IN_CONTAINER=/srv/host-ca-certificates
# Environment passed on to pip inside the container (proxies and indexes, never host paths).
FORWARD_VARS=(http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY
              PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_PROXY
              PIP_DEFAULT_TIMEOUT PIP_RETRIES)

arches=""
rebuild=0
timeout_amd64=900      # seconds for the checks in one container (measured 47 s)
timeout_arm64=2700     # under qemu (measured 161 s)

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

log() { printf 'container-check: %s\n' "$*"; }
die() { printf 'container-check: error: %s\n' "$*" >&2; exit 1; }
trap 'printf "container-check: error: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arches="${2:?--arch needs amd64, arm64 or all}"; shift ;;
        --cache) CACHE="${2:?--cache needs a directory}"; shift ;;
        --rebuild) rebuild=1 ;;
        -h|--help) usage 0 ;;
        *) printf 'unknown option: %s\n' "$1" >&2; usage 2 ;;
    esac
    shift
done

# A missing prerequisite: an error in CI (CI=true), a skip (exit 0, saying so) elsewhere.
missing() {
    if [[ "${CI:-}" == true ]]; then
        die "$* (CI=true: not skipping)"
    fi
    log "skipped: $*"
    exit 0
}

[[ $EUID -eq 0 ]] || missing "needs root (sudo $0)"
need_tool() {  # need_tool COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null || missing "$1 not found (apt-get install $2)"
}
need_tool systemd-nspawn systemd-container
need_tool debootstrap debootstrap
need_tool nsenter util-linux
need_tool flock util-linux
need_tool ss iproute2
need_tool dpkg dpkg

host_arch="$(dpkg --print-architecture)"
case "${arches:-host}" in
    host) arches="$host_arch" ;;
    all) arches="amd64 arm64" ;;
    amd64|arm64) ;;
    *) die "--arch: amd64, arm64 or all, not $arches" ;;
esac
for arch in $arches; do
    if [[ "$arch" != "$host_arch" ]]; then
        [[ "$arch" == arm64 ]] || die "cannot emulate $arch here"
        need_tool qemu-aarch64-static qemu-user-static
        need_tool update-binfmts binfmt-support
    fi
done

# --- state the cleanup undoes, whatever happens --------------------------------------------
BINFMT=/proc/sys/fs/binfmt_misc
mounted_binfmt=0
enabled_binfmt=0
nspawn_dir_existed=0
[[ -d /run/systemd/nspawn ]] && nspawn_dir_existed=1
nspawn_pid=""
pid1=""  # the container's systemd, as seen from the host
bg_pid=""  # the step in_background waits for
cgroup_name=""
cgroup_roots=()
building=""

# Long steps run in a process group of their own, in the background, waited for: bash runs a
# trap (Ctrl-C, a CI timeout's SIGTERM) only between commands, and `wait` is one it interrupts;
# the cleanup then ends the step's whole group by its ID.
in_background() {
    setsid "$@" &
    bg_pid=$!
    local status=0
    wait "$bg_pid" || status=$?
    bg_pid=""
    return "$status"
}

# Every process in our cgroups (the container, nspawn), deepest cgroups first.
cgroup_pids() {
    local root
    for root in "${cgroup_roots[@]}"; do
        [[ -d "$root/$cgroup_name" ]] || continue
        find "$root/$cgroup_name" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    done
}

wait_for_nspawn() {  # wait_for_nspawn SECONDS: true once nspawn has exited
    local waited=0
    while kill -0 "$nspawn_pid" 2>/dev/null; do
        [[ $waited -lt $(($1 * 10)) ]] || return 1
        sleep 0.1
        waited=$((waited + 1))
    done
}

stop_container() {
    [[ -n "$nspawn_pid" ]] || return 0
    # An orderly shutdown, asked of the container's systemd over its socket. Not nspawn's own
    # way (SIGTERM to nspawn, which sends SIGRTMIN+3 to the container's PID 1): under
    # qemu-user that signal arrives as another real-time signal, and systemd enters rescue
    # mode instead of halting.
    if [[ -n "$pid1" ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        timeout 30 nsenter --target "$pid1" --all -- systemctl poweroff --no-block \
            >/dev/null 2>&1 || true
    fi
    if ! wait_for_nspawn 120; then
        log "warning: the container did not power off in 120s; terminating it"
        # nspawn's second SIGTERM ends the container at once.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        sleep 1
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait_for_nspawn 10 || true
    fi
    local pid
    for pid in $(cgroup_pids); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=""
    pid1=""
}

remove_cgroups() {
    local root _
    [[ -n "$cgroup_name" ]] || return 0
    for root in "${cgroup_roots[@]}"; do
        [[ -d "$root/$cgroup_name" ]] || continue
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            find "$root/$cgroup_name" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d "$root/$cgroup_name" ]] || break
            sleep 0.5  # a killed process leaves its cgroup a moment after it dies
        done
        [[ ! -d "$root/$cgroup_name" ]] || log "warning: could not remove $root/$cgroup_name"
    done
    cgroup_name=""
}

# Unmount whatever is mounted under $1 (debootstrap mounts proc and sys in its target), then
# remove it without leaving its file system.
remove_tree() {
    local dir="$1" mount_point
    [[ -e "$dir" ]] || return 0
    while read -r mount_point; do
        umount -l "$mount_point" 2>/dev/null || true
    done < <(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}

cleanup() {
    local status=$?
    trap - ERR
    if [[ -n "$bg_pid" ]]; then
        kill -TERM -- "-$bg_pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$bg_pid" 2>/dev/null || true
    fi
    stop_container
    remove_cgroups
    if [[ -n "$building" ]]; then
        remove_tree "$building"
    fi
    # Copies left by an nspawn that was killed before it could remove them (we hold the lock,
    # so no other run is using them).
    local stale
    for stale in "$CACHE"/.#machine.* "$CACHE"/.#.#machine.*; do
        [[ -e "$stale" ]] && remove_tree "$stale"
    done
    if [[ $nspawn_dir_existed -eq 0 && -d /run/systemd/nspawn ]]; then
        rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn 2>/dev/null || true
    fi
    if [[ $enabled_binfmt -eq 1 ]]; then
        update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
    fi
    if [[ $mounted_binfmt -eq 1 ]]; then
        umount "$BINFMT" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- prerequisites on the host --------------------------------------------------------------

ensure_binfmt() {
    # qemu-user-static registers with the F flag: the kernel opens the emulator now, so it
    # needs not exist inside the container.
    if ! mountpoint -q "$BINFMT"; then
        mount -t binfmt_misc binfmt_misc "$BINFMT"
        mounted_binfmt=1
    fi
    if ! grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null; then
        update-binfmts --enable qemu-aarch64
        enabled_binfmt=1
    fi
    grep -q '^flags: .*F' "$BINFMT/qemu-aarch64" \
        || die "qemu-aarch64 is registered without the F (fix binary) flag"
}

ports_free() {
    local busy
    busy="$(ss -Hltn '( sport = :443 or sport = :8443 )')"
    [[ -z "$busy" ]] || die "ports 443/8443 are in use on this host (the container shares its network):
$busy"
}

# --- root file systems ----------------------------------------------------------------------

ROOTFS=""
rootfs_for() {  # rootfs_for ARCH: build unless cached with the same recipe; sets ROOTFS
    local arch="$1" dir="$CACHE/$SUITE-$1" started
    ROOTFS="$dir"
    if [[ $rebuild -eq 0 && -f "$dir/.webscale-rootfs" ]] \
            && [[ "$(head -n1 "$dir/.webscale-rootfs")" == "$RECIPE" ]]; then
        log "$arch: reusing $dir"
        return 0
    fi
    started=$SECONDS
    building="$dir.new"
    remove_tree "$building"
    log "$arch: debootstrap $SUITE into $building (once; cached afterwards)"
    # One stage even for arm64: binfmt_misc runs the foreign binaries in the second stage.
    in_background timeout 3600 debootstrap --arch="$arch" --variant=minbase \
        --include="$PACKAGES" "$SUITE" "$building" "$MIRROR" > "$CACHE/debootstrap-$arch.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap-$arch.log" >&2; die "debootstrap $arch failed"; }
    # A host name the README's `curl https://$(hostname):8443/healthz` resolves, the way
    # Raspberry Pi OS and Debian's installer write it.
    echo webscale-pi > "$building/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\twebscale-pi\n::1\tlocalhost ip6-localhost\n' \
        > "$building/etc/hosts"
    # Smaller copies for --ephemeral; install.sh needs no apt lists (python3-venv is there).
    chroot "$building" apt-get clean
    rm -rf "$building"/var/lib/apt/lists/*
    printf '%s\nbuilt %s in %ss\n' "$RECIPE" "$(date -u +%FT%TZ)" "$((SECONDS - started))" \
        > "$building/.webscale-rootfs"
    remove_tree "$dir"
    mv "$building" "$dir"
    building=""
    log "$arch: root file system built in $((SECONDS - started))s"
}

# --- one container --------------------------------------------------------------------------

setup_cgroups() {
    # nspawn without machined (--register=no --keep-unit) puts the container into payload/ and
    # itself into supervisor/ below the cgroup it starts in: give it one of its own in every
    # hierarchy systemd uses (v1 name=systemd and unified on a hybrid host, or pure v2).
    cgroup_name="webscale-check-$$"
    cgroup_roots=()
    if [[ "$(stat -fc %T /sys/fs/cgroup)" == cgroup2fs ]]; then
        cgroup_roots=(/sys/fs/cgroup)
    else
        [[ -d /sys/fs/cgroup/systemd ]] && cgroup_roots+=(/sys/fs/cgroup/systemd)
        [[ -d /sys/fs/cgroup/unified ]] && cgroup_roots+=(/sys/fs/cgroup/unified)
    fi
    [[ ${#cgroup_roots[@]} -gt 0 ]] || die "no systemd or unified cgroup hierarchy mounted"
    local root
    for root in "${cgroup_roots[@]}"; do
        mkdir "$root/$cgroup_name"
    done
}

container_pid1() {  # the PID (in our namespace) of the container's systemd, once it exists
    local pid nspid
    for pid in $(cgroup_pids); do
        # NSpid: its PID in each nested PID namespace, the container's last.
        nspid="$(awk '/^NSpid:/ && NF >= 3 { print $NF }' "/proc/$pid/status" 2>/dev/null)"
        if [[ "$nspid" == 1 ]]; then
            printf '%s\n' "$pid"
            return 0
        fi
    done
    return 1
}

check_arch() {
    local arch="$1" rootfs slow limit started boot_started state log_file
    local -a bind_args env_args
    started=$SECONDS
    if [[ "$arch" != "$host_arch" ]]; then
        ensure_binfmt
    fi
    rootfs_for "$arch"
    rootfs="$ROOTFS"
    local rootfs_seconds=$((SECONDS - started))
    slow=1
    limit=$timeout_amd64
    if [[ "$arch" != "$host_arch" ]]; then
        slow=5
        limit=$timeout_arm64
    fi
    ports_free
    mkdir -p "$CACHE/pip-$arch"
    bind_args=(--bind-ro="$REPO:$SRC_IN_CONTAINER"
               --bind-ro="/usr/local/share/ca-certificates:$HOST_CA_IN_CONTAINER"
               --bind="$CACHE/pip-$arch:/root/.cache/pip")
    # pip's own configuration (index, certificate bundle) when the host has a system-wide one.
    if [[ -f /etc/pip.conf ]]; then
        bind_args+=(--bind-ro=/etc/pip.conf)
    fi
    env_args=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
              LANG=C.UTF-8)
    local var
    for var in "${FORWARD_VARS[@]}"; do
        if [[ -n "${!var:-}" ]]; then
            env_args+=("$var=${!var}")
        fi
    done

    setup_cgroups
    log_file="$CACHE/boot-$arch.log"
    boot_started=$SECONDS
    log "$arch: booting $rootfs (ephemeral copy)"
    # The launcher joins our cgroups, then becomes nspawn (exec keeps the PID).
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
    bash -c 'for root in "${@:2:$1}"; do echo $$ > "$root/cgroup.procs"; done; shift $(($1 + 1)); exec "$@"' \
        launcher "${#cgroup_roots[@]}" "${cgroup_roots[@]/%//$cgroup_name}" \
        systemd-nspawn --quiet --directory="$rootfs" --boot --ephemeral \
        --register=no --keep-unit --console=passive --machine="webscale-check-$arch" \
        "${bind_args[@]}" < /dev/null > "$log_file" 2>&1 &
    nspawn_pid=$!
    local waited=0
    until pid1="$(container_pid1)"; do
        kill -0 "$nspawn_pid" 2>/dev/null || { cat "$log_file" >&2; die "nspawn exited"; }
        [[ $waited -lt $((300 * slow)) ]] || die "no container PID 1 after $((waited / 10))s"
        sleep 0.1
        waited=$((waited + 1))
    done
    # systemctl needs PID 1's private socket, which appears a moment after PID 1 does.
    until [[ -S "/proc/$pid1/root/run/systemd/private" ]]; do
        kill -0 "$nspawn_pid" 2>/dev/null || { cat "$log_file" >&2; die "nspawn exited"; }
        [[ $waited -lt $((300 * slow)) ]] || die "no systemd in the container after $((waited / 10))s"
        sleep 0.1
        waited=$((waited + 1))
    done
    in_container() { nsenter --target "$pid1" --all -- env -i "${env_args[@]}" "$@"; }
    in_background timeout $((120 * slow)) nsenter --target "$pid1" --all -- \
        systemctl is-system-running --wait > "$CACHE/state-$arch" || true
    state="$(cat "$CACHE/state-$arch")"
    case "$state" in
        running) ;;
        # Under qemu, systemd-sysusers and systemd-tmpfiles fail on credentials ("Invalid
        # argument"); the service does not depend on them.
        degraded) log "$arch: system degraded; failed units:"
                  in_container systemctl --no-pager --plain --no-legend --failed || true ;;
        *) cat "$log_file" >&2; die "$arch: container did not boot (state: ${state:-none})" ;;
    esac
    local boot_seconds=$((SECONDS - boot_started))
    log "$arch: booted in ${boot_seconds}s (systemd $state), running the checks"
    # The host's extra CAs (an HTTPS proxy's, for pip) into the container's store.
    in_container sh -c "cp $HOST_CA_IN_CONTAINER/*.crt /usr/local/share/ca-certificates/ \
        2>/dev/null; update-ca-certificates >/dev/null 2>&1" \
        || die "$arch: update-ca-certificates failed in the container"
    local checks_started=$SECONDS checks_status=0
    in_background timeout --kill-after=30 "$limit" nsenter --target "$pid1" --all -- \
        env -i "${env_args[@]}" timeout "$limit" \
        python3 -B "$SRC_IN_CONTAINER/deploy/rpi/container_checks.py" \
        --repo "$SRC_IN_CONTAINER" --slow "$slow" || checks_status=$?
    local checks_seconds=$((SECONDS - checks_started)) stop_started=$SECONDS
    stop_container
    remove_cgroups
    log "$arch: rootfs ${rootfs_seconds}s, boot ${boot_seconds}s, checks ${checks_seconds}s," \
        "shutdown $((SECONDS - stop_started))s, total $((SECONDS - started))s"
    [[ $checks_status -eq 0 ]] || die "$arch: checks failed (exit $checks_status)"
}

mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
# The lock belongs to the open file (fd 9), which flock shares with this shell.
in_background flock -w 3600 9 || die "another container-check holds $CACHE/.lock"
for arch in $arches; do
    check_arch "$arch"
done
log "passed: $arches"

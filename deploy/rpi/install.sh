#!/usr/bin/env bash
# Install webscale as a systemd service on Raspberry Pi OS 64-bit (Debian bookworm).
#
#   sudo deploy/rpi/install.sh                      # service on port 8443, throwaway CA
#   sudo deploy/rpi/install.sh --socket             # socket activation on port 443
#   sudo deploy/rpi/install.sh --cert fullchain.pem --key privkey.pem
#   sudo deploy/rpi/install.sh --uninstall [--purge]
#
# Idempotent: run it again after `git pull` to upgrade, or with/without --socket to change mode;
# it keeps existing certificates and /etc/webscale/webscale.env. The checkout may be read-only:
# the build runs in a temporary copy. See deploy/rpi/README.md.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

PREFIX=/opt/webscale
VENV="$PREFIX/venv"
CONF_DIR=/etc/webscale
CERT_DIR="$CONF_DIR/certs"
UNIT_DIR=/etc/systemd/system
SYSCTL_FILE=/etc/sysctl.d/90-webscale.conf
SERVICE_USER=webscale
# Written only when Python's ABI is not systemd's (check_userland); owned by install.sh.
ARCH_DROPIN="$UNIT_DIR/webscale.service.d/50-python-arch.conf"
# systemd's own binary, whose architecture is what SystemCallArchitectures=native means. Not
# /proc/1/exe: under qemu-user that is the emulator (an x86-64 binary for an arm64 systemd).
MANAGER_EXE="${MANAGER_EXE:-/lib/systemd/systemd}"
# Debian's own Python: the unit's ProtectHome=yes hides a pyenv or conda Python under /root or
# /home, and a venv only links to its base interpreter.
PYTHON="${PYTHON:-/usr/bin/python3}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

use_socket=0
uninstall=0
purge=0
cert=""
key=""

usage() {
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

log() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
# set -e exits silently; say which command failed.
trap 'printf "install.sh: error: line %s: %s failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR
# The temporary copy of the checkout that pip builds from (stage_source).
STAGE=""
trap '[[ -z "$STAGE" ]] || rm -rf "$STAGE"' EXIT

while [[ $# -gt 0 ]]; do
    case "$1" in
        --socket) use_socket=1 ;;
        --cert) cert="${2:?--cert needs a file}"; shift ;;
        --key) key="${2:?--key needs a file}"; shift ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        -h|--help) usage 0 ;;
        *) printf 'unknown option: %s\n' "$1" >&2; usage 2 ;;
    esac
    shift
done

[[ $EUID -eq 0 ]] || die "run as root (sudo $0 $*)"
if [[ -n "$cert" || -n "$key" ]]; then
    [[ -n "$cert" && -n "$key" ]] || die "--cert and --key go together"
    [[ -r "$cert" && -r "$key" ]] || die "cannot read $cert or $key"
fi

uninstall_all() {
    log "stopping and removing the service"
    local unit
    # One at a time: systemctl gives up on the whole list when one unit file is missing.
    for unit in webscale.socket webscale.service; do
        systemctl disable --now "$unit" 2>/dev/null || true
        # A unit that failed stays listed (and `systemctl status` shows it) until reset.
        systemctl reset-failed "$unit" 2>/dev/null || true
    done
    rm -f "$UNIT_DIR/webscale.service" "$UNIT_DIR/webscale.socket" "$SYSCTL_FILE" "$ARCH_DROPIN"
    rmdir "$UNIT_DIR/webscale.service.d" 2>/dev/null || true
    rm -rf "$PREFIX"
    if [[ $purge -eq 1 ]]; then
        log "purging $CONF_DIR, /var/lib/webscale, drop-ins (systemctl edit) and user $SERVICE_USER"
        rm -rf "$CONF_DIR" /var/lib/webscale "$UNIT_DIR/webscale.service.d" \
            "$UNIT_DIR/webscale.socket.d"
        if id "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER"
        fi
        # userdel removes the group only when no other user has it as primary group.
        if getent group "$SERVICE_USER" >/dev/null; then
            groupdel "$SERVICE_USER"
        fi
    else
        log "kept $CONF_DIR (certificates, webscale.env), drop-ins and user $SERVICE_USER;" \
            "--purge removes them"
    fi
    systemctl daemon-reload
    log "sysctl values stay in effect until reboot; journal lines until journald rotates them"
}

ensure_python() {
    # Debian splits venv/ensurepip out of python3; without it `python3 -m venv` fails.
    [[ -x "$PYTHON" ]] || die "$PYTHON not found (apt-get install python3, or set PYTHON=)"
    case "$(readlink -f "$PYTHON")" in
        /root/*|/home/*) die "$PYTHON lives under /root or /home, which the service cannot see" ;;
    esac
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        log "installing python3-venv"
        apt-get install -y python3-venv
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "webscale needs Python >= 3.11 (bookworm has 3.11)"
}

ensure_user() {
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        log "creating system user $SERVICE_USER"
        useradd --system --user-group --no-create-home --home-dir /var/lib/webscale \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
}

elf_machine() {  # elf_machine FILE: the ELF e_machine number (3 x86, 40 arm, 62 x86-64, 183 arm64)
    local machine
    machine="$(od -An -t u2 -j18 -N2 "$1" 2>/dev/null)" || return 1
    [[ -n "${machine// /}" ]] || return 1
    printf '%s\n' "${machine// /}"
}

check_userland() {
    # SystemCallArchitectures=native admits only the system call ABI that systemd itself was
    # built for. A Python of another ABI, a 32-bit one under a 64-bit systemd (python3:armhf on
    # the 64-bit OS, or a 32-bit Python under a 64-bit system), is killed with SIGSYS at its
    # first system call. Allow that ABI as well, in a drop-in, and say so. The 32-bit Raspberry
    # Pi OS needs nothing here even on a 64-bit kernel: its systemd is 32-bit too.
    local python_machine manager_machine compat=""
    python_machine="$(elf_machine "$(readlink -f "$PYTHON")")" || return 0
    manager_machine="$(elf_machine "$MANAGER_EXE")" || return 0
    if [[ "$python_machine" != "$manager_machine" ]]; then
        case "$python_machine" in
            3) compat=x86 ;;
            40) compat=arm ;;
            62) compat=x86-64 ;;
            183) compat=arm64 ;;
            *) die "$PYTHON is built for another architecture (ELF machine $python_machine) than systemd" ;;
        esac
    fi
    if [[ -z "$compat" ]]; then
        rm -f "$ARCH_DROPIN"
        return 0
    fi
    log "warning: $PYTHON is built for $compat, systemd for another architecture; allowing the" \
        "$compat system call ABI in $ARCH_DROPIN (SystemCallArchitectures=native alone kills it)"
    install -d -m 0755 "$(dirname "$ARCH_DROPIN")"
    printf '%s\n' "# Written by deploy/rpi/install.sh: Python's ABI is not systemd's." \
        "[Service]" "SystemCallArchitectures=native $compat" > "$ARCH_DROPIN"
    chmod 0644 "$ARCH_DROPIN"
}

stage_source() {
    # pip builds in the source tree (setuptools writes webscale.egg-info and build/ there), so
    # build from a temporary copy: the checkout may be read-only and stays untouched.
    STAGE="$(mktemp -d /tmp/webscale-install.XXXXXX)"
    tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md webscale bench_client \
        scripts/gen_certs.py | tar -C "$STAGE" -xf -
}

install_venv() {
    if [[ -x "$VENV/bin/python" && "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$PYTHON")" ]]; then
        log "recreating $VENV: it was made with another Python"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    log "installing webscale from $REPO"
    # pyproject.toml's build needs setuptools >= 68 (bookworm's venv has 66); without build
    # isolation also its own bdist_wheel (70.1 and later; before, the separate `wheel`).
    # Installed into the venv once and the build run without isolation, a re-run needs no
    # index: everything it needs is in the venv already (unless a dependency changed).
    "$VENV/bin/python" -m pip install --quiet "setuptools>=70.1"
    # Not editable: /opt/webscale must not depend on this checkout staying where it is.
    # --upgrade reinstalls webscale itself; dependencies change only when they no longer fit.
    "$VENV/bin/python" -m pip install --quiet --no-build-isolation --upgrade "$STAGE"
}

install_certs() {
    install -d -m 0750 -o root -g "$SERVICE_USER" "$CERT_DIR"
    if [[ -n "$cert" ]]; then
        log "installing the given certificate and key"
        # `install` refuses to copy a file onto itself (re-running with the installed paths).
        if [[ ! "$cert" -ef "$CERT_DIR/server.pem" ]]; then
            install -m 0644 -o root -g root "$cert" "$CERT_DIR/server.pem"
        fi
        if [[ ! "$key" -ef "$CERT_DIR/server.key" ]]; then
            install -m 0640 -o root -g "$SERVICE_USER" "$key" "$CERT_DIR/server.key"
        fi
    elif [[ ! -s "$CERT_DIR/server.pem" || ! -s "$CERT_DIR/server.key" ]]; then
        log "generating a throwaway CA and server certificate in $CERT_DIR"
        local sans=()
        local address
        # Clients on the LAN usually connect by IP: put every address of this host in the cert.
        for address in $(hostname -I 2>/dev/null || true); do
            sans+=(--san "$address")
        done
        "$VENV/bin/python" "$STAGE/scripts/gen_certs.py" --out "$CERT_DIR" "${sans[@]}"
    else
        log "keeping the certificates in $CERT_DIR"
    fi
    # The service reads the key through its group; the CA key (if any) stays root-only.
    chown root:"$SERVICE_USER" "$CERT_DIR/server.key"
    chmod 0640 "$CERT_DIR/server.key"
    if [[ -e "$CERT_DIR/ca.key" ]]; then
        chown root:root "$CERT_DIR/ca.key"
        chmod 0600 "$CERT_DIR/ca.key"
    fi
    for public in server.pem ca.pem; do
        if [[ -e "$CERT_DIR/$public" ]]; then
            chmod 0644 "$CERT_DIR/$public"
        fi
    done
}

install_env_file() {
    if [[ ! -e "$CONF_DIR/webscale.env" ]]; then
        cat > "$CONF_DIR/webscale.env" <<'EOF'
# Extra `webscale serve` flags for webscale.service; later flags override the unit's defaults.
# Apply with: sudo systemctl restart webscale
# Examples (deploy/rpi/container-check.sh starts the service with each one). --max-connections
# is per worker: deploy/rpi/README.md ("Memory") has the figures for each Pi size.
#   WEBSCALE_OPTS=--workers 2 --max-connections 5000 --threads 16
#   WEBSCALE_OPTS=--ping-interval 20 --ping-timeout 20 --max-message-size 2097152
#
# Per-address limits (off by default; closed before TLS, counted in /stats by reason). Devices
# behind one NAT (a site, a mobile carrier) share an address: allow the most devices you expect
# behind one address, with room for reconnects. For devices that each have their own address:
#   WEBSCALE_OPTS=--max-connections-per-ip 8 --max-handshakes-per-ip-per-s 2
# For sites of up to ~200 devices behind one NAT router:
#   WEBSCALE_OPTS=--max-connections-per-ip 256 --max-handshakes-per-ip-per-s 50
# Behind deploy/haproxy (send-proxy-v2), name the balancer so limits see the clients' addresses:
#   WEBSCALE_OPTS=--proxy-protocol-from 192.168.1.10/32 --max-connections-per-ip 8
# The admin listener (/stats, /metrics) is on 127.0.0.1:8442; for a Prometheus elsewhere, on
# every address (or the Pi's LAN address), with a firewall rule (deploy/rpi/README.md, Metrics):
#   WEBSCALE_OPTS=--admin 0.0.0.0:8442
# Memory for buffered messages, all connections together; the default, a quarter of the RAM,
# is what the unit's MemoryMax= arithmetic assumes:
#   WEBSCALE_OPTS=--max-buffered-bytes 268435456
# --port 443 also needs the capability drop-in in deploy/rpi/README.md ("Port 443"); without it
# the bind fails with "Permission denied". install.sh --socket is the other way.
WEBSCALE_OPTS=
EOF
        chmod 0644 "$CONF_DIR/webscale.env"
    fi
}

install_system_files() {
    install -m 0644 "$HERE/webscale.service" "$UNIT_DIR/webscale.service"
    if [[ $use_socket -eq 1 ]]; then
        install -m 0644 "$HERE/webscale.socket" "$UNIT_DIR/webscale.socket"
    elif [[ -e "$UNIT_DIR/webscale.socket" ]]; then
        log "removing webscale.socket (run with --socket to keep socket activation)"
        systemctl disable --now webscale.socket 2>/dev/null || true
        rm -f "$UNIT_DIR/webscale.socket"
    fi
    install -m 0644 "$HERE/90-webscale.conf" "$SYSCTL_FILE"
    # Inside a container some keys are read-only; the rest still apply.
    sysctl --quiet --load="$SYSCTL_FILE" || log "warning: some sysctl values were not applied"
    systemctl daemon-reload
}

start_service() {
    if [[ $use_socket -eq 1 ]]; then
        # systemd refuses to start a socket unit while its service runs without it ("Socket
        # service webscale.service already active, refusing"): stop the plain service first.
        if ! systemctl is-active --quiet webscale.socket; then
            systemctl stop webscale.service
        fi
        systemctl enable --now webscale.socket
    fi
    systemctl enable webscale.service
    # Re-runs must load the new code and units, and a running service only takes the socket
    # from webscale.socket when it is (re)started.
    systemctl restart webscale.service
    systemctl --no-pager --lines=0 status webscale.service || true
}

if [[ $uninstall -eq 1 ]]; then
    uninstall_all
    exit 0
fi

ensure_python
check_userland
ensure_user
stage_source
install_venv
install -d -m 0755 "$CONF_DIR"
install_certs
install_env_file
install_system_files
start_service

port=8443
[[ $use_socket -eq 1 ]] && port=443
log "done. Logs: journalctl -u webscale -f"
log "check: curl --cacert $CERT_DIR/ca.pem https://$(hostname):$port/healthz"

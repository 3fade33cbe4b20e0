#!/usr/bin/env bash
# Install webscale as a systemd service on Raspberry Pi OS 64-bit (Debian bookworm).
#
#   sudo deploy/rpi/install.sh                      # service on port 8443, throwaway CA
#   sudo deploy/rpi/install.sh --socket             # socket activation on port 443
#   sudo deploy/rpi/install.sh --cert fullchain.pem --key privkey.pem
#   sudo deploy/rpi/install.sh --uninstall [--purge]
#
# Idempotent: run it again after `git pull` to upgrade; it keeps existing certificates and
# /etc/webscale/webscale.env. See deploy/rpi/README.md.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

PREFIX=/opt/webscale
VENV="$PREFIX/venv"
CONF_DIR=/etc/webscale
CERT_DIR="$CONF_DIR/certs"
UNIT_DIR=/etc/systemd/system
SYSCTL_FILE=/etc/sysctl.d/90-webscale.conf
SERVICE_USER=webscale
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
    done
    rm -f "$UNIT_DIR/webscale.service" "$UNIT_DIR/webscale.socket" "$SYSCTL_FILE"
    systemctl daemon-reload
    rm -rf "$PREFIX"
    if [[ $purge -eq 1 ]]; then
        log "purging $CONF_DIR, /var/lib/webscale and user $SERVICE_USER"
        rm -rf "$CONF_DIR" /var/lib/webscale
        if id "$SERVICE_USER" >/dev/null 2>&1; then
            userdel "$SERVICE_USER"
        fi
    else
        log "kept $CONF_DIR (certificates, webscale.env) and user $SERVICE_USER; --purge removes them"
    fi
    log "sysctl values stay in effect until reboot"
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
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # Not editable: /opt/webscale must not depend on this checkout staying where it is.
    "$VENV/bin/python" -m pip install --quiet --upgrade "$REPO"
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
        "$VENV/bin/python" "$REPO/scripts/gen_certs.py" --out "$CERT_DIR" "${sans[@]}"
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
# Examples:
#   WEBSCALE_OPTS=--workers 4 --threads 16 --port 443
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
# The admin listener (/stats, /metrics) is on 127.0.0.1:8442; for a Prometheus elsewhere:
#   WEBSCALE_OPTS=--admin 192.168.1.11:8442
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
        systemctl enable --now webscale.socket
    fi
    systemctl enable --now webscale.service
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
ensure_user
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

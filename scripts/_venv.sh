# Sourced by scripts/run and scripts/test: make .venv and install webscale (+ extras) into it.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# Another interpreter gets its own venv: PYTHON=~/.pyenv/versions/3.13.0/bin/python \
# VENV=.venv-3.13 scripts/test
VENV="${VENV:-$ROOT/.venv}"
ensure_venv() {
    local extras="$1" stamp="$VENV/.installed-$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
        touch "$stamp"
    fi
}

commands_hint() {
    # The installed commands live in the venv, not on PATH: say where, once per run.
    echo "webscale and bench_client are installed in $VENV/bin;" \
         "to use them bare: source $VENV/bin/activate" >&2
}

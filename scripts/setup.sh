#!/usr/bin/env bash
# setup.sh - create (or reuse) .venv in the repo root with localjobs, its dev tools and the
# official NeMo Platform SDK. Idempotent: a second run with nothing changed takes about a second.
#
# Finds a Python >= 3.12 by itself, in this order:
#   $LOCALJOBS_PYTHON (if set), python3.13, python3.12, python3,
#   ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3,
#   PYENV_VERSION=<each installed pyenv version> python3
# Works from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
SDK_SPEC="nemo-platform==0.6.0"
MIN_MINOR=12

say() { echo "[setup] $*" >&2; }
die() {
    echo "[setup] ERROR: $*" >&2
    exit 1
}

# Prints the real interpreter path of "$@" when it runs and is Python 3.>=12.
check_python() {
    "$@" -c "import sys; assert sys.version_info >= (3, $MIN_MINOR); print(sys.executable)" 2>/dev/null
}

find_python() {
    local found cand ver pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [ -n "${LOCALJOBS_PYTHON:-}" ]; then
        check_python "$LOCALJOBS_PYTHON"
        return
    fi
    for cand in python3.13 python3.12 python3; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if found="$(check_python "$cand")"; then
            echo "$found"
            return
        fi
    done
    for cand in "$pyenv_root"/versions/3.1[2-9]*/bin/python3; do
        [ -x "$cand" ] || continue
        if found="$(check_python "$cand")"; then
            echo "$found"
            return
        fi
    done
    if command -v python3 >/dev/null 2>&1 && [ -d "$pyenv_root/versions" ]; then
        for cand in "$pyenv_root"/versions/*; do
            ver="$(basename "$cand")"
            if found="$(PYENV_VERSION="$ver" check_python python3)"; then
                echo "$found"
                return
            fi
        done
    fi
    return 1
}

venv_ok() {
    [ -x "$VENV/bin/python" ] && check_python "$VENV/bin/python" >/dev/null
}

if ! venv_ok; then
    if [ -n "${LOCALJOBS_PYTHON:-}" ]; then
        why="LOCALJOBS_PYTHON=$LOCALJOBS_PYTHON is not a Python >= 3.$MIN_MINOR"
    else
        why="no Python >= 3.$MIN_MINOR found (tried python3.13, python3.12, python3, pyenv versions under \
${PYENV_ROOT:-$HOME/.pyenv}); install one, or point LOCALJOBS_PYTHON at one"
    fi
    PYTHON="$(find_python)" || die "$why"
    if [ -e "$VENV" ]; then
        say "existing .venv is unusable (missing interpreter or Python < 3.$MIN_MINOR); recreating it"
        rm -rf "$VENV"
    fi
    say "creating .venv with $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
fi

# Skip the installs when nothing that feeds them changed since the last successful run.
STAMP="$VENV/.localjobs-setup"
want="$(cat pyproject.toml "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
# (-I: the check must see what is installed, not the current directory.)
installed_here() {
    "$VENV/bin/python" -I -c '
import importlib.util, sys
import nemo_platform
spec = importlib.util.find_spec("web")
sys.exit(0 if spec and spec.origin and spec.origin.startswith(sys.argv[1]) else 1)
' "$ROOT/" >/dev/null 2>&1
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/localjobs" ] && installed_here; then
    exit 0
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
LOG="$VENV/setup-pip.log"
say "installing localjobs[dev] and $SDK_SPEC into .venv (log: $LOG)"
run_pip() {
    if ! "${PIP[@]}" "$@" >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "pip $* failed"
    fi
}
run_pip install -e '.[dev]'
# The SDK's own dependency list pulls in a whole platform; its client needs only what the dev
# extra already installs (httpx, pydantic, anyio, distro, sniffio, typing-extensions).
run_pip install --no-deps "$SDK_SPEC"
"$VENV/bin/python" -c "from nemo_platform import NeMoPlatform" \
    || die "the NeMo Platform SDK does not import; a dependency is missing from the dev extra"
echo "$want" >"$STAMP"
say "ready: $VENV ($("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"

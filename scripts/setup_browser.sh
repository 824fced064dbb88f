#!/usr/bin/env bash
# setup_browser.sh - install Debian's Chromium for the dashboard's browser tests (Playwright, from
# the dev extra, drives it: Playwright's own browser download is not used).
#
# Idempotent: nothing is installed when a Chromium is already there. Runs as root,
# non-interactively (CI=true, no stdin). Exits non-zero on failure.
#
# Knobs (environment):
#   LOCALJOBS_CHROMIUM   the browser binary the tests use (default: chromium on PATH, /usr/bin/chromium)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
LOG=/tmp/localjobs-apt-browser.log

say() { echo "[setup_browser] $*"; }
die() {
    echo "[setup_browser] ERROR: $*" >&2
    exit 1
}

chromium_path() {
    if [ -n "${LOCALJOBS_CHROMIUM:-}" ]; then
        echo "$LOCALJOBS_CHROMIUM"
    else
        command -v chromium || echo /usr/bin/chromium
    fi
}

browser="$(chromium_path)"
if [ -x "$browser" ]; then
    say "already installed: $browser"
    exit 0
fi
[ -z "${LOCALJOBS_CHROMIUM:-}" ] || die "LOCALJOBS_CHROMIUM=$LOCALJOBS_CHROMIUM is not an executable"
[ "$(id -u)" -eq 0 ] || die "need root to apt-get install chromium"
apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
say "apt-get update + install chromium fonts-dejavu-core (log: $LOG)"
apt-get update -q >"$LOG" 2>&1 || { tail -20 "$LOG" >&2; die "apt-get update failed"; }
# fonts-dejavu-core: text that renders the same on every machine (and in the screenshots).
apt-get install "${apt_opts[@]}" chromium fonts-dejavu-core >>"$LOG" 2>&1 \
    || { tail -20 "$LOG" >&2; die "apt-get install chromium failed"; }
browser="$(chromium_path)"
[ -x "$browser" ] || die "chromium installed but $browser is not there"
say "installed: $("$browser" --version 2>/dev/null || echo "$browser")"

#!/usr/bin/env bash
# serve.sh - install (scripts/setup.sh, a no-op when up to date) and start the daemon.
# Every argument goes to `localjobs serve`, e.g. ./scripts/serve.sh --port 8080 --data-dir ./data
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/localjobs" serve "$@"

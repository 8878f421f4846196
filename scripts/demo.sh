#!/usr/bin/env bash
# Everything on a fresh machine: set up the host, build the tiny guest, define a
# demo domain, then snapshot + back up, list, verify, status, restore, prune and
# instant recovery, showing
# each command and its output.  Leaves nothing behind (--keep keeps the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-guest.sh >/dev/null
exec .venv/bin/python scripts/demo.py "$@"

#!/usr/bin/env bash
# Set up the host and run the test suite that CI runs (real libvirtd + QEMU).
#   scripts/test.sh              unit + integration tests (what CI runs, ~14 min on 2 cores)
#   scripts/test.sh --stress     also the long stress runs and every fault-injection step (FIBACKUP_STRESS=1)
#   scripts/test.sh -- ARGS      extra pytest arguments, e.g. -- -k restore
set -euo pipefail
cd "$(dirname "$0")/.."

extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stress) export FIBACKUP_STRESS=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: scripts/test.sh [--stress] [-- PYTEST-ARGS]" >&2; exit 2 ;;
  esac
  shift
done

bash scripts/setup-host.sh
# libguestfs's appliance hangs under the nested KVM of CI machines (tests/README.md)
export LIBGUESTFS_BACKEND_SETTINGS="${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}"
bash scripts/build-guest.sh >/dev/null
.venv/bin/python -m mypy          # the type check: configuration in pyproject.toml
exec .venv/bin/python -m pytest -ra "${extra[@]}"

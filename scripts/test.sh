#!/usr/bin/env bash
# The test command: sets up a fresh Debian 12 host (as root), lints, type-checks, runs every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
echo "== ruff check"; .venv/bin/ruff check src tests bench
echo "== ruff format --check"; .venv/bin/ruff format --check src tests bench
echo "== mypy --strict"; .venv/bin/mypy --strict src/banger
echo "== pytest"
set +e
.venv/bin/pytest -ra "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"

#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): set the host up, then create a sandbox VM
# from the offline default image (debian-bookworm, built locally with mmdebstrap) on the host's
# distro kernel, and run a command in it over SSH.
#
#   ./scripts/sandbox.sh [NAME] [-- COMMAND...]     (default name "sandbox", command: uname -a etc.)
#
# The VM keeps running afterwards: `banger vm ssh NAME` for a shell, `banger vm delete NAME` to
# remove it. Re-running reuses the VM when it exists (starting it if stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh

name=sandbox
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  name=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
  set -- 'echo "hello from $(hostname)"; uname -srm; . /etc/os-release; echo "$PRETTY_NAME"; df -h /root | tail -1'
fi

banger=(.venv/bin/banger)
state=$("${banger[@]}" vm show "$name" --json 2>/dev/null | .venv/bin/python -c \
  'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || true)
case "$state" in
  "") "${banger[@]}" vm create --name "$name" ;;
  running) echo "vm $name is already running" ;;
  *) "${banger[@]}" vm start "$name" ;;
esac
echo "\$ banger vm ssh $name -- $*"
"${banger[@]}" vm ssh "$name" -- "$@"
echo "vm $name is still running: \`banger vm ssh $name\` for a shell, \`banger vm delete $name\` to remove it"

#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): set the host up, then `banger vm run` the
# sample repository (examples/sample-repo, made into a fresh git checkout) in a sandbox VM from the
# offline default image (debian-bookworm, built locally with mmdebstrap) on the host's distro
# kernel: the checkout lands at /root/repo and `make test` runs there over SSH.
#
#   ./scripts/sandbox.sh [NAME] [-- COMMAND...]     (default name "sandbox", command: make test)
#
# The VM keeps running afterwards: `banger vm exec NAME -- CMD` to run more in the workspace,
# `banger vm workspace export NAME | git apply` to bring changes back, `banger vm delete NAME` to
# remove it. Re-running reuses the VM when it exists (starting it if stopped, re-syncing the repo).
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
  set -- make test
fi

# The sample repository: a fresh git checkout of examples/sample-repo.
sample=/tmp/banger-sample-repo
rm -rf "$sample"
cp -r examples/sample-repo "$sample"
git -C "$sample" init -q -b main
git -C "$sample" add -A
git -C "$sample" -c user.name=banger -c user.email=sandbox@banger.invalid commit -q -m "sample"

banger=(.venv/bin/banger)
state=$("${banger[@]}" vm show "$name" --json 2>/dev/null | .venv/bin/python -c \
  'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null || true)
case "$state" in
  "")
    echo "\$ banger vm run --name $name $sample -- $*"
    exec "${banger[@]}" vm run --name "$name" "$sample" -- "$@"
    ;;
  running) echo "vm $name is already running" ;;
  paused) "${banger[@]}" vm resume "$name" ;;
  *) "${banger[@]}" vm start "$name" ;; # stopped, or suspended: start wakes it
esac
"${banger[@]}" vm workspace prepare "$name" "$sample"
echo "\$ banger vm exec $name -- $*"
"${banger[@]}" vm exec "$name" -- "$@"
echo "vm $name is still running: \`banger vm exec $name -- CMD\`, \`banger vm delete $name\` to remove it"

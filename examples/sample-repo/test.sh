#!/bin/sh
# The sample's test suite: greet.sh must greet whoever it is given.
set -eu
out=$(./greet.sh banger)
case "$out" in
  "hello, banger, from "*) echo "ok: $out" ;;
  *) echo "FAIL: unexpected output: $out" >&2; exit 1 ;;
esac
echo "ok: running in $(pwd) on commit $(git rev-parse --short HEAD) ($(uname -srm))"

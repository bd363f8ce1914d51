#!/usr/bin/env bash
# `interpart demo` (the main job) on the embedded default config, with its VM partition: every
# phase runs, the block clients and the guest verify what they read, nothing is left behind.
#   tests/demo_test.sh INTERPART
set -euo pipefail
bin=$1
root=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/watchdog.sh"
deadline 150
step "building the guest (scripts/guest)"
"$root/scripts/guest" > /dev/null
step "interpart demo --seconds 1"
out=$(mktemp)
trap 'watchdog_stop; rm -f "$out"' EXIT
INTERPART_GUEST=$root/.deps/guest "$bin" demo --seconds 1 > "$out" 2>&1 || { cat "$out"; echo "FAIL: the demo failed"; exit 1; }
for want in "queue ping-pong" "pipe stream" "verified" "app1  done:" "app2  done:" "vm: [1-9][0-9]* write+read rounds .* 0 wrong" \
            "disk0      vm" "demo finished: fabric down, nothing left behind"; do
  grep -q "$want" "$out" || { cat "$out"; echo "FAIL: the demo did not print \"$want\""; exit 1; }
done
grep -q " 0 mismatches, 0 errors" "$out" || { cat "$out"; echo "FAIL: a block client saw a mismatch"; exit 1; }
echo "demo: ok ($(grep -o 'vm: [0-9]* write+read rounds' "$out"))"

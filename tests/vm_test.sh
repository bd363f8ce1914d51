#!/usr/bin/env bash
# VM partitions for real: QEMU boots Debian's kernel (scripts/guest) with its disk on a
# vhost-user-blk socket of `interpart serve`, beside a process partition on the same device.
#   1. a process partition writes 1 MiB; the guest reads it back (sha256 compared);
#   2. the guest writes 4 MiB with O_DIRECT and buffered, reads them back, while the process
#      partition writes and verifies its own region the whole time; the process partition then
#      reads what the guest wrote (sha256 compared); stat counts the VM's I/O;
#   3. a read-only VM client: the guest sees a read-only disk, its writes fail, its reads work.
# KVM where it runs guests here, else TCG (scripts/guest decides).
#   tests/vm_test.sh INTERPART BLK_TOOL
set -euo pipefail
bin=$1 tool=$2
root=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/fabric_lib.sh"
deadline 300
step "building the guest (scripts/guest)"
guest=$("$root/scripts/guest")
accel=$(cat "$guest/accel")
step "starting the fabric"
{
  printf '[fabric]\nname = "vmtest"\nsocket = "%s"\nallow_root = true\n' "$sock"
  id=0
  for image in io app vm1 vm2; do
    id=$((id + 1))
    printf '[[images]]\nname = "%s"\nid = %d\nuid = "self"\ngid = "self"\n' "$image" "$id"
    case $image in vm*) echo 'kind = "vm"' ;; esac
  done
  cat <<EOF
[[devices]]
name = "disk0"
image = "io"
backend = "file"
path = "$dir/disk0.img"
size = "64MiB"
queues = 2
depth = 32
clients = { app = "rw", vm1 = "rw", vm2 = "ro" }
vhost_user = { vm1 = "$dir/vm1.sock", vm2 = "$dir/vm2.sock" }
EOF
} > "$dir/fabric.toml"
"$bin" up "$dir/fabric.toml" --daemon --log "$dir/up.log" || fail "interpart up"
mgr=$("$bin" stat --socket "$sock" | sed -n 's/.*manager pid \([0-9]*\).*/\1/p')
fabric_serve io
[ -S "$dir/vm1.sock" ] || fail "no vhost-user socket for vm1"
[ "$(stat -c %a "$dir/vm1.sock")" = 600 ] || fail "vm1's socket is not mode 0600"

# boot VM SCRIPT [wait]: runs SCRIPT as the guest's /test.sh; its console goes to $dir/VM.log.
# With "nowait" it returns at once (the caller waits for $qemu).
boot() {
  local vm=$1 script=$2 work=$dir/$1-initrd
  mkdir -p "$work"
  cp "$script" "$work/test.sh"
  chmod +x "$work/test.sh"
  (cd "$work" && echo test.sh | cpio -o -H newc --quiet) > "$work/test.cpio"
  cat "$guest/initrd.img" "$work/test.cpio" > "$work/initrd.img"
  timeout -k 5 200 qemu-system-x86_64 -accel "$accel" -m 256 -smp 2 -nodefaults -no-reboot -display none -serial stdio \
    -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
    -kernel "$guest/vmlinuz" -initrd "$work/initrd.img" -append "console=ttyS0 panic=-1 quiet" \
    -chardev socket,id=disk,path="$dir/$vm.sock",reconnect=1 -device vhost-user-blk-pci,chardev=disk,num-queues=2 \
    > "$dir/$vm.log" 2>&1 &
  qemu=$!
  pids+=($qemu)
  [ "${3:-}" = nowait ] || boot_wait "$vm"
}
boot_wait() {
  wait "$qemu" || fail "qemu for $1 failed (exit $?)"
  grep -q "GUEST-EXIT 0" "$dir/$1.log" || fail "the $1 guest's test failed"
}
value() { sed -n "s/^$1 //p" "$dir/$2.log" | tr -d '\r' | head -1; }

step "the process partition writes 1 MiB at 32 MiB"
head -c 1048576 /dev/urandom > "$dir/proc.bin"
"$tool" "$sock" app disk0 write $((32 << 20)) 1048576 < "$dir/proc.bin" || fail "blk_tool write"
proc_sha=$(sha256sum < "$dir/proc.bin" | cut -d' ' -f1)

cat > "$dir/vm1.sh" <<'EOF'
#!/bin/sh
echo "SECTORS $(cat /sys/block/vda/size)"
echo "RO $(cat /sys/block/vda/ro)"
echo "QUEUES $(ls /sys/block/vda/mq | wc -l)"
dd if=/dev/vda bs=65536 skip=512 count=16 iflag=direct 2>/dev/null | sha256sum | sed 's/ .*//; s/^/PROC /'
dd if=/dev/urandom of=/tmp/a bs=65536 count=32 2>/dev/null
dd if=/dev/urandom of=/tmp/b bs=65536 count=32 2>/dev/null
sha256sum /tmp/a | sed 's/ .*//; s/^/WROTE_A /'
sha256sum /tmp/b | sed 's/ .*//; s/^/WROTE_B /'
dd if=/tmp/a of=/dev/vda bs=65536 oflag=direct 2>/dev/null || exit 1
dd if=/tmp/b of=/dev/vda bs=65536 seek=32 conv=fsync 2>/dev/null || exit 1
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda bs=65536 count=32 iflag=direct 2>/dev/null | sha256sum | sed 's/ .*//; s/^/READ_A /'
dd if=/dev/vda bs=4096 skip=512 count=512 2>/dev/null | sha256sum | sed 's/ .*//; s/^/READ_B /'
EOF
step "vm1 boots ($accel) and does I/O while the process partition churns its own region"
"$tool" "$sock" app disk0 churn $((48 << 20)) 262144 1000 > "$dir/churn.log" 2>&1 &
churn=$!
pids+=($churn)
boot vm1 "$dir/vm1.sh"
kill "$churn"
wait "$churn" || fail "the process partition's I/O went wrong beside the guest: $(cat "$dir/churn.log")"
grep -q "^churn rounds [1-9]" "$dir/churn.log" || fail "the process partition made no I/O beside the guest"

[ "$(value SECTORS vm1)" = $((64 << 20 >> 9)) ] || fail "the guest sees $(value SECTORS vm1) sectors"
[ "$(value RO vm1)" = 0 ] || fail "vm1's disk is read-only"
[ "$(value QUEUES vm1)" = 2 ] || fail "vm1's disk has $(value QUEUES vm1) queues, not 2"
[ "$(value PROC vm1)" = "$proc_sha" ] || fail "the guest read something else than the process partition wrote"
[ "$(value READ_A vm1)" = "$(value WROTE_A vm1)" ] || fail "O_DIRECT data read back differs"
[ "$(value READ_B vm1)" = "$(value WROTE_B vm1)" ] || fail "buffered data read back differs"
wrote_a=$(value WROTE_A vm1)
step "the process partition reads what the guest wrote"
[ "$("$tool" "$sock" app disk0 read 0 2097152 | sha256sum | cut -d' ' -f1)" = "$(value WROTE_A vm1)" ] ||
  fail "the process partition reads something else than the guest wrote"
"$bin" stat --socket "$sock" > "$dir/stat.out"
awk '$1 == "disk0" && $2 == "vm1" { found = 1; if ($5 + 0 < 10 || $6 + 0 < 10) exit 1 } END { exit !found }' "$dir/stat.out" ||
  { cat "$dir/stat.out"; fail "stat does not count vm1's reads and writes"; }

cat > "$dir/restart.sh" <<'EOF'
#!/bin/sh
errors=0
echo "IO-START"
i=0
while [ $i -lt 48 ]; do
  dd if=/dev/urandom of=/tmp/a bs=65536 count=4 2>/dev/null
  dd if=/tmp/a of=/dev/vda bs=65536 seek=$((256 + i * 4)) oflag=direct 2>/dev/null || errors=$((errors + 1))
  dd if=/dev/vda of=/tmp/b bs=65536 skip=$((256 + i * 4)) count=4 iflag=direct 2>/dev/null || errors=$((errors + 1))
  cmp -s /tmp/a /tmp/b || errors=$((errors + 1))
  i=$((i + 1))
done
echo "IO-ERRORS $errors"
dmesg | grep -c "I/O error" | sed 's/^/KERNEL-IO-ERRORS /'
EOF
step "vm1 does I/O while interpart serve is killed (-9) and restarted"
boot vm1 "$dir/restart.sh" nowait
for _ in $(seq 600); do grep -q IO-START "$dir/vm1.log" && break; sleep 0.1; done
grep -q IO-START "$dir/vm1.log" || fail "vm1 did not start its I/O"
sleep 0.3
kill -9 "$serve"
wait "$serve" 2>/dev/null || true
fabric_serve io
boot_wait vm1
[ "$(value IO-ERRORS vm1)" = 0 ] || fail "the guest saw $(value IO-ERRORS vm1) failed or wrong I/Os across the driver's restart"
[ "$(value KERNEL-IO-ERRORS vm1)" = 0 ] || fail "the guest's kernel logged I/O errors across the driver's restart"

cat > "$dir/vm2.sh" <<'EOF'
#!/bin/sh
echo "RO $(cat /sys/block/vda/ro)"
dd if=/dev/vda bs=65536 count=32 iflag=direct 2>/dev/null | sha256sum | sed 's/ .*//; s/^/READ_A /'
if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then echo "WRITE ok"; else echo "WRITE refused"; fi
EOF
step "vm2 (read-only client) boots"
boot vm2 "$dir/vm2.sh"
[ "$(value RO vm2)" = 1 ] || fail "vm2's disk is not read-only in the guest"
[ "$(value WRITE vm2)" = refused ] || fail "vm2 could write"
[ "$(value READ_A vm2)" = "$wrote_a" ] || fail "vm2 reads something else than vm1 wrote"
echo "process partition beside vm1: $(cat "$dir/churn.log")"
echo "vm: ok ($accel; guest and process partition shared disk0, the guest's I/O went on across kill -9 of the driver, read-only VM refused writes)"

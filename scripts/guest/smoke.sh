#!/bin/bash
# Smoke test for the fibackup test guest: build it (cached), boot it under libvirt (TCG) with two
# 16 MiB raw virtio disks, check the console protocol, the guest agent (ping, fsfreeze, guest-exec)
# and the writer records on vdb. Cleans up after itself. Run as root with libvirtd running.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VIRSH=(virsh -q -c qemu:///system)
DOM=fib-smoke-$$
TMP=
BOOT_TIMEOUT=${BOOT_TIMEOUT:-60}

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.2f", b - a}'; }
log() { echo "smoke: $*"; }
fail() {
    echo "smoke: FAIL: $*" >&2
    if [ -n "$TMP" ] && [ -f "$TMP/console.log" ]; then
        echo "---- console.log (tail) ----" >&2
        tail -n 40 "$TMP/console.log" >&2 || true
    fi
    exit 1
}
cleanup() {
    "${VIRSH[@]}" destroy "$DOM" >/dev/null 2>&1 || true
    [ -n "$TMP" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

agent() { "${VIRSH[@]}" qemu-agent-command --timeout 10 "$DOM" "$1"; }
json_get() {  # json_get KEYPATH  (reads JSON on stdin; KEYPATH like return.pid)
    python3 -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(json.dumps(v) if isinstance(v, (dict, list, bool)) else v)' "$1"
}

# libvirt 9 probes QEMU as root (KVM on) but validates the cache against what user libvirt-qemu may
# open: with /dev/kvm root-only every virsh create re-probes QEMU for 35-60 s. udev normally does this:
if [ -e /dev/kvm ] && ! runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
    log "WARNING: /dev/kvm is not usable by libvirt-qemu; 'virsh create' will take ~35-60 s here" \
        "(libvirt re-probes QEMU capabilities each time). Fix: chgrp kvm /dev/kvm && chmod 660 /dev/kvm"
fi

T=$(now)
build_out=$("$SCRIPT_DIR/../build-guest.sh") || fail "build-guest.sh failed"
KERNEL=$(tail -n 2 <<<"$build_out" | head -n 1)
INITRD=$(tail -n 1 <<<"$build_out")
[ -r "$KERNEL" ] && [ -r "$INITRD" ] || fail "build-guest.sh did not print the kernel and initrd paths"
log "build (or cache check) took $(since "$T") s: $KERNEL $INITRD"

TMP=$(mktemp -d /tmp/fib-smoke.XXXXXX)
chmod 755 "$TMP"   # QEMU runs as libvirt-qemu and must traverse it
qemu-img create -q -f raw "$TMP/vda.raw" 16M
qemu-img create -q -f raw "$TMP/vdb.raw" 16M

cat > "$TMP/dom.xml" <<XML
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$KERNEL</kernel>
    <initrd>$INITRD</initrd>
    <cmdline>console=ttyS0 panic=-1 fib.hashbytes=1048576 fib.writer=vdb</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$TMP/vda.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$TMP/vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$TMP/console.log'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
XML

T=$(now)
"${VIRSH[@]}" create "$TMP/dom.xml" >/dev/null || fail "virsh create"
T_CREATE=$(since "$T")

wait_console() {  # wait_console PATTERN TIMEOUT
    local deadline
    deadline=$(awk -v a="$EPOCHREALTIME" -v t="$2" 'BEGIN {printf "%.3f", a + t}')
    while ! grep -qE "$1" "$TMP/console.log" 2>/dev/null; do
        awk -v d="$deadline" -v n="$EPOCHREALTIME" 'BEGIN {exit !(n > d)}' && return 1
        sleep 0.1
    done
}
wait_console '^FIBACKUP-GUEST READY' "$BOOT_TIMEOUT" || fail "no 'FIBACKUP-GUEST READY' within ${BOOT_TIMEOUT}s"
T_READY=$(since "$T")
log "virsh create took ${T_CREATE}s; READY ${T_READY}s after create"

# agent
T=$(now)
out=$(agent '{"execute":"guest-ping"}') || fail "guest-ping"
[ "$(json_get return <<<"$out")" = "{}" ] || fail "guest-ping answered $out"
log "guest-ping ok ($(since "$T") s)"

out=$(agent '{"execute":"guest-fsfreeze-freeze"}') || fail "guest-fsfreeze-freeze"
log "fsfreeze-freeze -> $out"
out=$(agent '{"execute":"guest-fsfreeze-status"}') || fail "guest-fsfreeze-status"
log "fsfreeze-status -> $out"
out=$(agent '{"execute":"guest-fsfreeze-thaw"}') || fail "guest-fsfreeze-thaw"
log "fsfreeze-thaw -> $out"

T=$(now)
out=$(agent '{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","echo hi"],"capture-output":true}}') \
    || fail "guest-exec"
pid=$(json_get return.pid <<<"$out")
st=
for _ in $(seq 100); do
    st=$(agent "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}") || fail "guest-exec-status"
    [ "$(json_get return.exited <<<"$st")" = true ] && break
    sleep 0.1
done
[ "$(json_get return.exited <<<"$st")" = true ] || fail "guest-exec did not finish: $st"
[ "$(json_get return.exitcode <<<"$st")" = 0 ] || fail "guest-exec exit code: $st"
[ "$(json_get return.out-data <<<"$st" | base64 -d)" = hi ] || fail "guest-exec output: $st"
log "guest-exec ok ($(since "$T") s): $st"

# console protocol: both disks are zero-filled, md5 of 1 MiB of zeros
wait_console '^FIBACKUP-DISKS-DONE' 30 || fail "no FIBACKUP-DISKS-DONE"
zero=$(head -c 1048576 /dev/zero | md5sum | cut -d' ' -f1)
for d in vda vdb; do
    grep -q "^FIBACKUP-DISK $d $zero" "$TMP/console.log" || fail "missing/wrong FIBACKUP-DISK line for $d"
done
wait_console '^FIBACKUP-WRITER STARTED' 30 || fail "no FIBACKUP-WRITER STARTED"
log "console lines:"
grep -a '^FIBACKUP-' "$TMP/console.log" | tr -d '\r' | sed 's/^/    /'
sleep 2
"${VIRSH[@]}" destroy "$DOM" >/dev/null || fail "virsh destroy"

# writer records on vdb
python3 - "$TMP/vdb.raw" "$TMP/vda.raw" <<'PY' || fail "record check"
import sys
vdb = open(sys.argv[1], "rb").read()
n = 0
while (n + 1) * 4096 <= len(vdb):
    head = b"FIBREC %d\n" % n
    want = head + b"x" * (4096 - len(head))
    if vdb[n * 4096:(n + 1) * 4096] != want:
        break
    n += 1
if n == 0:
    sys.exit("record 0 missing: %r" % vdb[:32])
rest = vdb[n * 4096:]
if rest.strip(b"\0"):
    sys.exit("garbage after record %d: %r" % (n - 1, rest[:64]))
if open(sys.argv[2], "rb").read().strip(b"\0"):
    sys.exit("vda was modified")
print("smoke: vdb holds %d intact records, vda untouched" % n)
PY
log "PASS"

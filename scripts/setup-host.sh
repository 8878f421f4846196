#!/usr/bin/env bash
# Prepare this host for fibackup and its test suite; safe to run again.
#  - installs the Debian packages (QEMU, libvirt, build deps of libvirt-python,
#    what the tiny test guest is built from),
#  - starts virtlogd and libvirtd (systemd when the host runs it, by hand otherwise),
#  - makes /dev/kvm usable by the qemu user when it exists (tests fall back to TCG),
#  - creates .venv and installs fibackup with its test and S3 extras (the S3 tests
#    start a real Ceph RGW from the ceph packages: scripts/setup-s3.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
          pkg-config gcc busybox-static cpio xxhash procps xfsprogs acl ovmf swtpm swtpm-tools
          ceph-mon ceph-osd radosgw ceph-common curl fuse3 zstd
          nbdkit nbdkit-plugin-python libguestfs-tools python3-guestfs libguestfs-xfs
          btrfs-progs dosfstools ntfs-3g lvm2 gdisk)
# serving points (nbdkit) and reading guest filesystems inside libguestfs's appliance;
# supermin builds that appliance from the host's kernel, so a host without one in /boot
# (a container) gets Debian's cloud kernel

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host.sh must run as root (it installs packages and starts libvirtd)" >&2
    exit 1
  fi
}

install_packages() {
  local missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  if ! python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing+=(python3-dev)
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
    missing+=("linux-image-$(dpkg --print-architecture | sed 's/amd64/cloud-amd64/')")
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

libvirt_answers() {
  virsh -q -c qemu:///system version >/dev/null 2>&1
}

start_daemons() {
  libvirt_answers && return 0
  if [ -d /run/systemd/system ]; then
    systemctl start virtlogd libvirtd
  else
    # a process alone is not enough: a container may see another root's daemons
    if ! { [ -S /run/libvirt/virtlogd-sock ] && pgrep -x virtlogd >/dev/null; }; then
      virtlogd -d
    fi
    libvirtd -d
  fi
  for _ in $(seq 1 50); do
    libvirt_answers && return 0
    sleep 0.2
  done
  echo "libvirtd did not answer on qemu:///system" >&2
  exit 1
}

kvm_access() {
  if [ -e /dev/kvm ]; then
    chgrp kvm /dev/kvm 2>/dev/null || true
    chmod 660 /dev/kvm 2>/dev/null || true
  fi
}

make_venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,s3]' >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "installing fibackup into .venv failed (see above)" >&2
    exit 1
  fi
  rm -f "$log"
  # an editable install leaves fibackup's own modules uncompiled, and with
  # PYTHONDONTWRITEBYTECODE set every run would compile them again (~40 ms)
  .venv/bin/python -m compileall -q fibackup >/dev/null
}

need_root
install_packages
start_daemons
kvm_access
make_venv
echo "host ready: $(virsh -q -c qemu:///system version | tr '\n' ' ')"

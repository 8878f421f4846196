#!/bin/bash
# Build (or reuse from cache) a tiny real Linux test guest for fibackup's integration tests:
#   $FIBACKUP_GUEST_DIR/vmlinuz      Debian cloud kernel (linux-image-cloud-amd64's current dependency)
#   $FIBACKUP_GUEST_DIR/initrd.img   cpio newc + gzip: busybox-static, virtio modules, qemu-ga + its libs,
#                                    /init = scripts/guest/init
#   $FIBACKUP_GUEST_DIR/stamp        kernel package+version, qemu-ga version, hashes of init and this script
# Default dir: /var/cache/fibackup/guest. If the stamp matches, nothing is rebuilt.
# Needs root (apt-get install of missing host tools, mknod /dev/console). Network: apt only.
# Prints the two paths on the last two lines of stdout.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT_SRC="$SCRIPT_DIR/guest/init"
OUT=$(realpath -m "${FIBACKUP_GUEST_DIR:-/var/cache/fibackup/guest}")   # QEMU needs absolute paths
# load order matters: virtio needs virtio_ring; virtio_pci needs the three before it
MODULES=(virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev virtio/virtio_pci_legacy_dev
         virtio/virtio_pci block/virtio_blk char/virtio_console)

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: ERROR: $*" >&2; exit 1; }

[ -r "$INIT_SRC" ] || die "missing $INIT_SRC"

apt_updated=0
apt_update_once() {
    if [ $apt_updated = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_pkgs() {
    local missing=() p
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "must run as root to install ${missing[*]}"
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# One apt-cache call (~0.5 s each here: the package cache is not kept on disk). Prints
#   K <kernel package> <version>   from linux-image-cloud-amd64's "Depends: linux-image-X (= V)"
#                                  (an exact package name: a glob would download every version)
#   Q <qemu-guest-agent candidate version>
resolve_versions() {
    apt-cache show --no-all-versions linux-image-cloud-amd64 qemu-guest-agent 2>/dev/null | awk '
        /^Package:/ { p = $2 }
        p == "linux-image-cloud-amd64" && /^Depends:/ {
            sub(/^Depends: */, ""); n = split($0, d, /, */)
            for (i = 1; i <= n; i++)
                if (d[i] ~ /^linux-image-[^ ]+ \(= [^)]+\)$/) {
                    split(d[i], f, /[ ()=]+/); print "K", f[1], f[2]; break
                }
        }
        p == "qemu-guest-agent" && /^Version:/ { print "Q", $2 }' || true
}
read_versions() {
    local v
    v=$(resolve_versions)
    KPKG=$(awk '$1 == "K" {print $2}' <<<"$v")
    KVER=$(awk '$1 == "K" {print $3}' <<<"$v")
    QVER=$(awk '$1 == "Q" {print $2}' <<<"$v")
    [ -n "$KPKG" ] && [ -n "$KVER" ] && [ -n "$QVER" ]
}

ensure_pkgs busybox-static cpio

if ! read_versions; then
    apt_update_once
    read_versions || die "cannot resolve linux-image-cloud-amd64 -> linux-image-* and qemu-guest-agent (apt-cache show)"
fi

STAMP="format=1
kernel=$KPKG=$KVER
qemu-guest-agent=$QVER
busybox=$(dpkg-query -W -f='${Version}' busybox-static)
init-sha256=$(sha256sum "$INIT_SRC" | cut -d' ' -f1)
build-sha256=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

cache_ok() {
    [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -f "$OUT/stamp" ] &&
        [ "$(cat "$OUT/stamp")" = "$STAMP" ]
}
finish() {
    echo "$OUT/vmlinuz"
    echo "$OUT/initrd.img"
    exit 0
}

if cache_ok; then finish; fi

[ "$(id -u)" = 0 ] || die "must run as root to build (mknod, apt-get)"
mkdir -p "$OUT"
chmod 755 "$OUT"
# serialize concurrent builds; re-check once we hold the lock
exec 9>"$OUT/.lock"
flock 9
if cache_ok; then finish; fi

# QEMU runs as libvirt-qemu: every directory above the files must be traversable
d=$OUT
while [ "$d" != / ] && [ -n "$d" ]; do
    if [ "$(( $(stat -c '%a' "$d" | sed 's/^/0/') & 1 ))" = 0 ]; then
        log "WARNING: $d is not traversable by others; QEMU (user libvirt-qemu) will not be able to open the guest files"
    fi
    d=$(dirname "$d")
done

T0=$EPOCHREALTIME
WORK=$(mktemp -d /tmp/fibackup-guest-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

log "downloading $KPKG=$KVER qemu-guest-agent=$QVER"
download() {
    (cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG=$KVER" "qemu-guest-agent=$QVER" >&2)
}
if ! download; then
    apt_update_once
    read_versions || die "cannot resolve packages after apt-get update"
    download || die "apt-get download failed"
fi
KDEB=$(ls "$WORK"/linux-image-*.deb)
QDEB=$(ls "$WORK"/qemu-guest-agent_*.deb)

log "extracting"
mkdir "$WORK/k" "$WORK/q"
dpkg -x "$KDEB" "$WORK/k"
dpkg -x "$QDEB" "$WORK/q"
VMLINUZ=$(ls "$WORK"/k/boot/vmlinuz-* | head -n 1)
[ -f "$VMLINUZ" ] || die "no boot/vmlinuz-* in $KDEB"
KREL=${VMLINUZ##*/vmlinuz-}
KMOD="$WORK/k/lib/modules/$KREL/kernel/drivers"
[ -d "$KMOD" ] || KMOD=$(ls -d "$WORK"/k/lib/modules/*/kernel/drivers | head -n 1)

R="$WORK/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,var/log,etc,lib/modules,lib64}
ln -s ../run "$R/var/run"
chmod 1777 "$R/tmp"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# busybox + applet links
cp /bin/busybox "$R/bin/busybox"
while read -r applet; do
    [ -n "$applet" ] || continue
    [ -e "$R/$applet" ] || [ -L "$R/$applet" ] && continue
    ln -s /bin/busybox "$R/$applet"
done < <(/bin/busybox --list-full)
[ -L "$R/bin/sh" ] || ln -sf busybox "$R/bin/sh"

# virtio modules, uncompressed, flat in /lib/modules/<name>.ko
for m in "${MODULES[@]}"; do
    name=${m##*/}
    if [ -f "$KMOD/$m.ko" ]; then
        cp "$KMOD/$m.ko" "$R/lib/modules/$name.ko"
    elif [ -f "$KMOD/$m.ko.xz" ]; then
        xz -dc "$KMOD/$m.ko.xz" > "$R/lib/modules/$name.ko"
    elif [ -f "$KMOD/$m.ko.zst" ]; then
        command -v zstd >/dev/null || ensure_pkgs zstd
        zstd -qdc "$KMOD/$m.ko.zst" > "$R/lib/modules/$name.ko"
    elif [ -f "$KMOD/$m.ko.gz" ]; then
        gzip -dc "$KMOD/$m.ko.gz" > "$R/lib/modules/$name.ko"
    else
        die "module $m not found in $KDEB (built in? then drop it from MODULES)"
    fi
done

# qemu-ga + the host's copies of its shared libraries and the dynamic loader
QGA="$WORK/q/usr/sbin/qemu-ga"
[ -x "$QGA" ] || die "no usr/sbin/qemu-ga in $QDEB"
cp "$QGA" "$R/usr/sbin/qemu-ga"
LDD=$(ldd "$QGA")
if grep -q 'not found' <<<"$LDD"; then
    # libraries come from the host: install qemu-guest-agent's library dependencies
    deps=$(dpkg-deb -f "$QDEB" Depends | tr ',' '\n' | sed -E 's/^ *//; s/[ (].*//; s/:any$//' | grep -v '^$')
    # shellcheck disable=SC2086
    ensure_pkgs $deps
    LDD=$(ldd "$QGA")
fi
if grep -q 'not found' <<<"$LDD"; then die "qemu-ga libraries missing on host: $(grep 'not found' <<<"$LDD")"; fi
while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$LDD" | sort -u)
ls "$R"/lib64/ld-linux* >/dev/null 2>&1 || die "dynamic loader not copied"

install -m 755 "$INIT_SRC" "$R/init"

log "packing initramfs"
find "$R" -exec touch -h -d @0 {} +   # fixed mtimes: same inputs, same initrd.img
(cd "$R" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -6 -n > "$WORK/initrd.img"

install -m 644 "$VMLINUZ" "$OUT/.vmlinuz.new"
install -m 644 "$WORK/initrd.img" "$OUT/.initrd.img.new"
printf '%s\n' "$STAMP" > "$OUT/.stamp.new"
chmod 644 "$OUT/.stamp.new"
rm -f "$OUT/stamp"
mv -f "$OUT/.vmlinuz.new" "$OUT/vmlinuz"
mv -f "$OUT/.initrd.img.new" "$OUT/initrd.img"
mv -f "$OUT/.stamp.new" "$OUT/stamp"
log "built $KPKG $KVER ($KREL), initrd $(stat -c %s "$OUT/initrd.img") bytes in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}') s"
rm -rf "$WORK"
trap - EXIT
finish

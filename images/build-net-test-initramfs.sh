#!/usr/bin/env bash
# Builds the virtio-net end-to-end test initramfs: Debian's static busybox as /bin/busybox and
# images/net-test-init (a busybox shell script) as /init.
#
#   images/build-net-test-initramfs.sh        # last line of stdout: path of the .cpio
#
# Output: $TARGET_DIR/bulkhead-images/net-test-initramfs.cpio (TARGET_DIR: $CARGO_TARGET_DIR or
# the workspace's target/). Packing is deterministic (see mkinitramfs.sh).
# Needs: busybox-static (/bin/busybox), python3.
set -euo pipefail

die() { echo "build-net-test-initramfs: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out_dir="$target_dir/bulkhead-images"
busybox=$(readlink -f /bin/busybox) || die "install busybox-static"
file "$busybox" 2>/dev/null | grep -q 'statically linked' \
    || die "$busybox is not statically linked (install busybox-static)"
mkdir -p "$out_dir" || die "cannot create $out_dir"
"$here/mkinitramfs.sh" "$out_dir/net-test-initramfs.cpio" \
    "$busybox:/bin/busybox:0755" "$here/net-test-init:/init:0755" \
    || die "packing the initramfs failed"
echo "$out_dir/net-test-initramfs.cpio"

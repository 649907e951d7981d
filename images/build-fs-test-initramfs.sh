#!/usr/bin/env bash
# Builds the virtio-fs end-to-end test initramfs: bulkhead-fs-test-init (static) packed as /init.
#
#   images/build-fs-test-initramfs.sh        # last line of stdout: path of the .cpio
#
# Output: $TARGET_DIR/bulkhead-images/fs-test-initramfs.cpio (TARGET_DIR: $CARGO_TARGET_DIR or
# the workspace's target/). Same size-optimised static build as build-test-initramfs.sh, in the
# same cargo target directory; packing is deterministic, so a rerun takes seconds.
# Needs: cargo with the x86_64-unknown-linux-gnu target and static glibc (libc6-dev), python3,
# binutils (objcopy).
set -euo pipefail

die() { echo "build-fs-test-initramfs: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out_dir="$target_dir/bulkhead-images"

command -v cargo >/dev/null || die "cargo not found"
command -v objcopy >/dev/null || die "objcopy not found (install binutils)"
mkdir -p "$out_dir" || die "cannot create $out_dir"

export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
# Small binary (the workspace's `guest` profile): the initramfs is unpacked by emulated guest
# kernel code on PVM hosts.

build_log="$out_dir/fs-test-init-build.log"
cargo build --profile guest --target "$triple" -p bulkhead-fs-test-init \
    --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir" >"$build_log" 2>&1 \
    || { tail -n 20 "$build_log" >&2; die "cargo build of bulkhead-fs-test-init failed (log: $build_log)"; }
bin="$target_dir/$triple/guest/bulkhead-fs-test-init"
[[ -x "$bin" ]] || die "built binary not found at $bin"

objcopy --strip-all "$bin" "$out_dir/fs-init.stripped" || die "objcopy --strip-all failed"
"$here/mkinitramfs.sh" "$out_dir/fs-test-initramfs.cpio" "$out_dir/fs-init.stripped:/init:0755" \
    || die "packing the initramfs failed"
echo "$out_dir/fs-test-initramfs.cpio"

#!/usr/bin/env bash
# Builds the VMM boot-test initramfs: bulkhead-test-init (static) packed as /init.
#
#   images/build-test-initramfs.sh        # last line of stdout: path of the .cpio
#
# Output: $TARGET_DIR/bulkhead-images/test-initramfs.cpio, where TARGET_DIR is
# $CARGO_TARGET_DIR or, without it, the workspace's target/ directory (the binary is built with
# the workspace's size-optimised `guest` profile). cargo's incremental build is
# the cache and packing is deterministic (see mkinitramfs.sh), so a rerun takes seconds.
# Needs: cargo with the x86_64-unknown-linux-gnu target and static glibc (libc6-dev),
# python3, binutils (objcopy).
set -euo pipefail

die() { echo "build-test-initramfs: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
crate="$here/test-init"
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out_dir="$target_dir/bulkhead-images"

command -v cargo >/dev/null || die "cargo not found"
command -v objcopy >/dev/null || die "objcopy not found (install binutils)"
mkdir -p "$out_dir" || die "cannot create $out_dir"

# Static glibc binary: there is no musl target on the build machines.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
# Small binary (the workspace's `guest` profile): the initramfs is unpacked by emulated guest
# kernel code on PVM hosts.

build_log="$out_dir/test-init-build.log"
cargo build --profile guest --target "$triple" -p bulkhead-test-init \
    --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir" >"$build_log" 2>&1 \
    || { tail -n 20 "$build_log" >&2; die "cargo build of bulkhead-test-init failed (log: $build_log)"; }
bin="$target_dir/$triple/guest/bulkhead-test-init"
[[ -x "$bin" ]] || die "built binary not found at $bin"

# Every byte of the initramfs is copied by emulated guest kernel code on PVM hosts: strip it.
objcopy --strip-all "$bin" "$out_dir/init.stripped" || die "objcopy --strip-all failed"
"$here/mkinitramfs.sh" "$out_dir/test-initramfs.cpio" "$out_dir/init.stripped:/init:0755" \
    || die "packing the initramfs failed"
echo "$out_dir/test-initramfs.cpio"

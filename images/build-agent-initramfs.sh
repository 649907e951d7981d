#!/usr/bin/env bash
# Builds the guest-agent initramfs: bulkhead-agent (static, stripped) packed as /init, nothing else.
#
#   images/build-agent-initramfs.sh           # last line of stdout: path of the .cpio
#   images/build-agent-initramfs.sh --test    # also /bin/sh = Debian's busybox-static, for the
#                                             # end-to-end tests (busybox's shell runs its applets
#                                             # without symlinks: sh -c 'exec cat', 'head', ...)
#
# Output: $TARGET_DIR/bulkhead-images/agent-initramfs.cpio (or agent-test-initramfs.cpio), where
# TARGET_DIR is $CARGO_TARGET_DIR or the workspace's target/ directory. cargo's incremental build
# is the cache; packing is deterministic (see mkinitramfs.sh). Uncompressed, and the production
# image holds only the agent: every byte is copied by emulated guest-kernel code on PVM hosts.
# Needs: cargo (x86_64-unknown-linux-gnu with static glibc: libc6-dev), python3, binutils
# (objcopy); with --test also busybox-static.
set -euo pipefail

die() { echo "build-agent-initramfs: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out_dir="$target_dir/bulkhead-images"
test_image=0
for arg in "$@"; do
    case "$arg" in
        --test) test_image=1 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

command -v cargo >/dev/null || die "cargo not found"
command -v objcopy >/dev/null || die "objcopy not found (install binutils)"
mkdir -p "$out_dir" || die "cannot create $out_dir"

# Static glibc binary: there is no musl target on the build machines. The agent uses no NSS.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
build_log="$out_dir/agent-build.log"
cargo build --profile guest --target "$triple" -p bulkhead-agent --manifest-path "$repo/Cargo.toml" \
    --target-dir "$target_dir" >"$build_log" 2>&1 \
    || { tail -n 20 "$build_log" >&2; die "cargo build of bulkhead-agent failed (log: $build_log)"; }
bin="$target_dir/$triple/guest/bulkhead-agent"
[[ -x "$bin" ]] || die "built binary not found at $bin"
# A program interpreter means it needs the dynamic loader, which the guest does not have.
is_dynamic() { readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }
is_dynamic "$bin" && die "$bin is dynamically linked (is RUSTFLAGS overriding +crt-static?)"
objcopy --strip-all "$bin" "$out_dir/agent.stripped" || die "objcopy --strip-all failed"

files=("$out_dir/agent.stripped:/init:0755")
out="$out_dir/agent-initramfs.cpio"
if [[ $test_image -eq 1 ]]; then
    busybox=/bin/busybox
    [[ -x $busybox ]] || die "$busybox not found (apt-get install busybox-static)"
    is_dynamic "$busybox" && die "$busybox is not static (install busybox-static)"
    files+=("$busybox:/bin/sh:0755")
    out="$out_dir/agent-test-initramfs.cpio"
fi
"$here/mkinitramfs.sh" "$out" "${files[@]}" || die "packing the initramfs failed"
echo "$out"

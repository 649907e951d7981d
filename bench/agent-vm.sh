#!/usr/bin/env bash
# Boots one micro-VM with the agent test initramfs and runs agent-bench against it through
# hybrid vsock, with the guest's own counters (context switches, interrupts, the agent's
# syscalls per operation and per MiB: figures that do not depend on how slow this host's
# emulation is).
#
#   bench/agent-vm.sh [agent-bench args...]     e.g. --pings 50 --starts 5 --mib 8
#
# Needs /dev/kvm and a built guest kernel ($BULKHEAD_KERNEL or the installed
# /usr/local/share/bulkhead/vmlinux).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
kernel=${BULKHEAD_KERNEL:-/usr/local/share/bulkhead/vmlinux}
[[ -f $kernel ]] || { echo "agent-vm: no kernel at $kernel (set BULKHEAD_KERNEL)" >&2; exit 1; }
cargo build --quiet --release -p bulkhead-vmm -p bulkhead-bench --manifest-path "$repo/Cargo.toml"
initrd=$("$repo/images/build-agent-initramfs.sh" --test | tail -n 1)

work=$(mktemp -d)
"$target/release/bulkhead-vmm" --kernel "$kernel" --initrd "$initrd" --mem 256 \
    --vsock "$work/vsock.sock" --console "$work/console.log" &
vmm=$!
trap 'kill $vmm 2>/dev/null || true; rm -rf "$work"' EXIT
start=$(date +%s.%N)
"$target/release/agent-bench" --vsock "$work/vsock.sock" --counters --shutdown "$@"
wait "$vmm" && echo "VMM exited cleanly after shutdown ($(echo "$(date +%s.%N) - $start" | bc) s after start)"

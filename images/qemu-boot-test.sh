#!/usr/bin/env bash
# Boots a guest kernel + the test initramfs in QEMU and checks bulkhead-test-init's verdict.
# A reference for what our own VMM must achieve, and a quick check of a kernel build.
#
#   images/qemu-boot-test.sh [--machine microvm|pc] [--smp N] [--mem MiB] [--timeout S]
#                            [--log FILE] [--append "extra args"] KERNEL INITRAMFS
#
# KERNEL: vmlinux (ELF with PVH note) or bzImage. microvm gets `-device i8042` so that the
# guest's keyboard-controller reset (reboot=k) ends QEMU at once (-no-reboot); without it
# the kernel spends ~20 s on PVM retrying the missing controller before a triple fault.
# On PVM hosts (/sys/module/kvm_pvm present) the PVM command line from shared/PVM.md is used.
# Prints one summary line; exit 0 only if the guest printed "BULKHEAD-TEST-INIT: ok".
# Needs: qemu-system-x86 (Debian 12: QEMU 7.2).
set -euo pipefail

die() { echo "qemu-boot-test: $*" >&2; exit 1; }

PVM_CMDLINE="noxsave nopti rodata=off quiet clearcpuid=cx16,smap,smep,pku,popcnt,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid,avx,avx2,avx512f,bmi1,bmi2,xsaveopt,xsavec,xsaves,clflushopt,clwb,movbe,umip,erms,fsrm"
# Boot-time savers, harmless anywhere, measured on PVM (1 vCPU, 128 MiB, ~24 M emulated
# instructions without them): noreplace-smp skips rewriting ~4000 LOCK prefixes one
# text_poke() at a time on a 1-CPU guest (-1.5..2 M instructions); percpu_alloc=page avoids
# zeroing a 2 MiB per-CPU chunk in emulated memset (-2 M).
PVM_SPEEDUPS="noreplace-smp percpu_alloc=page"
BASE_CMDLINE="console=ttyS0 reboot=k panic=-1"

machine=microvm smp=1 mem=128 timeout=300 log="" extra=""
while [[ $# -gt 2 ]]; do
    case "$1" in
        --machine) machine=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --append) extra=$2; shift 2 ;;
        *) die "unknown option '$1'" ;;
    esac
done
[[ $# -eq 2 ]] || die "usage: $0 [options] KERNEL INITRAMFS"
kernel=$1 initrd=$2
[[ -r "$kernel" ]] || die "cannot read kernel $kernel"
[[ -r "$initrd" ]] || die "cannot read initramfs $initrd"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
[[ -w /dev/kvm ]] || die "/dev/kvm is not usable"

cmdline="$BASE_CMDLINE"
cpu=host
if [[ -d /sys/module/kvm_pvm ]]; then
    cmdline="$cmdline $PVM_CMDLINE $PVM_SPEEDUPS"
    # -cpu host aborts on MSR 0x10a here; XSAVEERPTR keeps AMD guests off the fnclex path.
    cpu="qemu64,+x2apic,+xsaveerptr"
fi
[[ -n "$extra" ]] && cmdline="$cmdline $extra"

case "$machine" in
    microvm) machine_args=(-M microvm -device i8042) ;;
    pc) machine_args=(-M pc) ;;
    *) die "unknown machine '$machine' (microvm or pc)" ;;
esac

[[ -n "$log" ]] || log=$(mktemp /tmp/qemu-boot-test.XXXXXX.log)
start=$EPOCHREALTIME
t_started="" t_ok="" verdict="no verdict"
elapsed() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
while IFS= read -r line; do
    line=${line%$'\r'}
    now=$(elapsed)
    printf '[%7ss] %s\n' "$now" "$line" >>"$log"
    case "$line" in
        *"BULKHEAD-TEST-INIT: started"*) t_started=$now ;;
        *"BULKHEAD-TEST-INIT: ok"*) t_ok=$now; verdict=${line#*BULKHEAD-TEST-INIT: } ;;
        *"BULKHEAD-TEST-INIT: FAIL"*) verdict=${line#*BULKHEAD-TEST-INIT: } ;;
        *"Kernel panic"*) [[ "$verdict" == "no verdict" ]] && verdict="kernel panic" ;;
    esac
done < <(timeout --foreground "$timeout" qemu-system-x86_64 "${machine_args[@]}" -enable-kvm \
    -cpu "$cpu" -m "$mem" -smp "$smp" -nographic -no-reboot -kernel "$kernel" -initrd "$initrd" \
    -append "$cmdline" </dev/null 2>&1; echo "QEMU-EXIT-STATUS $?")
total=$(elapsed)
qemu_rc=$(sed -n 's/.*QEMU-EXIT-STATUS \([0-9]*\).*/\1/p' "$log" | tail -n 1)

echo "machine=$machine smp=$smp mem=${mem}M started=${t_started:-?}s ok=${t_ok:-?}s exit=${total}s qemu_rc=${qemu_rc:-?} verdict='$verdict' log=$log"
[[ -n "$t_ok" && "${qemu_rc:-1}" == "0" ]]

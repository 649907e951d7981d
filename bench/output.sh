#!/usr/bin/env bash
# A container's stdout throughput through `bulkhead run` (no engine), with the guest's and the
# VMM's counters per MiB, for one or more Bulkhead builds in the same run (issue 10).
#
#   bench/output.sh [MIB] [LABEL=BULKHEAD_BIN[,INITRAMFS]]...
#
# ROUNDS=n (default 1) repeats every build's runs n times, the builds taking turns (this host's
# speed drifts with its load: compare builds within a round).
# Default: 32 MiB, one build `current=target/release/bulkhead` with the installed initramfs.
# Give an older build (and the agent initramfs it shipped with) to get a ratio measured in the
# same run, e.g. `bench/output.sh 32 current=target/release/bulkhead old=/tmp/old/bulkhead,/tmp/old/agent.cpio`.
# Each build runs the same busybox bundle once to warm up (its template), then three times:
#   out   `head -c MIB /dev/zero` to the container's stdout, read on the host by `wc -c`;
#   null  the same writer to /dev/null inside the guest (the writer's own cost);
#   pipe  the same writer through a pipe to `cat >/dev/null` inside the guest (what any path
#         that starts with a pipe costs in the guest, before the agent and vsock);
#   idle  nothing (the VM's start and end, subtracted from the VMM's counters).
# Reported per build: seconds and MiB/s of the stdout phase (guest clock, /proc/uptime around the
# writer), what the path adds per MiB over the writer alone, and per MiB: guest context switches
# and interrupts (/proc/stat), vsock packets, queue kicks and interrupts and the VMM's vCPU exits
# (from the monitor's --debug log). Needs root, /dev/kvm, busybox-static, python3, bc.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=${1:-32}
[[ $# -gt 0 ]] && shift
builds=("$@")
[[ ${#builds[@]} -gt 0 ]] || builds=("current=$repo/target/release/bulkhead")
bytes=$((mib << 20))

work=$(mktemp -d /tmp/bh-output.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$repo/images/busybox-rootfs.sh" "$work/bundle/rootfs"
first=${builds[0]#*=}
first=$(realpath "${first%%,*}")
(cd "$work/bundle" && "$first" spec)

# The bundle's process: stderr gets "ctxt intr uptime" before and after the writer.
bundle() {
    python3 - "$work/bundle/config.json" "$1" <<'PY'
import json, sys
path, script = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["process"]["terminal"] = False
probe = "awk '/^ctxt/ {c=$2} /^intr/ {i=$2} END {printf \"%s %s \", c, i}' /proc/stat; cut -d' ' -f1 /proc/uptime"
spec["process"]["args"] = ["sh", "-c", f"{{ {probe}; }} >&2; {script}; {{ {probe}; }} >&2"]
json.dump(spec, open(path, "w"), indent=2)
PY
}

# Sums a counter over the monitor's --debug log: vsock packets/kicks/interrupts, vCPU exits.
counters() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def total(pattern):
    return sum(int(m) for m in re.findall(pattern, text))
exits = sum(sum(int(v) for v in re.findall(r"=(\d+)", line))
            for line in re.findall(r"exits vcpu=\d+ ([^\"]*)", text))
print(total(r"tx_packets: (\d+)"), total(r"notifications: (\d+)"),
      total(r"vsock: device closed metrics=.*?interrupts: (\d+)"), exits)
PY
}

printf '%-10s %6s %6s %6s %6s %8s %8s %8s %8s %8s %8s\n' build "s/MiB" "MiB/s" null pipe \
    ctxt/MiB intr/MiB pkts/MiB kicks/MiB irqs/MiB exits/MiB
rounds=${ROUNDS:-1}
for round in $(seq "$rounds"); do
for spec in "${builds[@]}"; do
    label=${spec%%=*}
    rest=${spec#*=}
    bin=$(realpath "${rest%%,*}")
    initramfs=""
    [[ $rest == *,* ]] && initramfs=$(realpath "${rest#*,}")
    [[ -x $bin ]] || { echo "bench: no bulkhead binary at $bin" >&2; exit 1; }
    dir="$work/$label"
    mkdir -p "$dir/logs"
    phases="idle null pipe out"
    [[ $round -eq 1 ]] && phases="warm $phases"
    {
        printf 'log_dir = "%s"\nkeep_logs = true\n' "$dir/logs"
        # Builds from before templates refuse the setting.
        "$bin" template --help >/dev/null 2>&1 && printf 'template_dir = "%s"\n' "$dir/templates"
        [[ -n $initramfs ]] && printf 'initramfs = "%s"\n' "$initramfs"
    } >"$dir/config.toml"
    declare -A vmm=() guest=()
    # warm: makes the build's template (its boot would count in the first run's counters).
    for phase in $phases; do
        case $phase in
            warm | idle) bundle ":" ;;
            null) bundle "head -c $bytes /dev/zero >/dev/null" ;;
            pipe) bundle "head -c $bytes /dev/zero | cat >/dev/null" ;;
            out) bundle "head -c $bytes /dev/zero" ;;
        esac
        id="bh-output-$label-$phase-$round-$$"
        got=$(BULKHEAD_CONFIG="$dir/config.toml" "$bin" --debug --log "$dir/$phase.log" \
            run --bundle "$work/bundle" "$id" 2>"$dir/$phase.err" | wc -c)
        [[ $phase != out || $got -eq $bytes ]] \
            || { echo "bench: $label: $got of $bytes bytes arrived" >&2; cat "$dir/$phase.err" >&2; exit 1; }
        vmm[$phase]=$(counters "$dir/$phase.log")
        guest[$phase]=$(tr '\n' ' ' <"$dir/$phase.err")
    done
    python3 - "$label" "$mib" "${vmm[idle]}" "${vmm[out]}" "${guest[null]}" "${guest[pipe]}" "${guest[out]}" <<'PY'
import sys
label, mib = sys.argv[1], float(sys.argv[2])
idle, out = ([float(x) for x in a.split()] for a in sys.argv[3:5])
gnull, gpipe, gout = ([float(x) for x in a.split()] for a in sys.argv[5:8])
def phase(g):  # ctxt, intr, seconds between the two probes
    return g[3] - g[0], g[4] - g[1], g[5] - g[2]
ctxt, intr, secs = phase(gout)
null, pipe = phase(gnull)[2], phase(gpipe)[2]
per = [(o - i) / mib for o, i in zip(out, idle)]
print(f"{label:<10} {secs / mib:6.2f} {mib / secs:6.2f} {null / mib:6.2f} {pipe / mib:6.2f} "
      f"{ctxt / mib:8.1f} {intr / mib:8.1f} {per[0]:8.1f} {per[1]:8.1f} {per[2]:8.1f} {per[3]:8.1f}")
PY
done
done
echo "(s/MiB, MiB/s: the writer to the container's stdout, read on the host; null and pipe: s/MiB of" \
     "the same writer to /dev/null and through a pipe inside the guest; ctxt and intr: the guest's" \
     "during the stdout phase; vsock packets, kicks, interrupts and vCPU exits: the VMM's for the" \
     "stdout run minus the idle run)"

#!/usr/bin/env bash
# Docker start-to-exit, idle memory and an OOM run: Bulkhead with templates, Bulkhead without
# (every VM boots) and runc, all in the same run on one dockerd (issues 5 and 10).
#
#   bench/docker-run.sh [BULKHEAD_BIN]       (default: target/release/bulkhead, else target/debug)
#   INITRAMFS=path   an agent initramfs other than the installed one (e.g. a branch's build)
#
# 0. The template is made first (`bulkhead template build`, timed): the first container of a
#    kind pays that once, every later one restores.
# 1. `docker run --rm IMG true` with runtimes runc, bulkhead (templates) and bulkhead-cold
#    (templates = false), RUNS times each (default 3), interleaved: median wall time and the
#    ratios; for both Bulkhead runtimes the median split by phase from the monitor's
#    <log_dir>/<id>.timings.json (host set-up, agent ready = VM restore or boot + agent,
#    container created, started, process exited, torn down), and restore vs boot to agent-ready.
# 2. IDLE containers (default 10) `docker run -d IMG sleep 1d` at once per runtime: host memory
#    (PSS) per container, summed over the processes in the container's host cgroup (for runc the
#    container's processes, for Bulkhead its monitor, i.e. the whole VM). Clones of a template
#    share its memory file's pages, which PSS splits among them.
# 3. OOM: `docker run --memory 32m IMG dd bs=48M count=1` per runtime: exit status (137) and wall
#    time. The tests check the same path with 16 MiB over 8 MiB; the big run lives here.
# Uses a private dockerd (own data root and socket, --iptables=false --bridge=none) and a busybox
# image built from Debian's busybox-static. Needs root, docker.io, busybox-static, python3, bc.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-}
[[ -n "$bin" ]] || for p in release debug; do [[ -x "$repo/target/$p/bulkhead" ]] && { bin="$repo/target/$p/bulkhead"; break; }; done
[[ -x "$bin" ]] || { echo "bench: no bulkhead binary (cargo build --release -p bulkhead)" >&2; exit 1; }
bin=$(realpath "$bin")
runs=${RUNS:-3}
idle=${IDLE:-10}
command -v dockerd >/dev/null || { echo "bench: install docker.io" >&2; exit 1; }

work=$(mktemp -d /tmp/bh-bench.XXXXXX)
runtimes=(runc bulkhead bulkhead-cold)
# One config and wrapper per Bulkhead runtime (engines pass no environment to runtimes).
for rt in bulkhead bulkhead-cold; do
    mkdir -p "$work/$rt/logs"
    templates=true; [[ $rt == bulkhead-cold ]] && templates=false
    printf 'log_dir = "%s"\nkeep_logs = true\ntemplates = %s\ntemplate_dir = "%s"\n' \
        "$work/$rt/logs" "$templates" "$work/templates" >"$work/$rt/config.toml"
    [[ -z ${INITRAMFS:-} ]] || printf 'initramfs = "%s"\n' "$(realpath "$INITRAMFS")" >>"$work/$rt/config.toml"
    printf '#!/bin/sh\nBULKHEAD_CONFIG=%s exec %s "$@"\n' "$work/$rt/config.toml" "$bin" >"$work/$rt/run"
    chmod +x "$work/$rt/run"
done
echo '{}' >"$work/daemon.json"
dockerd --config-file "$work/daemon.json" --data-root "$work/data" --exec-root "$work/exec" \
    -H "unix://$work/docker.sock" --pidfile "$work/docker.pid" --iptables=false --ip-masq=false \
    --bridge=none --containerd-namespace bhbench --containerd-plugins-namespace bhbenchp \
    --add-runtime "bulkhead=$work/bulkhead/run" --add-runtime "bulkhead-cold=$work/bulkhead-cold/run" \
    >"$work/dockerd.log" 2>&1 &
dpid=$!
cleanup() {
    docker_ rm -f $(docker_ ps -aq) >/dev/null 2>&1 || true
    kill "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true
    rmdir /run/containerd/runc/bhbench 2>/dev/null || true
    rm -rf "$work"
}
docker_() { DOCKER_HOST="unix://$work/docker.sock" /usr/bin/docker "$@"; }
trap cleanup EXIT
for _ in $(seq 100); do docker_ info >/dev/null 2>&1 && break; sleep 0.2; done

rootfs="$work/busybox"
"$repo/images/busybox-rootfs.sh" "$rootfs"
tar -C "$rootfs" -cf "$work/busybox.tar" . && docker_ import -c 'ENV PATH=/bin' "$work/busybox.tar" bench:busybox >/dev/null

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s.%N)
"$work/bulkhead/run" template build >/dev/null
echo "template made in $(echo "$(date +%s.%N) - $t0" | bc) s"

declare -A times median
for i in $(seq "$runs"); do
    for rt in "${runtimes[@]}"; do
        t0=$(date +%s.%N)
        if ! err=$(docker_ run --rm --runtime "$rt" bench:busybox true 2>&1); then
            echo "bench: $rt cannot run a container here: $err"; exit 1
        fi
        times[$rt]+="$(echo "$(date +%s.%N) - $t0" | bc) "
    done
done
for rt in "${runtimes[@]}"; do
    median[$rt]=$(printf '%s\n' ${times[$rt]} | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
    echo "docker run --rm true, $rt: runs ${times[$rt]}s, median ${median[$rt]} s"
done
echo "ratio bulkhead/runc: $(echo "scale=1; ${median[bulkhead]} / ${median[runc]}" | bc)," \
    "bulkhead-cold/runc: $(echo "scale=1; ${median[bulkhead-cold]} / ${median[runc]}" | bc)," \
    "speed-up from templates: $(echo "scale=1; ${median[bulkhead-cold]} / ${median[bulkhead]}" | bc)x"
python3 - "$work/bulkhead/logs" "$work/bulkhead-cold/logs" <<'PY'
import glob, json, statistics, sys
phases = ["host_ready", "agent_ready", "created", "started", "exited", "torn_down"]
ready = {}
for name, logdir in zip(["bulkhead", "bulkhead-cold"], sys.argv[1:]):
    rows = [json.load(open(f)) for f in glob.glob(logdir + "/*.timings.json")]
    print(f"{name}: median phase ends over {len(rows)} runs (seconds since the monitor started)")
    prev = 0.0
    for p in phases:
        at = statistics.median(r.get(p, 0.0) for r in rows)
        print(f"  {p:<12} at {at:7.3f} s  (+{at - prev:6.3f} s)")
        prev = at
    ready[name] = statistics.median(r["agent_ready"] - r["host_ready"] for r in rows)
share = 100 * ready["bulkhead"] / ready["bulkhead-cold"]
print(f"to agent-ready after host set-up: restore {ready['bulkhead']:.3f} s, boot "
      f"{ready['bulkhead-cold']:.3f} s: restore is {share:.1f} % of a boot")
PY

pss_of_cgroup() { # sum of Pss (kB) over the processes of a memory cgroup
    local total=0
    for p in $(cat "$1/cgroup.procs" 2>/dev/null); do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
for rt in "${runtimes[@]}"; do
    ids=()
    for i in $(seq "$idle"); do ids+=("$(docker_ run -d --runtime "$rt" bench:busybox sleep 1d)"); done
    # Idle means every container is running its sleep; then the guests settle.
    for id in "${ids[@]}"; do
        until [[ $(docker_ inspect -f '{{.State.Running}}' "$id") == true ]]; do sleep 0.2; done
    done
    sleep 5
    total=0
    for id in "${ids[@]}"; do
        cg=/sys/fs/cgroup/memory/docker/$id; [[ -d $cg ]] || cg=/sys/fs/cgroup/docker/$id
        total=$((total + $(pss_of_cgroup "$cg")))
    done
    echo "$idle idle containers, $rt: PSS per container $((total / idle)) kB"
    # One at a time: ten micro-VMs ending at once on two cores take longer than the 10 s dockerd
    # waits for an exit after SIGKILL (it then kills the monitor itself and reports a zombie).
    for id in "${ids[@]}"; do docker_ rm -f "$id" >/dev/null; done
done

for rt in "${runtimes[@]}"; do
    t0=$(date +%s.%N)
    code=0
    docker_ run --rm --runtime "$rt" --memory 32m bench:busybox \
        dd if=/dev/zero of=/dev/null bs=48M count=1 >/dev/null 2>&1 || code=$?
    echo "48 MiB read buffer under --memory 32m, $rt: exit $code (137: OOM kill)" \
        "after $(echo "$(date +%s.%N) - $t0" | bc) s"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

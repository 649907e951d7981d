#!/usr/bin/env bash
# Docker start-to-exit and idle memory, Bulkhead against runc in the same run (issue 5).
#
#   bench/docker-run.sh [BULKHEAD_BIN]       (default: target/release/bulkhead, else target/debug)
#
# 1. `docker run --rm IMG true` with --runtime runc and --runtime bulkhead, RUNS times each
#    (default 3): median wall time and the ratio; for Bulkhead also the median split by phase
#    from the monitor's <log_dir>/<id>.timings.json (host set-up, agent ready = VM boot + agent,
#    container created, process exited, torn down).
# 2. IDLE containers (default 10) `docker run -d IMG sleep 1d` at once per runtime: host memory
#    (PSS) per container, summed over the processes in the container's host cgroup (for runc the
#    container's processes, for Bulkhead its monitor, i.e. the whole VM).
# 3. OOM: `docker run --memory 32m IMG dd bs=48M count=1` per runtime: exit status (137) and wall
#    time. The tests check the same path with 16 MiB over 8 MiB; the big run lives here.
# Uses a private dockerd (own data root and socket, --iptables=false --bridge=none) and a busybox
# image built from Debian's busybox-static. Needs root, docker.io, busybox-static, python3.
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
logdir="$work/logs"; mkdir -p "$logdir"
printf 'log_dir = "%s"\nkeep_logs = true\n' "$logdir" >"$work/config.toml"
printf '#!/bin/sh\nBULKHEAD_CONFIG=%s exec %s "$@"\n' "$work/config.toml" "$bin" >"$work/bulkhead"
chmod +x "$work/bulkhead"
echo '{}' >"$work/daemon.json"
dockerd --config-file "$work/daemon.json" --data-root "$work/data" --exec-root "$work/exec" \
    -H "unix://$work/docker.sock" --pidfile "$work/docker.pid" --iptables=false --ip-masq=false \
    --bridge=none --containerd-namespace bhbench --containerd-plugins-namespace bhbenchp \
    --add-runtime "bulkhead=$work/bulkhead" >"$work/dockerd.log" 2>&1 &
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

rootfs="$work/busybox"; mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev}
cp /bin/busybox "$rootfs/bin/"
for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -s busybox "$rootfs/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
tar -C "$rootfs" -cf "$work/busybox.tar" . && docker_ import -c 'ENV PATH=/bin' "$work/busybox.tar" bench:busybox >/dev/null

declare -A median
for rt in runc bulkhead; do
    times=()
    for i in $(seq "$runs"); do
        cid="$work/cid-$rt-$i"
        t0=$(date +%s.%N)
        if ! err=$(docker_ run --rm --cidfile "$cid" --runtime "$rt" bench:busybox true 2>&1); then
            echo "bench: $rt cannot run a container here: $err"
            continue 2
        fi
        times+=("$(echo "$(date +%s.%N) - $t0" | bc)")
    done
    median[$rt]=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
    echo "docker run --rm true, $rt: runs ${times[*]} s, median ${median[$rt]} s"
done
if [[ -n "${median[bulkhead]:-}" ]]; then
    echo "ratio bulkhead/runc: $(echo "scale=1; ${median[bulkhead]} / ${median[runc]}" | bc)"
    python3 - "$logdir" <<'PY'
import glob, json, statistics, sys
rows = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/*.timings.json")]
phases = ["host_ready", "agent_ready", "created", "started", "exited", "torn_down"]
prev = 0.0
for p in phases:
    at = statistics.median(r.get(p, 0.0) for r in rows)
    print(f"  {p:<12} at {at:7.2f} s  (+{at - prev:6.2f} s)")
    prev = at
PY
fi

pss_of_cgroup() { # sum of Pss (kB) over the processes of a memory cgroup
    local total=0
    for p in $(cat "$1/cgroup.procs" 2>/dev/null); do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
for rt in runc bulkhead; do
    [[ -n "${median[$rt]:-}" ]] || continue
    ids=()
    for i in $(seq "$idle"); do ids+=("$(docker_ run -d --runtime "$rt" bench:busybox sleep 1d)"); done
    sleep 5
    total=0
    for id in "${ids[@]}"; do
        cg=/sys/fs/cgroup/memory/docker/$id; [[ -d $cg ]] || cg=/sys/fs/cgroup/docker/$id
        total=$((total + $(pss_of_cgroup "$cg")))
    done
    echo "$idle idle containers, $rt: PSS per container $((total / idle)) kB"
    docker_ rm -f "${ids[@]}" >/dev/null
done

for rt in runc bulkhead; do
    [[ -n "${median[$rt]:-}" ]] || continue
    t0=$(date +%s.%N)
    code=0
    docker_ run --rm --runtime "$rt" --memory 32m bench:busybox \
        dd if=/dev/zero of=/dev/null bs=48M count=1 >/dev/null 2>&1 || code=$?
    echo "48 MiB read buffer under --memory 32m, $rt: exit $code (137: OOM kill)" \
        "after $(echo "$(date +%s.%N) - $t0" | bc) s"
done

#!/usr/bin/env bash
# Network through Docker's published port: Bulkhead against runc on one dockerd, in the same run
# (issue 12).
#
#   bench/network.sh [BULKHEAD_BIN]     (default: target/release/bulkhead, else target/debug)
#   MIB=8      size of each bulk transfer
#   REQS=200   small HTTP requests for the latency figure
#   RUNS=2     bulk transfers per direction and runtime (the best is kept)
#
# Per runtime, one container `docker run -d -p PORT:80 --tmpfs /www:exec` serving busybox httpd
# from a tmpfs (so the guest's file system is not part of the figure), then from the host side
# of the published port (a Python client, the same for both runtimes):
#   - container → host: GET of an MIB file, MiB/s;
#   - host → container: POST of MIB to a CGI that reads it all before it answers, MiB/s;
#   - latency: REQS GETs of a small page, one connection each (busybox httpd closes), median
#     and p99 in ms;
# and the ratios Bulkhead/runc. The device's own counts per MiB (frames, kicks, interrupts) come
# from `cargo test -p bulkhead-tests --test vmm_net` (see docs/DESIGN-NOTES.md, virtio-net).
# dockerd runs with its default bridge and NAT inside a network namespace made here: no packet
# leaves it and the containers' own. Needs root, docker.io, busybox-static, python3.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-}
[[ -n "$bin" ]] || for p in release debug; do [[ -x "$repo/target/$p/bulkhead" ]] && { bin="$repo/target/$p/bulkhead"; break; }; done
[[ -x "$bin" ]] || { echo "bench: no bulkhead binary (cargo build --release -p bulkhead)" >&2; exit 1; }
bin=$(realpath "$bin")
mib=${MIB:-8}
reqs=${REQS:-200}
runs=${RUNS:-2}
command -v dockerd >/dev/null || { echo "bench: install docker.io" >&2; exit 1; }

work=$(mktemp -d /tmp/bh-netbench.XXXXXX)
ns=bhnetbench$$
ip netns add "$ns"
ip -n "$ns" link set lo up
export DOCKER_HOST="unix://$work/docker.sock"
dockerd_pid=
cleanup() {
    docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
    [[ -n $dockerd_pid ]] && kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
    # dockerd leaves its namespaces' bind mounts in its exec root.
    for m in "$work"/exec/netns/*; do [[ -e $m ]] && umount -l "$m" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/logs"
printf 'log_dir = "%s"\nkeep_logs = true\n' "$work/logs" >"$work/config.toml"
printf '#!/bin/sh\nBULKHEAD_CONFIG=%s exec %s "$@"\n' "$work/config.toml" "$bin" >"$work/bulkhead"
chmod 755 "$work/bulkhead"
echo '{}' >"$work/daemon.json"
# `nsenter --net` only: dockerd's mounts must stay visible to the runtimes its containerd starts.
nsenter --net="/run/netns/$ns" dockerd --config-file "$work/daemon.json" --data-root "$work/data" \
    --exec-root "$work/exec" -H "$DOCKER_HOST" --pidfile "$work/docker.pid" \
    --containerd-namespace "bhnb$$" --containerd-plugins-namespace "bhnb$$p" \
    --add-runtime "bulkhead=$work/bulkhead" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
docker info >/dev/null || { echo "bench: dockerd did not start" >&2; tail "$work/dockerd.log" >&2; exit 1; }

# The image: busybox with its applets.
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,www}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "$root/bin/$a"; done
tar -C "$root" -c . | docker import -c "ENV PATH=/bin" - bh-netbench:img >/dev/null

server='dd if=/dev/zero of=/www/big bs=1M count='"$mib"' 2>/dev/null
echo hello > /www/index.html
mkdir -p /www/cgi-bin
printf "#!/bin/sh\ncat >/dev/null\nprintf \"Content-Type: text/plain\\r\\n\\r\\nok\\n\"\n" > /www/cgi-bin/up
chmod 755 /www/cgi-bin/up
exec httpd -f -p 80 -h /www'

client=$(cat <<'PY'
import http.client, json, statistics, sys, time
port, mib, reqs, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def conn():
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)
deadline = time.time() + 600
while True:
    try:
        c = conn(); c.request("GET", "/"); r = c.getresponse(); r.read(); c.close()
        if r.status == 200: break
    except OSError:
        pass
    if time.time() > deadline: sys.exit("server did not answer")
    time.sleep(0.3)
lat = []
for _ in range(reqs):
    t = time.perf_counter(); c = conn(); c.request("GET", "/"); r = c.getresponse(); r.read(); c.close()
    lat.append((time.perf_counter() - t) * 1000)
down = up = 0.0
body = b"\0" * (mib << 20)
for _ in range(runs):
    t = time.perf_counter(); c = conn(); c.request("GET", "/big"); n = len(c.getresponse().read()); c.close()
    assert n == mib << 20, n
    down = max(down, mib / (time.perf_counter() - t))
    t = time.perf_counter(); c = conn(); c.request("POST", "/cgi-bin/up", body=body); r = c.getresponse(); r.read(); c.close()
    assert r.status == 200, r.status
    up = max(up, mib / (time.perf_counter() - t))
lat.sort()
print(json.dumps({"down": down, "up": up, "median_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99) - 1]}))
PY
)

declare -A result
port=18090
for rt in runc bulkhead; do
    port=$((port + 1))
    id=$(docker run -d --runtime "$rt" -p "$port:80" --tmpfs /www:exec,size=256m bh-netbench:img sh -c "$server")
    result[$rt]=$(nsenter --net="/run/netns/$ns" python3 -c "$client" "$port" "$mib" "$reqs" "$runs")
    docker rm -f "$id" >/dev/null
    echo "$rt: ${result[$rt]}"
done

python3 - "${result[runc]}" "${result[bulkhead]}" "$mib" "$reqs" "$work/logs" <<'PY'
import glob, json, sys
runc, bh = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"\n{sys.argv[3]} MiB transfers, {sys.argv[4]} small requests, through the published port")
print(f"{'':28}{'runc':>12}{'bulkhead':>12}{'ratio':>10}")
rows = [("container -> host MiB/s", "down", True), ("host -> container MiB/s", "up", True),
        ("request median ms", "median_ms", False), ("request p99 ms", "p99_ms", False)]
for name, k, higher_better in rows:
    ratio = runc[k] / bh[k] if higher_better else bh[k] / runc[k]
    print(f"{name:28}{runc[k]:12.2f}{bh[k]:12.2f}{ratio:9.1f}x")
print("(ratio: how many times slower Bulkhead is)")
# The NIC's counters, written by the monitor with its timings (keep_logs).
for f in glob.glob(sys.argv[5] + "/*.timings.json"):
    nic = json.load(open(f)).get("net.eth0")
    if not nic:
        continue
    mib = (nic["rx_bytes"] + nic["tx_bytes"]) / (1 << 20)
    print(f"\nBulkhead NIC over the whole run ({mib:.1f} MiB both ways), per MiB: "
          f"frames {(nic['rx_packets'] + nic['tx_packets']) / mib:.0f} "
          f"(rx {nic['rx_packets'] / mib:.0f}, tx {nic['tx_packets'] / mib:.0f}), "
          f"queue kicks {nic['kicks'] / mib:.0f}, interrupts {nic['interrupts'] / mib:.0f}, "
          f"dropped {nic['dropped']}")
PY

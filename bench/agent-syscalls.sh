#!/usr/bin/env bash
# Counts the guest agent's syscalls per process start: runs `bulkhead-agent --listen-unix` on the
# host under `strace -f`, drives N process lives (create, attach streams, start, wait, remove)
# through the real client with agent-bench, and subtracts a run with none. Counted: every agent
# thread, plus each spawned child up to and including its execve (what the agent's vfork child
# does); the program's own syscalls after exec are not the agent's and are left out.
#
#   bench/agent-syscalls.sh [N] [STREAMS]     N default 20; STREAMS none|out|all|tty (default out)
#
# Needs: strace, python3; builds bulkhead-agent and agent-bench (release).
set -euo pipefail

n=${1:-20}
streams=${2:-out}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --quiet --release -p bulkhead-agent -p bulkhead-bench --manifest-path "$repo/Cargo.toml"
agent="$target/release/bulkhead-agent"
bench="$target/release/agent-bench"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Traces one agent run with `starts` process starts; prints the counted syscalls as JSON.
trace() {
    local starts=$1 sock="$work/sock-$1" out="$work/trace-$1"
    mkdir -p "$sock"
    strace -f -qq -o "$out" "$agent" --listen-unix "$sock" 2>/dev/null &
    local tracer=$!
    for _ in $(seq 100); do [[ -S "$sock/1024" ]] && break; sleep 0.1; done
    "$bench" --unix "$sock" --starts-only --starts "$starts" --streams "$streams" >/dev/null
    pkill -TERM -f -- "--listen-unix $sock" || true
    wait "$tracer" || true
    python3 - "$out" <<'PY'
import json, re, sys
from collections import Counter

lines = open(sys.argv[1]).read().splitlines()
agent = int(lines[0].split()[0])
threads = {agent}
done = set()  # children that have exec'd
counts = Counter()
for line in lines:
    m = re.match(r"(\d+)\s+(.*)", line)
    if not m:
        continue
    pid, rest = int(m.group(1)), m.group(2)
    if rest.startswith(("---", "+++")) or "resumed>" in rest:
        continue
    name = re.match(r"(\w+)\(", rest)
    if not name:
        continue
    name = name.group(1)
    if pid in done:
        continue
    if pid in threads:
        counts["agent:" + name] += 1
        t = re.search(r"CLONE_THREAD.*= (\d+)$", rest)
        if name.startswith("clone") and t:
            threads.add(int(t.group(1)))
    else:
        counts["child:" + name] += 1
        if name == "execve" and re.search(r"= 0$", rest):
            done.add(pid)
        if name == "execve" and "unfinished" in rest:
            done.add(pid)
print(json.dumps(counts))
PY
}

base=$(trace 0)
with=$(trace "$n")
python3 - "$base" "$with" "$n" "$streams" <<'PY'
import json, sys
base, runs, n, streams = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
diff = {k: (runs.get(k, 0) - base.get(k, 0)) / n for k in set(base) | set(runs)}
diff = {k: v for k, v in diff.items() if abs(v) >= 0.05}
agent = sum(v for k, v in diff.items() if k.startswith("agent:"))
child = sum(v for k, v in diff.items() if k.startswith("child:"))
print(f"syscalls per process start ({streams} streams, {n} starts): "
      f"{agent + child:.1f} = agent {agent:.1f} + vfork child before exec {child:.1f}")
for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
    print(f"  {k:28} {v:6.2f}")
PY

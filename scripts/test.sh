#!/usr/bin/env bash
# Bulkhead's one test command (CI runs exactly this through .ci/run).
#
#   scripts/test.sh
#
# 1. scripts/setup.sh --no-demo: packages, guest kernel (cached), images, binaries installed;
# 2. formatting;
# 3. every test binary built once (cargo test --no-run), linted on the way (clippy's lints,
#    -D warnings: see "Lints" below), and what end-to-end tests would otherwise build while
#    they run (the agent and virtio-fs test initramfs images): the suites then run as plain
#    processes, never waiting on cargo's lock;
# 4. unit tests of every crate, with BULKHEAD_E2E=1 so that a test whose prerequisite is missing
#    (root, /dev/kvm, /dev/fuse, a cgroup controller…) fails instead of skipping;
# 5. end-to-end suites (BULKHEAD_E2E=1), each its own process, two at a time: a guest boot takes
#    ~30 s of one core on PVM-backed KVM (see shared/PVM.md) and the machine has two. Each
#    suite's output goes to a log that is printed when the suite fails; each suite's wall time
#    is printed, and the total;
# 6. every fuzz target (scripts/fuzz.sh: vmm/fuzz, protocol/fuzz) briefly, after the end-to-end
#    suites: its unoptimised nightly sanitizer build (--dev: ~2 min on a fresh clone, in
#    target/fuzz), then BULKHEAD_FUZZ_SECONDS (default 15) per target, two at a time (one
#    libFuzzer process takes a core); a crash fails the run, a missing nightly toolchain or
#    cargo-fuzz too (setup.sh installs them);
# 7. no silent skips: a skip line (bulkhead-test-skip: anywhere in a line, or a "skipped"
#    note) or an ignored test in any log fails the run.
#
# BULKHEAD_TEST_JOBS sets how many end-to-end suites run at once (default 2).
# BULKHEAD_FUZZ_SECONDS sets how long each fuzz target runs (default 15).
set -euo pipefail

die() { echo "test: $*" >&2; exit 1; }
note() { echo "test: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
target=$CARGO_TARGET_DIR
logs="$target/test-logs"
jobs=${BULKHEAD_TEST_JOBS:-2}
fuzz_seconds=${BULKHEAD_FUZZ_SECONDS:-15}
started=$SECONDS

# Longest first, so the two lanes end together; suites not named here run after these.
order=(template_vm podman_run hostile_vm docker_run container_vm monitor_vm vmm_net
    docker_network podman_network vmm_boot virtiofs_e2e agent_vm vmm_snapshot shim_cli ctr_run vmm_vsock
    network_vm shim_vm agent_unix shim_agent shim_process shim_lifecycle vmm_errors
    virtiofs_errors shim_register)

phase() { # name start-seconds
    note "$1: $(( SECONDS - $2 )) s"
}

t=$SECONDS
"$repo/scripts/setup.sh" --no-demo || die "setup failed"
phase "setup" "$t"

t=$SECONDS
note "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted (run: cargo fmt --all)"
phase "formatting" "$t"

# Lints: clippy-driver is rustc with clippy's lints, which is how `cargo clippy` runs; as the
# wrapper of the workspace's own crates (not the dependencies) it lints them while it builds
# the test binaries, with warnings as errors, instead of a second whole build in check mode
# (~50 s here). Every cargo call that builds workspace crates below gets the same two
# settings, or it would rebuild them. Locally, `cargo clippy --workspace --all-targets -- -D
# warnings` is the same check.
clippy_driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver) \
    || die "clippy-driver not found (rustup component add clippy)"
lint() { RUSTC_WORKSPACE_WRAPPER="$clippy_driver" RUSTFLAGS="${RUSTFLAGS:-} -D warnings" "$@"; }

# ---- build once -------------------------------------------------------------------------
t=$SECONDS
# The engines the suites drive, installed now: suites running side by side must not both
# wait on dpkg's lock (their own install step is then a no-op).
install_engine() { # apt-get arguments, as the suite's own install step would give them
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
        || { apt-get update -q >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
        || die "apt-get install $* failed"
}
if ! [[ -x /usr/sbin/dockerd && -x /usr/bin/docker && -x /usr/bin/ctr ]]; then
    note "installing docker.io (Docker and containerd suites)"
    install_engine --no-install-recommends docker.io
fi
if ! [[ -x /usr/bin/podman && -x /usr/sbin/runc ]]; then
    note "installing podman (podman suite)"
    install_engine podman runc
fi
rm -rf "$logs" && mkdir -p "$logs"
# The test images build beside the test binaries (their guest profile's last step is one long
# single-threaded link; another profile, so neither waits on the other's build directory lock).
note "building every test binary and the test initramfs images"
(
    set -euo pipefail
    "$repo/images/build-agent-initramfs.sh" --test | tail -n 1 >"$logs/agent-test-initramfs.path"
    "$repo/images/build-fs-test-initramfs.sh" | tail -n 1 >"$logs/fs-test-initramfs.path"
) 2>"$logs/images.out" &
images_pid=$!
if ! lint cargo test --locked --workspace --no-run --message-format=json-render-diagnostics \
    >"$logs/build.json"; then
    wait "$images_pid" || true
    die "building the tests failed, or clippy found problems (its lines are above)"
fi
wait "$images_pid" || { cat "$logs/images.out" >&2; die "building the test initramfs images failed"; }
BULKHEAD_AGENT_TEST_INITRAMFS=$(cat "$logs/agent-test-initramfs.path")
BULKHEAD_FS_TEST_INITRAMFS=$(cat "$logs/fs-test-initramfs.path")
# The agent the guest runs (static, built by setup.sh for the initramfs) is the one the
# --listen-unix suites drive too: what ships is what is tested, and a debug build of its own
# would rebuild the agent's dependencies with other features (~35 s).
export BULKHEAD_AGENT_BIN="$target/x86_64-unknown-linux-gnu/guest/bulkhead-agent"
[[ -x "$BULKHEAD_AGENT_BIN" ]] || die "the agent build is missing: $BULKHEAD_AGENT_BIN"
export BULKHEAD_AGENT_TEST_INITRAMFS BULKHEAD_FS_TEST_INITRAMFS
# What setup.sh built and installed: the binaries the engines and the CLI suites run.
export BULKHEAD_BULKHEAD_BIN="$target/release/bulkhead"
export BULKHEAD_BULKHEAD_VMM_BIN="$target/release/bulkhead-vmm"
export BULKHEAD_CONTAINERD_SHIM_BULKHEAD_V2_BIN="$target/release/containerd-shim-bulkhead-v2"
# name<TAB>executable of every test binary of the end-to-end package (bulkhead-tests).
python3 - "$logs/build.json" >"$logs/suites.tsv" <<'PY' || die "cannot list the test binaries"
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    pid = m["package_id"]
    if not m["profile"]["test"] or not ("#bulkhead-tests@" in pid or pid.startswith("bulkhead-tests ")):
        continue
    name = m["target"]["name"]
    print(f"{'bulkhead_tests' if 'lib' in m['target']['kind'] else name}\t{m['executable']}")
PY
[[ -s "$logs/suites.tsv" ]] || die "no end-to-end test binary was built"
phase "build" "$t"

# ---- unit tests ---------------------------------------------------------------------------
t=$SECONDS
unit_args=(--show-output)
# The guest agent's cgroup code is cgroup v2 only, and a host whose memory controller is in a
# cgroup v1 hierarchy (this CI's kind) cannot give it one: that one test cannot run here. Its
# path runs for real in the guest (tests/container_vm.rs and the engine suites' OOM cases).
v2_mount=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/self/mounts)
v2_group=$(sed -n 's/^0:://p' /proc/self/cgroup)
if ! grep -qw memory "${v2_mount:-/nonexistent}${v2_group}/cgroup.controllers" 2>/dev/null; then
    exempt=container::tests::lifecycle::memory_limit_oom_kills
    note "not run on this host: $exempt (its cgroup v2 has no memory controller)"
    unit_args+=(--skip "$exempt")
fi
note "unit tests (BULKHEAD_E2E=1: a missing prerequisite fails)"
# --lib --bins and --doc select the unit tests without changing the workspace's features (an
# --exclude would, and rebuild half of it): the build above made them all.
if ! { lint env BULKHEAD_E2E=1 cargo test --locked --workspace --lib --bins -- "${unit_args[@]}" \
    && lint cargo test --locked --workspace --doc; } >"$logs/unit.log" 2>&1; then
    cat "$logs/unit.log" >&2
    die "unit tests failed (log: $logs/unit.log)"
fi
phase "unit tests" "$t"

# ---- end-to-end suites, two at a time ------------------------------------------------------
declare -A exe
while IFS=$'\t' read -r name path; do exe[$name]=$path; done <"$logs/suites.tsv"
queue=()
for name in "${order[@]}"; do [[ -n "${exe[$name]:-}" ]] && queue+=("$name"); done
for name in $(cut -f1 "$logs/suites.tsv" | sort); do
    [[ " ${queue[*]} " == *" $name "* ]] || queue+=("$name")
done

# Runs one suite into its log; records "<exit status> <seconds>" in <name>.status.
run_suite() {
    local name=$1 t0=$SECONDS rc=0
    # cwd as cargo gives it; the timeout only stops a hung suite.
    (cd "$repo/tests" && BULKHEAD_E2E=1 timeout --kill-after=60 3000 "${exe[$name]}" \
        --test-threads=1) >"$logs/$name.log" 2>&1 || rc=$?
    echo "$rc $(( SECONDS - t0 ))" >"$logs/$name.status"
    local result
    result=$(grep -h '^test result:' "$logs/$name.log" | tail -n 1 || true)
    if [[ $rc -eq 0 ]]; then
        note "$name: ok in $(( SECONDS - t0 )) s (${result#test result: })"
    else
        note "$name: FAILED (exit $rc) in $(( SECONDS - t0 )) s; its log:"
        sed "s/^/  $name| /" "$logs/$name.log" >&2
    fi
}

t=$SECONDS
note "end-to-end suites, $jobs at a time (real VMs; minutes): ${queue[*]}"
running=0
for name in "${queue[@]}"; do
    if (( running >= jobs )); then
        wait -n || true
        running=$(( running - 1 ))
    fi
    run_suite "$name" &
    running=$(( running + 1 ))
done
wait
phase "end-to-end suites" "$t"

# ---- fuzz targets, briefly --------------------------------------------------------------------
# After the suites, alone: each libFuzzer process takes a core, and so does their build. (Built
# at nice 19 beside the suites, it slowed the suites it overlapped by a third, more than the
# ~2 min it saved: the emulated guests share the cores' caches and execution units with it.)
# Its output goes to target/fuzz/logs, not to $logs (whose logs the skip check reads).
t=$SECONDS
note "fuzz targets, $fuzz_seconds s each, two at a time (scripts/fuzz.sh)"
fuzz_rc=0
"$repo/scripts/fuzz.sh" --dev --jobs 2 --time "$fuzz_seconds" || fuzz_rc=$?
phase "fuzzing" "$t"

# ---- verdict --------------------------------------------------------------------------------
failed=()
note "suite times:"
for name in "${queue[@]}"; do
    read -r rc secs <"$logs/$name.status" || { rc=missing; secs=0; }
    printf 'test:   %-16s %5s s  %s\n' "$name" "$secs" "$([[ $rc == 0 ]] && echo ok || echo "FAILED ($rc)")" >&2
    [[ $rc == 0 ]] || failed+=("$name")
done
# The engine suites print each trial's wall time: the slowest show where a run's time went.
note "slowest trials:"
grep -H -o 'trial [^ ]*: [0-9.]* s$' "$logs"/*.log 2>/dev/null | sed -E 's|^.*/([^/]+)\.log:trial |\1 |' |
    awk '{print $(NF-1), $0}' | sort -g -r | cut -d' ' -f2- | head -n 15 | sed 's/^/test:   /' >&2 || true
# The default template store the engine suites share: a `<key>.silent` there is a template
# whose clone did not answer (see DESIGN-NOTES, "A clone that never answers").
note "templates the engine suites left ($target/release/bulkhead template ls):"
"$target/release/bulkhead" template ls 2>&1 | sed 's/^/test:   /' >&2 || true
[[ ${#failed[@]} -eq 0 ]] || die "end-to-end suites failed: ${failed[*]} (logs: $logs)"
[[ $fuzz_rc -eq 0 ]] || die "fuzzing failed (its lines above; inputs and logs: $target/fuzz)"

# A skip line, an old-style "skipped" note or an ignored test means a check did not run.
skips=$(grep -HiE -e 'bulkhead-test-skip:' -e '(^|: )skipped\b' "$logs"/*.log || true)
ignored=$(grep -H -E '^test result: .* [1-9][0-9]* ignored' "$logs"/*.log || true)
if [[ -n "$skips$ignored" ]]; then
    printf '%s\n' "$skips" "$ignored" | sed '/^$/d' >&2
    die "tests were skipped or ignored although every test was asked for"
fi

passed=0 fails=0
while read -r p f; do passed=$(( passed + p )); fails=$(( fails + f )); done < <(
    grep -h '^test result:' "$logs"/*.log |
        sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/')
note "all tests passed in $(( SECONDS - started )) s"
echo "test: $passed passed, $fails failed"

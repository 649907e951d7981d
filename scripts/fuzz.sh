#!/usr/bin/env bash
# Runs Bulkhead's fuzz targets (cargo-fuzz/libFuzzer), each for a fixed time, one after another
# or --jobs at a time.
#
#   scripts/fuzz.sh [--time SECONDS] [--jobs N] [--dev] [TARGET...]
#
# Without TARGETs: every target of every fuzz crate (each directory whose Cargo.toml says
# `cargo-fuzz = true`: vmm/fuzz, protocol/fuzz), each for SECONDS (default 60).
# scripts/test.sh runs it for a short while (--dev, BULKHEAD_FUZZ_SECONDS, default 15); longer runs
# are the point: `scripts/fuzz.sh --time 600`.
#
# 1. needs the nightly toolchain and cargo-fuzz (scripts/setup.sh installs both); the
#    virtiofs_request target needs root (its device confines itself; its share is a tmpfs in a
#    private mount namespace);
# 2. builds each fuzz crate that has a chosen target (`cargo +nightly fuzz build`: release,
#    debug assertions, AddressSanitizer) into $CARGO_TARGET_DIR/fuzz/build; with --dev
#    unoptimised instead (a third of the build time on a fresh clone, slower runs: what
#    test.sh's short runs want);
# 3. runs each target's binary in one libFuzzer process (no -jobs/-workers: libFuzzer's default
#    is one process with one fuzzing thread, and any -jobs value would fork a child writing
#    its output to fuzz-N.log instead), N targets at once with --jobs N (default 1: one
#    libFuzzer process takes a core), with the target's -max_len, from a corpus kept between
#    runs in $CARGO_TARGET_DIR/fuzz/corpus/TARGET, into which the committed seeds
#    (<crate>/seeds/TARGET/) are copied first: no corpus, input or log in the source tree;
# 4. prints one line per target: executions, executions per second, coverage, corpus entries
#    (libFuzzer's, and the files in the directory), seconds, and ok or what it found. A crash,
#    leak, timeout or out-of-memory input is written to $CARGO_TARGET_DIR/fuzz/artifacts/TARGET/,
#    the target's libFuzzer output to $CARGO_TARGET_DIR/fuzz/logs/TARGET.log; the script goes on
#    with the next target and exits non-zero at the end, naming each input it found.
set -euo pipefail

die() { echo "fuzz: $*" >&2; exit 1; }
note() { echo "fuzz: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Per-target libFuzzer settings (the lengths the targets' inputs are designed for).
declare -A max_len=([vsock_tx]=4096 [net_tx]=4096 [virtiofs_request]=8192 [snapshot_state]=65536)
declare -A needs_root=([virtiofs_request]=1)
# An input that runs this long is a hang (libFuzzer's default is 20 minutes).
input_timeout=60

seconds=60
jobs=1
profile=release
build_flags=()
chosen=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --time) [[ $# -ge 2 ]] || die "--time needs a number of seconds"; seconds=$2; shift 2 ;;
        --time=*) seconds=${1#--time=}; shift ;;
        --dev) profile=debug; build_flags=(--dev); shift ;;
        --jobs) [[ $# -ge 2 ]] || die "--jobs needs a number"; jobs=$2; shift 2 ;;
        --jobs=*) jobs=${1#--jobs=}; shift ;;
        -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (try --help)" ;;
        *) chosen+=("$1"); shift ;;
    esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--time wants a whole number of seconds, not '$seconds'"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs wants a whole number of targets, not '$jobs'"

# ---- tools -----------------------------------------------------------------------------------
command -v rustup >/dev/null \
    || die "rustup is missing: cargo-fuzz needs the nightly toolchain through rustup (https://rustup.rs)"
export RUSTUP_AUTO_INSTALL=0 # a missing toolchain is reported below, not fetched silently
toolchains=$(rustup toolchain list 2>/dev/null || true)
grep -q '^nightly' <<<"$toolchains" \
    || die "the nightly toolchain is missing (install it: rustup toolchain install nightly --profile minimal; scripts/setup.sh does)"
cargo +nightly fuzz --version >/dev/null 2>&1 \
    || die "cargo-fuzz is missing (install it: cargo install cargo-fuzz --locked; scripts/setup.sh does)"
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
[[ -n "$host" ]] || die "cannot tell the nightly toolchain's host triple (rustc +nightly -vV)"

# ---- targets ---------------------------------------------------------------------------------
declare -A crate_of # target -> fuzz crate directory (relative to the repository)
targets=()
while IFS= read -r manifest; do
    grep -q '^cargo-fuzz *= *true' "$manifest" || continue
    crate=$(dirname "${manifest#"$repo"/}")
    list=$(cargo +nightly fuzz list --fuzz-dir "$repo/$crate") || die "cargo fuzz list failed in $crate"
    for t in $list; do
        [[ -z "${crate_of[$t]:-}" ]] || die "fuzz target $t is in both ${crate_of[$t]} and $crate"
        crate_of[$t]=$crate
        targets+=("$t")
    done
done < <(find "$repo" -name target -prune -o -name .git -prune -o -name Cargo.toml -path '*/fuzz/Cargo.toml' -print | sort)
[[ ${#targets[@]} -gt 0 ]] || die "no fuzz crate found (a */fuzz/Cargo.toml with cargo-fuzz = true)"

if [[ ${#chosen[@]} -eq 0 ]]; then
    chosen=("${targets[@]}")
else
    for t in "${chosen[@]}"; do
        [[ -n "${crate_of[$t]:-}" ]] || die "no fuzz target '$t' (targets: ${targets[*]})"
    done
fi
if [[ $(id -u) -ne 0 ]]; then
    for t in "${chosen[@]}"; do
        [[ -z "${needs_root[$t]:-}" ]] \
            || die "$t needs root (its device confines itself, its share is a tmpfs in a private mount namespace): run as root, or name the other targets"
    done
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
out=$CARGO_TARGET_DIR/fuzz
build=$out/build
mkdir -p "$build" "$out/logs"

# ---- build -----------------------------------------------------------------------------------
crates=()
for t in "${chosen[@]}"; do
    [[ " ${crates[*]} " == *" ${crate_of[$t]} "* ]] || crates+=("${crate_of[$t]}")
done
for crate in "${crates[@]}"; do
    t0=$SECONDS
    log=$out/logs/build-${crate//\//-}.log
    note "building $crate (cargo +nightly fuzz build; minutes the first time)"
    if ! cargo +nightly fuzz build "${build_flags[@]}" --fuzz-dir "$repo/$crate" --target-dir "$build" >"$log" 2>&1; then
        cat "$log" >&2
        die "building the fuzz targets of $crate failed (log: $log)"
    fi
    note "built $crate in $(( SECONDS - t0 )) s"
done

# ---- run -------------------------------------------------------------------------------------
# cargo fuzz run sets this too: the sanitizer runtime's ODR check trips on Rust's symbols.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
final_stat() { # name log: a -print_final_stats=1 value
    sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}
results=$out/results
rm -rf "$results" && mkdir -p "$results"

# Runs target $1 for $seconds; leaves its report lines in $results/$1.report, each input it
# found in $results/$1.found and, when it failed without an input, $results/$1.failed.
run_target() {
    local t=$1
    local crate=${crate_of[$t]}
    local bin=$build/$host/$profile/$t
    local corpus=$out/corpus/$t artifacts=$out/artifacts/$t log=$out/logs/$t.log
    local report=$results/$t.report
    if [[ ! -x "$bin" ]]; then
        echo "fuzz: $t was built but $bin is missing" >"$report"
        touch "$results/$t.failed"
        return
    fi
    mkdir -p "$corpus" "$artifacts"
    for seed in "$repo/$crate/seeds/$t"/*; do
        [[ ! -f "$seed" || -e "$corpus/${seed##*/}" ]] || cp "$seed" "$corpus/"
    done
    local before
    before=$(ls -A "$artifacts")
    # The target's temporary files (virtiofs_request's share directory outlives its process).
    local tmp=$out/tmp/$t
    rm -rf --one-file-system "$tmp" && mkdir -p "$tmp"
    local args=(-max_total_time="$seconds" -timeout="$input_timeout" -print_final_stats=1
        -artifact_prefix="$artifacts/")
    [[ -z "${max_len[$t]:-}" ]] || args+=(-max_len="${max_len[$t]}")
    local t0=$SECONDS rc=0
    # The outer timeout only stops a fuzzer that ignores its own limits. The working directory
    # is under the target dir: anything libFuzzer writes without a prefix lands there.
    (cd "$out" && TMPDIR=$tmp timeout --kill-after=30 $(( seconds + 2 * input_timeout + 60 )) \
        "$bin" "${args[@]}" "$corpus" </dev/null >"$log" 2>&1) || rc=$?
    local new=() f
    while IFS= read -r f; do
        case "$f" in crash-*|leak-*|timeout-*|oom-*) new+=("$artifacts/$f") ;; esac
    done < <(comm -13 <(sort <<<"$before") <(ls -A "$artifacts" | sort))
    local execs rate last cov corp files verdict
    execs=$(final_stat number_of_executed_units "$log")
    rate=$(final_stat average_exec_per_sec "$log")
    # libFuzzer's last status line: coverage, and its corpus (files it keeps using; the
    # directory also holds the inputs it has since replaced with smaller ones).
    last=$(grep -E '^#[0-9]+.*\bcov: ' "$log" | tail -n 1 || true)
    cov=$(grep -oE '\bcov: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    corp=$(grep -oE '\bcorp: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    files=$(find "$corpus" -maxdepth 1 -type f | wc -l)
    if [[ ${#new[@]} -gt 0 ]]; then
        verdict="FOUND: ${new[*]}"
        printf '%s\n' "${new[@]}" >"$results/$t.found"
    elif [[ $rc -ne 0 ]]; then
        verdict="FAILED (exit $rc, no input saved)"
        touch "$results/$t.failed"
    else
        verdict=ok
    fi
    {
        printf 'fuzz: %-17s %10s execs %6s exec/s  cov %5s  corpus %5s (%5s files)  %4s s  %s\n' \
            "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${corp:-?}" "$files" "$(( SECONDS - t0 ))" \
            "$verdict"
        if [[ $rc -ne 0 || ${#new[@]} -gt 0 ]]; then
            # From where it went wrong (a panic, a sanitizer's or libFuzzer's report) 50 lines,
            # then libFuzzer's closing lines; the tail if neither is there.
            echo "fuzz: $t: its libFuzzer output, in part (all of it: $log):"
            awk 'start == 0 && /panicked at|ERROR: |ALARM: |out-of-memory/ { start = NR }
                 start && NR < start + 50 { print; next }
                 start && /^SUMMARY: |Test unit written to|^stat::/ { print }' "$log" >"$log.excerpt"
            [[ -s "$log.excerpt" ]] || tail -n 40 "$log" >"$log.excerpt"
            sed "s/^/  $t| /" "$log.excerpt"
            rm -f "$log.excerpt"
            for f in "${new[@]}"; do
                echo "fuzz: reproduce: $bin $f"
                echo "fuzz: minimise:  cargo +nightly fuzz tmin --fuzz-dir $repo/$crate --target-dir $build $t $f"
            done
        fi
    } >"$report"
}

note "${#chosen[@]} target(s), ${seconds} s each, $jobs at a time: ${chosen[*]}"
running=0
for t in "${chosen[@]}"; do
    if (( running >= jobs )); then
        wait -n || true
        running=$(( running - 1 ))
    fi
    run_target "$t" &
    running=$(( running + 1 ))
done
wait

findings=() # "target: path" of every crash, leak, timeout or OOM input
failures=() # targets that failed without leaving an input
for t in "${chosen[@]}"; do
    if [[ -f "$results/$t.report" ]]; then
        cat "$results/$t.report" >&2
    else
        note "$t: no report (its runner died)"
        failures+=("$t")
        continue
    fi
    if [[ -f "$results/$t.found" ]]; then
        while IFS= read -r f; do findings+=("$t: $f"); done <"$results/$t.found"
    fi
    [[ ! -f "$results/$t.failed" ]] || failures+=("$t")
done

if [[ ${#findings[@]} -gt 0 || ${#failures[@]} -gt 0 ]]; then
    for f in "${findings[@]}"; do note "found: $f"; done
    [[ ${#failures[@]} -eq 0 ]] || note "failed without an input: ${failures[*]} (logs: $out/logs)"
    die "${#findings[@]} input(s) found, ${#failures[@]} target(s) failed otherwise"
fi
note "no crash in ${#chosen[@]} target(s), ${seconds} s each"

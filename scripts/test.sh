#!/usr/bin/env bash
# Bulkhead's one test command (CI runs exactly this through .ci/run).
#
#   scripts/test.sh
#
# 1. scripts/setup.sh --no-demo: packages, guest kernel (cached), images, binaries installed;
# 2. formatting and lints;
# 3. unit tests of every crate;
# 4. end-to-end tests (BULKHEAD_E2E=1): real micro-VMs, one at a time — a guest boot takes ~30 s on
#    PVM-backed KVM (see shared/PVM.md), so this part takes minutes.
set -euo pipefail

die() { echo "test: $*" >&2; exit 1; }
note() { echo "test: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

"$repo/scripts/setup.sh" --no-demo || die "setup failed"

note "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted (run: cargo fmt --all)"
note "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings || die "clippy found problems"

note "unit tests"
cargo test --locked --workspace --exclude bulkhead-tests || die "unit tests failed"

note "end-to-end tests (real VMs; minutes)"
BULKHEAD_E2E=1 cargo test --locked -p bulkhead-tests -- --test-threads=1 || die "end-to-end tests failed"
note "all tests passed"

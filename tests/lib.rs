//! Helpers shared by the end-to-end tests.
//!
//! End-to-end tests boot real VMs, which takes tens of seconds on PVM-backed KVM, so they only run
//! when `BULKHEAD_E2E=1` (set by `scripts/test.sh`, which CI runs). `cargo test` alone stays quick.

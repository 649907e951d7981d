//! Docker drives Bulkhead like runc (issue 5): the cases of `engine::cases`, each a named
//! trial, against runc first — which proves the cases themselves — then against
//! `--runtime bulkhead`, all on one private dockerd. A create failure through Docker (bad guest
//! kernel path) is checked between the halves, and after each that nothing is left behind.
//! Gated by `BULKHEAD_E2E=1`; `cargo test --test docker_run -- bulkhead::exec` runs a subset.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::sync::Arc;

use bulkhead_tests::engine::cases;
use bulkhead_tests::engine::dockerd::{Dockerd, IMAGE};
use bulkhead_tests::engine::suite::{self, trial, Shared};
use bulkhead_tests::engine::{processes_of, share_mounts_under, text};
use bulkhead_tests::{vm_needs, Need};

/// Nothing of the runtime is left: no state directories, monitors or share mounts.
fn assert_nothing_left(d: &Dockerd) {
    let root = d.runtime_root();
    let left: Vec<_> = fs::read_dir(&root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left under {}: {left:?}",
        root.display()
    );
    let mounts = share_mounts_under(&root);
    assert!(mounts.is_empty(), "share mounts left: {mounts:?}");
    let left = processes_of(d.bin());
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
}

fn main() {
    let shared = Shared::new(Dockerd::start);
    let mut trials = cases::trials("runc", &shared, |_| "runc".into(), IMAGE, false);
    let d = Arc::clone(&shared);
    trials.push(trial(
        "broken_runtime_fails_create_in_one_line",
        move || {
            // A failing create comes back through containerd as one clear line and leaves nothing.
            let d = d.get();
            let o = d.docker(&["run", "--rm", "--runtime", "bulkhead-broken", IMAGE, "true"]);
            assert_ne!(o.status.code(), Some(0));
            let err = text(&o.stderr);
            assert!(
                err.contains("OCI runtime create failed")
                    && err.contains("/nonexistent/vmlinux not found"),
                "{err}"
            );
            assert_nothing_left(d);
        },
    ));
    trials.extend(cases::trials(
        "bulkhead",
        &shared,
        |_| "bulkhead".into(),
        IMAGE,
        true,
    ));
    let d = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        assert_nothing_left(d.get())
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("docker_run", &needs, trials, shared)
}

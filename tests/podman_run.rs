//! podman drives Bulkhead like runc (issue 5): the cases of `engine::cases` through
//! `podman --runtime`, each a named trial, against runc first (which proves the cases), then
//! against Bulkhead. Gated by `BULKHEAD_E2E=1`. podman runs with its own storage and run roots
//! in a temporary directory, the cgroupfs manager (no systemd here) and `--network none`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use bulkhead_tests::engine::cases;
use bulkhead_tests::engine::podman::{Podman, IMAGE, RUNC};
use bulkhead_tests::engine::suite::{self, trial, Shared};
use bulkhead_tests::engine::{broken_runtime, processes_of, share_mounts_under, text};
use bulkhead_tests::{vm_needs, Need};

/// No monitor of this suite's `bulkhead` is left, and no share mount.
fn assert_nothing_left(p: &Podman) {
    let left = processes_of(&p.bin);
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
    let mounts = share_mounts_under(&p.runtime_root());
    assert!(mounts.is_empty(), "share mounts left: {mounts:?}");
}

fn main() {
    let shared = Shared::new(Podman::new);
    let mut trials = cases::trials("runc", &shared, |_| RUNC.into(), IMAGE, false);
    let p = Arc::clone(&shared);
    trials.push(trial("broken_runtime_fails_create_clearly", move || {
        let p = p.get();
        let broken = broken_runtime(p.dir.path(), &p.bin);
        let o = p.cli().output(
            broken.to_str().unwrap(),
            &["run", "--rm", "--network", "none", IMAGE, "true"],
        );
        assert_ne!(o.status.code(), Some(0));
        let err = text(&o.stderr);
        assert!(err.contains("/nonexistent/vmlinux not found"), "{err}");
        assert_nothing_left(p);
    }));
    trials.extend(cases::trials(
        "bulkhead",
        &shared,
        |p| p.bin.display().to_string(),
        IMAGE,
        true,
    ));
    let p = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        assert_nothing_left(p.get())
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("podman_run", &needs, trials, shared)
}

//! Docker drives Bulkhead like runc (issue 5). One suite of `docker` cases, run against runc
//! first — which proves the cases themselves — and then against `--runtime bulkhead`.
//! A create failure through Docker (bad guest kernel path) is checked too. Gated by
//! `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "docker_common.rs"]
mod docker_common;

use std::fs;

use bulkhead_tests::{e2e_enabled, workspace_binary};
use docker_common::{ensure_docker, suite, text, Dockerd, IMAGE};

/// Nothing of the runtime is left: no state directories, monitors or share mounts.
fn assert_nothing_left(d: &Dockerd, bin: &std::path::Path) {
    let root = d.runtime_root();
    let left: Vec<_> = fs::read_dir(&root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left under {}: {left:?}",
        root.display()
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/share/rootfs"), "share mounts left");
    let left = docker_common::processes_of(bin);
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
}

#[test]
fn docker_drives_bulkhead_like_runc() {
    if !e2e_enabled("docker_drives_bulkhead_like_runc") {
        return;
    }
    assert!(ensure_docker(), "docker.io could not be installed");
    let bin = workspace_binary("bulkhead");
    let d = Dockerd::start(&bin);
    suite(&d.cli(), "runc", IMAGE, false);

    // A failing create comes back through containerd as one clear line and leaves nothing.
    let o = d.docker(&["run", "--rm", "--runtime", "bulkhead-broken", IMAGE, "true"]);
    assert_ne!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(
        err.contains("OCI runtime create failed") && err.contains("/nonexistent/vmlinux not found"),
        "{err}"
    );
    assert_nothing_left(&d, &bin);

    suite(&d.cli(), "bulkhead", IMAGE, true);
    assert_nothing_left(&d, &bin);
}

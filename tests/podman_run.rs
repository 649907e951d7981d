//! podman drives Bulkhead like runc (issue 5): the cases of `engine::cases` through
//! `podman --runtime`, each a named trial, against runc first (which proves the cases), then
//! against Bulkhead. Gated by `BULKHEAD_E2E=1`. podman runs with its own storage and run roots
//! in a temporary directory, the cgroupfs manager (no systemd here) and `--network none`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use bulkhead_tests::busybox::busybox_tar;
use bulkhead_tests::engine::cases::{self, Engine};
use bulkhead_tests::engine::suite::{self, trial, Shared};
use bulkhead_tests::engine::{
    broken_runtime, private_bulkhead, processes_of, share_mounts_under, text, EngineCli,
};
use bulkhead_tests::{vm_needs, Need};

const IMAGE: &str = "localhost/bulkhead-busybox:test";
const PODMAN: &str = "/usr/bin/podman";
const RUNC: &str = "/usr/sbin/runc";

fn ensure_podman() -> bool {
    if Path::new(PODMAN).exists() && Path::new(RUNC).exists() {
        return true;
    }
    eprintln!("installing podman (apt-get)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "podman", "runc"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok && Path::new(PODMAN).exists()
}

struct Podman {
    dir: tempfile::TempDir,
    /// The private `bulkhead` copy this suite runs (see `engine::private_bulkhead`).
    bin: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        assert!(ensure_podman(), "podman could not be installed");
        let dir = tempfile::Builder::new()
            .prefix("bh-podman")
            .tempdir_in("/tmp")
            .unwrap();
        let bin = private_bulkhead(dir.path());
        let p = Podman { dir, bin };
        // Not the host's containers.conf: it may register `bulkhead` too (setup does).
        fs::write(p.dir.path().join("containers.conf"), "").unwrap();
        let tar = busybox_tar(p.dir.path());
        let o = p.cli().output(
            RUNC,
            &[
                "import",
                "--change",
                "ENV PATH=/bin",
                tar.to_str().unwrap(),
                IMAGE,
            ],
        );
        assert!(o.status.success(), "import: {}", text(&o.stderr));
        p
    }

    /// Where the Bulkhead runtime keeps container state under podman (its default root).
    fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/bulkhead")
    }
}

impl Engine for Podman {
    fn cli(&self) -> EngineCli {
        let d = self.dir.path();
        let global = vec![
            "--root".to_string(),
            d.join("storage").display().to_string(),
            "--runroot".into(),
            d.join("run").display().to_string(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
            "--storage-driver".into(),
            "vfs".into(),
        ];
        EngineCli {
            program: PODMAN.into(),
            env: vec![(
                "CONTAINERS_CONF".into(),
                d.join("containers.conf").display().to_string(),
            )],
            global,
            runtime_is_global: true,
            // podman raises nofile/nproc by default, which needs CAP_SYS_RESOURCE.
            run_extra: [
                "--network",
                "none",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]
            .map(String::from)
            .to_vec(),
            scratch: d.to_path_buf(),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli().output(RUNC, &["rm", "-af"]);
        let _ = self.cli().output(RUNC, &["rmi", "-af"]);
    }
}

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

//! podman drives Bulkhead like runc (issue 5): the same cases as the Docker suite through
//! `podman --runtime`, against runc first (which proves the cases), then against Bulkhead. Gated by `BULKHEAD_E2E=1`. podman runs with
//! its own storage and run roots in a temporary directory, the cgroupfs manager (no systemd
//! here) and `--network none`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "docker_common.rs"]
mod docker_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bulkhead_tests::{e2e_enabled, workspace_binary};
use docker_common::{busybox_tar, processes_of, suite, text, EngineCli};

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
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("bh-podman")
            .tempdir_in("/tmp")
            .unwrap();
        let p = Podman { dir };
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

    /// `bulkhead` with a config naming a guest kernel that does not exist.
    fn broken_runtime(&self, bin: &Path) -> PathBuf {
        let d = self.dir.path();
        fs::write(d.join("broken.toml"), "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
        let w = d.join("bulkhead-broken");
        fs::write(
            &w,
            format!(
                "#!/bin/sh\nBULKHEAD_CONFIG={} exec {} \"$@\"\n",
                d.join("broken.toml").display(),
                bin.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&w, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        w
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cli().output(RUNC, &["rm", "-af"]);
        let _ = self.cli().output(RUNC, &["rmi", "-af"]);
    }
}

#[test]
fn podman_drives_bulkhead_like_runc() {
    if !e2e_enabled("podman_drives_bulkhead_like_runc") {
        return;
    }
    assert!(ensure_podman(), "podman could not be installed");
    let bin = workspace_binary("bulkhead");
    let p = Podman::new();
    let cli = p.cli();
    suite(&cli, RUNC, IMAGE, false);

    let broken = p.broken_runtime(&bin);
    let o = cli.output(
        broken.to_str().unwrap(),
        &["run", "--rm", "--network", "none", IMAGE, "true"],
    );
    assert_ne!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(err.contains("/nonexistent/vmlinux not found"), "{err}");
    assert!(processes_of(&bin).is_empty(), "bulkhead processes left");
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains("/share/rootfs"),
        "share mounts left"
    );

    suite(&cli, bin.to_str().unwrap(), IMAGE, true);
    assert!(processes_of(&bin).is_empty(), "bulkhead processes left");
}

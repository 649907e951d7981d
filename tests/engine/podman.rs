//! A private podman for the podman suites: its own storage and run roots in a temporary
//! directory, the cgroupfs manager (no systemd here), a private copy of Bulkhead, and the
//! busybox image imported from Debian's busybox-static. Without a network namespace its
//! containers run with `--network none`; with one ([`Podman::new_networked`]) every podman
//! command runs inside a namespace the suite made, where netavark builds its default bridge
//! network and port forwarding.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::netns::TestNetns;
use super::{private_bulkhead, text, EngineCli};
use crate::busybox::busybox_tar;

pub const IMAGE: &str = "localhost/bulkhead-busybox:test";
const PODMAN: &str = "/usr/bin/podman";
pub const RUNC: &str = "/usr/sbin/runc";

pub fn ensure_podman() -> bool {
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

pub struct Podman {
    pub dir: tempfile::TempDir,
    /// The private `bulkhead` copy this suite runs (see `engine::private_bulkhead`).
    pub bin: PathBuf,
    /// The namespace podman and its bridge network live in, when it has a network.
    pub netns: Option<TestNetns>,
}

impl Podman {
    /// Containers without a network (`--network none`).
    #[allow(clippy::new_without_default)] // starts an engine: not a default value
    pub fn new() -> Podman {
        Self::with_netns(None)
    }

    /// Containers on podman's default bridge network, inside a namespace made for it.
    pub fn new_networked() -> Podman {
        Self::with_netns(Some(TestNetns::new("bhpod")))
    }

    fn with_netns(netns: Option<TestNetns>) -> Podman {
        assert!(ensure_podman(), "podman could not be installed");
        let dir = tempfile::Builder::new()
            .prefix("bh-podman")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let bin = private_bulkhead(dir.path());
        let p = Podman { dir, bin, netns };
        // Not the host's containers.conf: it may register `bulkhead` too (setup does).
        fs::write(p.dir.path().join("containers.conf"), "").expect("containers.conf");
        let tar = busybox_tar(p.dir.path());
        let o = p.cli().output(
            RUNC,
            &[
                "import",
                "--change",
                "ENV PATH=/bin",
                tar.to_str().expect("utf-8 path"),
                IMAGE,
            ],
        );
        assert!(o.status.success(), "import: {}", text(&o.stderr));
        p
    }

    /// Where the Bulkhead runtime keeps container state under podman (its default root).
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/bulkhead")
    }
}

impl super::cases::Engine for Podman {
    fn cli(&self) -> EngineCli {
        Podman::cli(self)
    }
}

impl Podman {
    pub fn cli(&self) -> EngineCli {
        let d = self.dir.path();
        let mut global = Vec::new();
        // Inside the suite's namespace every podman command runs there (netavark's bridge,
        // its NAT rules and the containers' namespaces are made by the command itself).
        let program = match &self.netns {
            Some(ns) => {
                global.push(format!("--net={}", ns.path().display()));
                global.push(PODMAN.to_string());
                PathBuf::from("nsenter")
            }
            None => PathBuf::from(PODMAN),
        };
        global.extend([
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
        ]);
        let mut run_extra: Vec<String> = Vec::new();
        if self.netns.is_none() {
            run_extra.extend(["--network".into(), "none".into()]);
        }
        run_extra.extend(
            [
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ]
            .map(String::from),
        );
        EngineCli {
            program,
            env: vec![(
                "CONTAINERS_CONF".into(),
                d.join("containers.conf").display().to_string(),
            )],
            global,
            runtime_is_global: true,
            run_extra,
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

impl super::network_cases::NetEngine for Podman {
    fn cli(&self) -> EngineCli {
        Podman::cli(self)
    }
    fn netns(&self) -> &TestNetns {
        self.netns
            .as_ref()
            .expect("a networked podman (Podman::new_networked)")
    }
    fn image(&self) -> &'static str {
        IMAGE
    }
}

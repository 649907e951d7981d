//! A private `dockerd` for the Docker suite: its own data root, exec root, socket and containerd
//! namespace under a temporary directory, `--iptables=false --bridge=none`, with a private copy
//! of Bulkhead added as runtime `bulkhead` (and `bulkhead-broken`, see
//! [`super::broken_runtime`]), and a busybox image imported from Debian's busybox-static.
//! Stopped (and its directory removed) when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{broken_runtime, private_bulkhead, text, EngineCli};
use crate::busybox::busybox_tar;

pub const IMAGE: &str = "bulkhead-busybox:test";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client matching the daemon (another `docker` may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";

pub fn docker_available() -> bool {
    Path::new(DOCKERD).exists() && Path::new(DOCKER).exists()
}

/// Installs Debian's docker.io when missing (the test setup's job, as issue 5 asks).
pub fn ensure_docker() -> bool {
    if docker_available() {
        return true;
    }
    eprintln!("installing docker.io (apt-get)");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "docker.io",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok && docker_available()
}

pub struct Dockerd {
    pub dir: tempfile::TempDir,
    child: Child,
    pub namespace: String,
    bin: PathBuf,
    /// The network namespace dockerd runs in, when it has a network of its own.
    pub netns: Option<super::netns::TestNetns>,
}

impl Dockerd {
    /// Starts dockerd with runtimes `bulkhead` and `bulkhead-broken` and no network (no bridge,
    /// no iptables: the host's network is never touched); imports the test image.
    pub fn start() -> Dockerd {
        Self::launch(None)
    }

    /// Starts dockerd inside a network namespace made for it, with Docker's default bridge
    /// network and its iptables rules (NAT for published ports) there: every packet of the
    /// suite stays in that namespace and the containers' own. Talk to its published ports
    /// with [`super::netns::TestNetns::http_get`].
    pub fn start_networked() -> Dockerd {
        Self::launch(Some(super::netns::TestNetns::new("bhdock")))
    }

    fn launch(netns: Option<super::netns::TestNetns>) -> Dockerd {
        assert!(ensure_docker(), "docker.io could not be installed");
        let dir = tempfile::Builder::new()
            .prefix("bh-docker")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let d = dir.path();
        let bin = private_bulkhead(d);
        let broken = broken_runtime(d, &bin);
        let namespace = format!("bhtest{}", std::process::id());
        let log = fs::File::create(d.join("dockerd.log")).expect("dockerd.log");
        // Not the host's /etc/docker/daemon.json: it may register `bulkhead` too (setup does).
        fs::write(d.join("daemon.json"), "{}\n").expect("daemon.json");
        // `nsenter --net` only (not `ip netns exec`, whose new mount namespace would hide
        // dockerd's rootfs mounts from the runtimes its containerd starts).
        let mut cmd = match &netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.path().display())).arg(DOCKERD);
                c
            }
            None => {
                let mut c = Command::new(DOCKERD);
                c.args(["--iptables=false", "--ip-masq=false", "--bridge=none"]);
                c
            }
        };
        let child = cmd
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "--containerd-namespace",
                &namespace,
                "--containerd-plugins-namespace",
                &format!("{namespace}p"),
            ])
            .arg("--add-runtime")
            .arg(format!("bulkhead={}", bin.display()))
            .arg("--add-runtime")
            .arg(format!("bulkhead-broken={}", broken.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let dockerd = Dockerd {
            dir,
            child,
            namespace,
            bin,
            netns,
        };
        let t = Instant::now();
        while !dockerd.docker(&["info"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "dockerd did not start: {}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd.import_busybox();
        dockerd
    }

    /// The private `bulkhead` binary registered as runtime `bulkhead`.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        super::output(
            Command::new(DOCKER)
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}", self.dir.path().join("docker.sock").display()),
                )
                .args(args),
        )
    }

    fn import_busybox(&self) {
        let tar = busybox_tar(self.dir.path());
        let o = self.docker(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            tar.to_str().expect("utf-8 path"),
            IMAGE,
        ]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }

    /// The docker CLI of this daemon, for the shared cases.
    pub fn cli(&self) -> EngineCli {
        EngineCli {
            program: DOCKER.into(),
            env: vec![(
                "DOCKER_HOST".into(),
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )],
            global: Vec::new(),
            runtime_is_global: false,
            run_extra: Vec::new(),
            scratch: self.dir.path().to_path_buf(),
        }
    }

    /// The containerd shims of this dockerd's containers (the runtime's parent while a task
    /// lives): none may be left once every container is removed.
    pub fn shims(&self) -> Vec<i32> {
        let ns = format!("-namespace\0{}\0", self.namespace);
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("containerd-shim") && c.contains(&ns)
                })
            })
            .collect()
    }

    /// containerd's state directory for our namespace's runc-v2 tasks (`--root` of the runtime).
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/containerd/runc").join(&self.namespace)
    }
}

impl super::cases::Engine for Dockerd {
    fn cli(&self) -> EngineCli {
        Dockerd::cli(self)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Whatever a failed case left running.
        let ids = text(&self.docker(&["ps", "-aq"]).stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = self.docker(&[&["rm", "-f", "-v"][..], &ids].concat());
        }
        // containerd's (empty) per-namespace runtime root outlives the daemon otherwise.
        let _ = fs::remove_dir(self.runtime_root());
        // dockerd stops its containerd and unmounts on SIGTERM.
        super::stop_daemon(&mut self.child);
        // ...except the bind mounts of network namespaces in its exec root (its own `default`,
        // and containers' it had not garbage-collected yet), which would keep the temporary
        // directory from being removed.
        let netns = self.dir.path().join("exec/netns");
        for ns in fs::read_dir(&netns).into_iter().flatten().flatten() {
            let _ = nix::mount::umount2(&ns.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl super::network_cases::NetEngine for Dockerd {
    fn cli(&self) -> EngineCli {
        Dockerd::cli(self)
    }
    fn netns(&self) -> &super::netns::TestNetns {
        self.netns
            .as_ref()
            .expect("a networked dockerd (Dockerd::start_networked)")
    }
    fn image(&self) -> &'static str {
        IMAGE
    }
}

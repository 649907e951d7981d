//! A private `dockerd` for the Docker tests: its own data root, exec root, socket and containerd
//! namespace under a temporary directory, `--iptables=false --bridge=none`, with Bulkhead added
//! as runtime `bulkhead`, and a busybox image imported from Debian's busybox-static. Stopped (and
//! its directory removed) when dropped.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "bulkhead-busybox:test";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client matching the daemon (another `docker` may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";

pub fn docker_available() -> bool {
    Path::new(DOCKERD).exists() && Path::new(DOCKER).exists()
}

/// Installs Debian's docker.io when missing (the test setup's job, as the issue asks).
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
}

impl Dockerd {
    /// Starts dockerd with `bulkhead` registered as runtime `bulkhead`, and `bulkhead-broken`: the
    /// same binary with a config naming a guest kernel that does not exist (engines pass no
    /// environment through to runtimes, so a wrapper script sets it). Imports the test image.
    pub fn start(bulkhead: &Path) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("bh-docker")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let broken_cfg = d.join("broken.toml");
        fs::write(&broken_cfg, "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
        let wrapper = d.join("bulkhead-broken");
        let script = format!(
            "#!/bin/sh\nBULKHEAD_CONFIG={} exec {} \"$@\"\n",
            broken_cfg.display(),
            bulkhead.display()
        );
        fs::write(&wrapper, script).unwrap();
        fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let namespace = format!("bhtest{}", std::process::id());
        let log = fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args([
                "--containerd-namespace",
                &namespace,
                "--containerd-plugins-namespace",
                &format!("{namespace}p"),
            ])
            .arg("--add-runtime")
            .arg(format!("bulkhead={}", bulkhead.display()))
            .arg("--add-runtime")
            .arg(format!("bulkhead-broken={}", wrapper.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dockerd = Dockerd {
            dir,
            child,
            namespace,
        };
        let t = Instant::now();
        while !dockerd.docker(&["info"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not start: {}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd.import_busybox();
        dockerd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .args(args);
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// A busybox rootfs (Debian's busybox-static and its applet links) as an image.
    fn import_busybox(&self) {
        let root = self.dir.path().join("busybox");
        for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("busybox-static is not installed");
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|a| *a != "busybox")
        {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        let tar = self.dir.path().join("busybox.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let o = self.docker(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            IMAGE,
        ]);
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// containerd's state directory for our namespace's runc-v2 tasks (`--root` of the runtime).
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/containerd/runc").join(&self.namespace)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "-v"]);
        // SAFETY: kill(2) on the dockerd we started; it stops its containerd and unmounts.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pids of the processes running `exe` (monitors and exec proxies are forks of it).
pub fn processes_of(exe: &Path) -> Vec<i32> {
    let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .collect()
}

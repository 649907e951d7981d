//! containerd's `ctr run --runc-binary` drives Bulkhead like runc (issue 5): the core cases,
//! against runc first (which proves them), then against Bulkhead. A private containerd (own root, state, socket, namespace; CRI off)
//! runs for the test. Gated by `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "docker_common.rs"]
mod docker_common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::{e2e_enabled, in_terminal, workspace_binary};
use docker_common::{busybox_tar, ensure_docker, processes_of, text};

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    namespace: String,
    rootfs: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("bh-ctr")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
            d.display()
        );
        fs::write(d.join("config.toml"), config).unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let rootfs = d.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let tar = busybox_tar(d);
        assert!(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-xf")
            .arg(tar)
            .status()
            .unwrap()
            .success());
        let c = Containerd {
            dir,
            child,
            namespace: format!("bhctr{}", std::process::id()),
            rootfs,
        };
        let t = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.dir.path().join("c.sock"))
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `ctr run --rm --runc-binary RUNTIME --rootfs ROOTFS ID ARGS…` as a command.
    fn run_cmd(&self, runtime: &Path, id: &str, args: &[&str]) -> Command {
        let mut v = vec![
            "run",
            "--rm",
            "--runc-binary",
            runtime.to_str().unwrap(),
            "--rootfs",
            self.rootfs.to_str().unwrap(),
            id,
        ];
        v.extend_from_slice(args);
        self.cmd(&v)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd's (empty) per-namespace runtime root outlives it otherwise.
        let _ = fs::remove_dir(PathBuf::from("/run/containerd/runc").join(&self.namespace));
        // SAFETY: kill(2) on the containerd we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn suite(c: &Containerd, runtime: &Path, guest_kernel: bool) {
    let o = c
        .run_cmd(runtime, "t-echo", &["/bin/echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(
        (text(&o.stdout).as_str(), o.status.code()),
        ("hi\n", Some(0)),
        "{}",
        text(&o.stderr)
    );
    let o = c
        .run_cmd(runtime, "t-exit", &["/bin/sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let o = c
        .run_cmd(runtime, "t-uname", &["/bin/uname", "-r"])
        .output()
        .unwrap();
    assert_eq!(
        text(&o.stdout) != host,
        guest_kernel,
        "uname -r: {}",
        text(&o.stdout)
    );

    // A long-running task: exec into it, with and without a terminal, then kill it.
    let log = c.dir.path().join("long.out");
    let mut long = c
        .run_cmd(runtime, "t-long", &["/bin/sleep", "1000"])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !text(&c.ctr(&["task", "ls"]).stdout).contains("RUNNING") {
        assert!(t.elapsed() < Duration::from_secs(120), "task did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t-long",
        "/bin/sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(
        (text(&o.stdout).as_str(), o.status.code()),
        ("in-exec\n", Some(4)),
        "{}",
        text(&o.stderr)
    );
    let sock = c.dir.path().join("c.sock");
    let line = format!(
        "ctr -a {} -n {} task exec -t --exec-id e2 t-long /bin/sh -c 'tty; echo tty-ok'",
        sock.display(),
        c.namespace
    );
    let (s, err) = in_terminal(&line, &[], Duration::from_secs(300));
    assert!(
        s.contains("/dev/pts/") && s.contains("tty-ok"),
        "exec -t: {s} {err}"
    );
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", "t-long"])
        .status
        .success());
    let status = long.wait().unwrap();
    assert_eq!(status.code(), Some(137));
}

#[test]
fn ctr_drives_bulkhead_like_runc() {
    if !e2e_enabled("ctr_drives_bulkhead_like_runc") {
        return;
    }
    assert!(
        ensure_docker(),
        "containerd (with docker.io) could not be installed"
    );
    let bin = workspace_binary("bulkhead");
    let c = Containerd::start();
    suite(&c, Path::new("/usr/sbin/runc"), false);

    let cfg = c.dir.path().join("broken.toml");
    fs::write(&cfg, "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
    let wrapper = c.dir.path().join("bulkhead-broken");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nBULKHEAD_CONFIG={} exec {} \"$@\"\n",
            cfg.display(),
            bin.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = c
        .run_cmd(&wrapper, "t-broken", &["/bin/true"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("/nonexistent/vmlinux not found"),
        "{}",
        text(&o.stderr)
    );
    let root = PathBuf::from("/run/containerd/runc").join(&c.namespace);
    let left: Vec<_> = fs::read_dir(&root)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    assert!(processes_of(&bin).is_empty(), "bulkhead processes left");

    suite(&c, &bin, true);
    assert!(processes_of(&bin).is_empty(), "bulkhead processes left");
}

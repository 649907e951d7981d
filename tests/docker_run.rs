//! Docker drives Bulkhead like runc (issue 5). One suite of `docker` cases, run against runc
//! first — which proves the cases themselves — and then against `--runtime bulkhead`.
//! Gated by `BULKHEAD_E2E=1`; the Bulkhead half runs once `bulkhead features` says the runtime
//! can share a rootfs with its guest (the VMM's virtio-fs device, issue 4), and until then says
//! it is skipped. A create failure through Docker (bad guest kernel path) is checked either way.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "docker_common.rs"]
mod docker_common;

use std::fs;
use std::time::{Duration, Instant};

use bulkhead_tests::{e2e_enabled, workspace_binary};
use docker_common::{ensure_docker, text, Dockerd, IMAGE};

/// Whether the runtime can run a container rootfs in its guest yet.
fn bulkhead_runs_containers(bin: &std::path::Path) -> bool {
    let o = std::process::Command::new(bin)
        .arg("features")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.pointer("/annotations/io.bulkhead.rootfs-share").is_some()
}

struct Case<'a> {
    d: &'a Dockerd,
    runtime: &'a str,
}

impl Case<'_> {
    /// `docker run --rm --runtime R ARGS…`
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["run", "--rm", "--runtime", self.runtime];
        v.extend_from_slice(args);
        self.d.docker(&v)
    }

    fn out(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.runtime,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    fn code(&self, args: &[&str]) -> Option<i32> {
        self.run(args).status.code()
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.d.docker(args);
        assert!(
            o.status.success(),
            "{} docker {args:?}: {}",
            self.runtime,
            text(&o.stderr)
        );
        text(&o.stdout).trim().to_string()
    }

    fn detached(&self, args: &[&str]) -> String {
        let mut v = vec!["run", "-d", "--runtime", self.runtime];
        v.extend_from_slice(args);
        self.docker_ok(&v)
    }
}

fn suite(d: &Dockerd, runtime: &str) {
    let c = Case { d, runtime };
    let host_release = text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    );

    // Output, exit codes.
    assert_eq!(c.out(&[IMAGE, "echo", "hi"]), "hi\n");
    assert_eq!(c.code(&[IMAGE, "true"]), Some(0));
    assert_eq!(c.code(&[IMAGE, "sh", "-c", "exit 3"]), Some(3));
    assert_eq!(c.code(&[IMAGE, "no-such-command"]), Some(127));

    // The guest kernel, not the host's (runc shares the host's).
    let release = c.out(&[IMAGE, "uname", "-r"]);
    assert_eq!(
        release == host_release,
        runtime == "runc",
        "uname -r: {release}"
    );

    // -e, -w, -u.
    assert_eq!(
        c.out(&["-e", "FOO=bar", IMAGE, "sh", "-c", "echo $FOO"]),
        "bar\n"
    );
    assert_eq!(c.out(&["-w", "/tmp", IMAGE, "pwd"]), "/tmp\n");
    assert_eq!(
        c.out(&[
            "-u",
            "1000:1000",
            IMAGE,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)"
        ]),
        "1000:1000\n"
    );

    // -v both directions.
    let vol = d.dir.path().join(format!("vol-{runtime}"));
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("from-host"), "host data\n").unwrap();
    let spec = format!("{}:/data", vol.display());
    assert_eq!(
        c.out(&[
            "-v",
            &spec,
            IMAGE,
            "sh",
            "-c",
            "cat /data/from-host; echo guest data > /data/from-guest"
        ]),
        "host data\n"
    );
    assert_eq!(
        fs::read_to_string(vol.join("from-guest")).unwrap(),
        "guest data\n"
    );

    // --read-only, --cap-drop ALL, --pids-limit, --memory.
    let o = c.run(&["--read-only", IMAGE, "touch", "/x"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        c.out(&[
            "--cap-drop",
            "ALL",
            IMAGE,
            "sh",
            "-c",
            "grep CapEff /proc/self/status"
        ]),
        "CapEff:\t0000000000000000\n"
    );
    let o = c.run(&[
        "--pids-limit",
        "5",
        IMAGE,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
    ]);
    assert_ne!(o.status.code(), Some(0), "pids limit not enforced");
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    assert_eq!(
        c.code(&["--memory", "64m", IMAGE, "sh", "-c", hog]),
        Some(137),
        "OOM kill not reported"
    );

    // -d, logs, exec, exec -it, kill.
    let id = c.detached(&[IMAGE, "sh", "-c", "echo started; sleep 1000"]);
    let t = Instant::now();
    while !c.docker_ok(&["logs", &id]).contains("started") {
        assert!(t.elapsed() < Duration::from_secs(120), "no logs");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.docker_ok(&["exec", &id, "echo", "in-exec"]), "in-exec");
    assert_eq!(
        d.docker(&["exec", &id, "sh", "-c", "exit 4"]).status.code(),
        Some(4)
    );
    let script = format!(
        "{} exec -it {id} sh -c 'tty; echo tty-ok'",
        "/usr/bin/docker"
    );
    let host = format!("unix://{}", d.dir.path().join("docker.sock").display());
    let o = std::process::Command::new("script")
        .args(["-qec", &script, "/dev/null"])
        .env("DOCKER_HOST", host)
        .output()
        .unwrap();
    let s = text(&o.stdout);
    assert!(
        s.contains("/dev/pts/") && s.contains("tty-ok"),
        "exec -it: {s} {}",
        text(&o.stderr)
    );
    c.docker_ok(&["kill", &id]);
    assert_eq!(c.docker_ok(&["wait", &id]), "137");
    c.docker_ok(&["rm", &id]);

    // docker stop: SIGTERM honoured…
    let id = c.detached(&[
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    c.docker_ok(&["stop", "-t", "60", &id]);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "SIGTERM not honoured"
    );
    assert_eq!(c.docker_ok(&["wait", &id]), "0");
    c.docker_ok(&["rm", &id]);
    // …and SIGKILL after the timeout (a PID 1 without a handler ignores SIGTERM).
    let id = c.detached(&[IMAGE, "sleep", "1000"]);
    c.docker_ok(&["stop", "-t", "2", &id]);
    assert_eq!(c.docker_ok(&["wait", &id]), "137");
    c.docker_ok(&["rm", &id]);
}

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
    suite(&d, "runc");

    // A failing create comes back through containerd as one clear line and leaves nothing.
    let o = d.docker(&["run", "--rm", "--runtime", "bulkhead-broken", IMAGE, "true"]);
    assert_ne!(o.status.code(), Some(0));
    let err = text(&o.stderr);
    assert!(
        err.contains("OCI runtime create failed") && err.contains("/nonexistent/vmlinux not found"),
        "{err}"
    );
    assert_nothing_left(&d, &bin);

    if !bulkhead_runs_containers(&bin) {
        eprintln!("bulkhead half skipped: the runtime cannot share a rootfs with its guest yet (no virtio-fs in the VMM)");
        return;
    }
    suite(&d, "bulkhead");
    assert_nothing_left(&d, &bin);
}

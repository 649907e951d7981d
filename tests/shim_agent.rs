//! The `bulkhead` CLI with the real guest agent (on the host, `--listen-unix`, see
//! `shim_agent_runtime.rs`) creating real containers from a busybox bundle: the shim's agent
//! client calls, stdio relays, exit statuses and cleanup, without a VM. Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bulkhead_tests::busybox::busybox_tar;
use bulkhead_tests::cli::{become_subreaper, output_via_files};
use bulkhead_tests::engine::processes_of;
use bulkhead_tests::{agent_binary, require, Need};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-agent-runtime");

struct Rt {
    tmp: tempfile::TempDir,
}

impl Rt {
    fn new() -> Option<Rt> {
        if !require(&[Need::Root]) {
            return None;
        }
        become_subreaper(); // we reap the monitors like an engine
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("config.toml"),
            format!(
                "log_dir = {:?}\n",
                tmp.path().join("logs").display().to_string()
            ),
        )
        .unwrap();
        busybox_tar(tmp.path()); // leaves the rootfs in <tmp>/busybox
        Some(Rt { tmp })
    }

    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": self.tmp.path().join("busybox")},
            "hostname": "agent-test",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                "cgroupsPath": format!("/bulkhead-test/{name}-{}", std::process::id())
            }
        });
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        dir
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("BULKHEAD_CONFIG", self.tmp.path().join("config.toml"))
            .env("BULKHEAD_AGENT_BIN", agent_binary())
            .arg("--root")
            .arg(self.tmp.path().join("root"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs with stdout and stderr in `out` (processes left behind inherit it).
    fn run_to(&self, args: &[&str], out: &Path) -> Output {
        output_via_files(self.cmd(args), out, Some(out))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_to(
            args,
            &self
                .tmp
                .path()
                .join(format!("out-{}", args.join("-").len())),
        )
    }

    fn create(&self, id: &str, bundle: &Path) -> (Output, i32, PathBuf) {
        let out = self.tmp.path().join(format!("{id}.out"));
        let pid_file = self.tmp.path().join(format!("{id}.pid"));
        let o = self.run_to(
            &[
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                id,
            ],
            &out,
        );
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        (o, pid, out)
    }
}

fn wait_status(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, c) => return c,
            WaitStatus::Signaled(_, s, _) => return 128 + s as i32,
            _ => continue,
        }
    }
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn real_agent_runs_containers_through_the_cli() {
    let Some(rt) = Rt::new() else { return };

    // Output through the relays, PID namespace and hostname from the spec, exit status.
    let b = rt.bundle("a1", &["sh", "-c", "echo hi $$ $(hostname); exit 3"]);
    let (o, pid, out) = rt.create("a1", &b);
    assert!(o.status.success(), "create: {}", text(&o));
    assert!(rt.run(&["start", "a1"]).status.success());
    assert_eq!(wait_status(pid), 3);
    assert_eq!(fs::read_to_string(out).unwrap(), "hi 1 agent-test\n");
    assert!(rt.run(&["delete", "a1"]).status.success());
    assert!(!rt.tmp.path().join("root/a1").exists());

    // exec into a running container; kill gives 137.
    let b = rt.bundle("a2", &["sleep", "1000"]);
    let (o, pid, _) = rt.create("a2", &b);
    assert!(o.status.success(), "create: {}", text(&o));
    assert!(rt.run(&["start", "a2"]).status.success());
    let o = rt.run(&[
        "exec",
        "a2",
        "sh",
        "-c",
        "echo in-exec $(cat /proc/1/comm); exit 4",
    ]);
    assert_eq!(
        (text(&o).as_str(), o.status.code()),
        ("in-exec sleep\n", Some(4))
    );
    // A missing program fails exec with runc's wording (what engines match) and exit 1,
    // and leaves the container running.
    let o = rt.run(&["exec", "a2", "no-such-command"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("executable file not found in $PATH"),
        "{}",
        text(&o)
    );
    let o = rt.run(&["state", "a2"]);
    assert!(text(&o).contains("\"running\""), "{}", text(&o));
    let o = rt.run(&["ps", "--format", "json", "a2"]);
    let pids: Vec<i32> = serde_json::from_slice(&o.stdout).unwrap();
    // runc lists the container's processes by host pid: here only the init, `sleep`.
    let comms: Vec<String> = pids
        .iter()
        .map(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
        .collect();
    assert_eq!(comms, ["sleep\n"], "{pids:?}");
    assert!(rt.run(&["kill", "a2", "KILL"]).status.success());
    assert_eq!(wait_status(pid), 137);
    assert!(rt.run(&["delete", "a2"]).status.success());

    // A missing command fails create with runc's wording and leaves nothing.
    let b = rt.bundle("a3", &["no-such-command"]);
    let (o, _, _) = rt.create("a3", &b);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("executable file not found in $PATH"),
        "{}",
        text(&o)
    );
    assert!(!rt.tmp.path().join("root/a3").exists());
    assert!(processes_of(Path::new(BIN)).is_empty(), "monitors left");
    for h in fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
    {
        for name in ["a1", "a2", "a3"] {
            let leaf = h
                .path()
                .join(format!("bulkhead-test/{name}-{}", std::process::id()));
            assert!(!leaf.exists(), "cgroup {} left", leaf.display());
        }
        let _ = fs::remove_dir(h.path().join("bulkhead-test")); // shared parent, busy while others run
    }
}

//! containerd's `ctr run --runc-binary` drives Bulkhead like runc (issue 5): the core cases,
//! each a named trial, against runc first (which proves them), then against Bulkhead. A
//! private containerd (own root, state, socket, namespace; CRI off) runs for the suite.
//! Gated by `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_tests::busybox::busybox_tar;
use bulkhead_tests::engine::dockerd::ensure_docker;
use bulkhead_tests::engine::suite::{self, half_trials, trial, Shared};
use bulkhead_tests::engine::{
    broken_runtime, output, private_bulkhead, processes_of, stop_daemon, text, COMMAND_TIMEOUT,
};
use bulkhead_tests::{in_terminal, vm_needs, Need};
use libtest_mimic::Trial;

const RUNC: &str = "/usr/sbin/runc";

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    namespace: String,
    rootfs: PathBuf,
    /// The private `bulkhead` copy this suite runs (see `engine::private_bulkhead`).
    bin: PathBuf,
    /// The long-running task of each half, shared by its exec and kill cases.
    long: Mutex<Option<Child>>,
}

impl Containerd {
    fn start() -> Containerd {
        assert!(
            ensure_docker(),
            "containerd (with docker.io) could not be installed"
        );
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
            .stdin(Stdio::null())
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
        let bin = private_bulkhead(d);
        let c = Containerd {
            dir,
            child,
            namespace: format!("bhctr{}", std::process::id()),
            rootfs,
            bin,
            long: Mutex::new(None),
        };
        let t = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(300),
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
        output(&mut self.cmd(args))
    }

    /// `ctr run --rm --runc-binary RUNTIME --rootfs ROOTFS ID ARGS…` as a command. Ids end in
    /// our pid: Bulkhead names its console logs (in the machine-wide log directory) after them.
    fn run_cmd(&self, runtime: &Path, id: &str, args: &[&str]) -> Command {
        let id = self.id(id);
        let mut v = vec![
            "run",
            "--rm",
            "--runc-binary",
            runtime.to_str().unwrap(),
            "--rootfs",
            self.rootfs.to_str().unwrap(),
            &id,
        ];
        v.extend_from_slice(args);
        self.cmd(&v)
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-{}", std::process::id())
    }

    /// containerd's state directory for our namespace's runc-v2 tasks.
    fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/containerd/runc").join(&self.namespace)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut long) = self.long.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &self.id("t-long")]);
            let _ = long.kill();
            let _ = long.wait();
        }
        // containerd's (empty) per-namespace runtime root outlives it otherwise.
        let _ = fs::remove_dir(self.runtime_root());
        stop_daemon(&mut self.child);
        // The namespace's cgroup parents (`/<namespace>/<id>` groups): runc and we remove only
        // the container's own.
        bulkhead_tests::remove_cgroup_dirs(&self.namespace);
    }
}

/// One runtime's half: its binary, whether it runs a guest kernel, and the one run whose
/// output two cases read (a Bulkhead run is a guest boot).
struct Half {
    runtime: PathBuf,
    guest_kernel: bool,
    printed: OnceLock<Output>,
}

type Case = (&'static str, fn(&Containerd, &Half));

const CASES: &[Case] = &[
    ("run_prints_output_and_exits_0", echo),
    ("uname_shows_the_expected_kernel", kernel),
    ("run_reports_exit_code_3", exit_code_3),
    ("long_task_starts", long_task_starts),
    ("task_exec_prints_output_and_exit_code_4", task_exec),
    ("task_exec_t_gets_a_terminal", task_exec_t),
    ("task_kill_reports_137", task_kill),
];

fn run(c: &Containerd, runtime: &Path, id: &str, args: &[&str]) -> Output {
    output(&mut c.run_cmd(runtime, id, args))
}

/// `echo hi; uname -r`, run once per half: two lines, exit 0.
fn printed<'a>(c: &Containerd, h: &'a Half) -> &'a Output {
    h.printed.get_or_init(|| {
        run(
            c,
            &h.runtime,
            "t-echo",
            &["/bin/sh", "-c", "echo hi; uname -r"],
        )
    })
}

fn echo(c: &Containerd, h: &Half) {
    let o = printed(c, h);
    let out = text(&o.stdout);
    assert_eq!(
        (out.lines().next(), out.lines().count(), o.status.code()),
        (Some("hi"), 2, Some(0)),
        "{out:?} {}",
        text(&o.stderr)
    );
}

fn exit_code_3(c: &Containerd, h: &Half) {
    let o = run(c, &h.runtime, "t-exit", &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}

fn kernel(c: &Containerd, h: &Half) {
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout);
    let o = printed(c, h);
    let release = text(&o.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(o.status.success() && !release.is_empty(), "{o:?}");
    assert_eq!(
        release != host.trim(),
        h.guest_kernel,
        "uname -r: {release}"
    );
}

/// A long-running task for the exec and kill cases; started when `ctr task ls` says RUNNING.
fn long_task_starts(c: &Containerd, h: &Half) {
    let log = c.dir.path().join("long.out");
    let long = c
        .run_cmd(&h.runtime, "t-long", &["/bin/sleep", "1000"])
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    *c.long.lock().unwrap() = Some(long);
    let t = Instant::now();
    while !text(&c.ctr(&["task", "ls"]).stdout).contains("RUNNING") {
        assert!(t.elapsed() < COMMAND_TIMEOUT, "task did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_exec(c: &Containerd, _: &Half) {
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &c.id("t-long"),
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
}

fn task_exec_t(c: &Containerd, _: &Half) {
    let sock = c.dir.path().join("c.sock");
    let line = format!(
        "ctr -a {} -n {} task exec -t --exec-id e2 {} /bin/sh -c 'tty; echo tty-ok'",
        sock.display(),
        c.namespace,
        c.id("t-long")
    );
    let (s, err) = in_terminal(&line, &[], COMMAND_TIMEOUT);
    assert!(
        s.contains("/dev/pts/") && s.contains("tty-ok"),
        "exec -t: {s} {err}"
    );
}

fn task_kill(c: &Containerd, _: &Half) {
    let mut long = c
        .long
        .lock()
        .unwrap()
        .take()
        .expect("no long task: long_task_starts failed or did not run");
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", &c.id("t-long")])
        .status
        .success());
    let status = long.wait().unwrap();
    assert_eq!(status.code(), Some(137));
}

/// The trials of one half, named `<prefix>::<case>`.
fn half(
    prefix: &str,
    shared: &Arc<Shared<Containerd>>,
    runtime: fn(&Containerd) -> PathBuf,
    guest_kernel: bool,
) -> Vec<Trial> {
    let half = move |c: &Containerd| Half {
        runtime: runtime(c),
        guest_kernel,
        printed: OnceLock::new(),
    };
    half_trials(prefix, shared, half, CASES.iter().copied())
}

/// Nothing of the runtime is left: no state, no monitors of this suite's binary.
fn assert_nothing_left(c: &Containerd) {
    let left: Vec<_> = fs::read_dir(c.runtime_root())
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state left: {left:?}");
    let left = processes_of(&c.bin);
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
}

fn main() {
    let shared = Shared::new(Containerd::start);
    let mut trials = half("runc", &shared, |_| RUNC.into(), false);
    let c = Arc::clone(&shared);
    trials.push(trial("broken_runtime_fails_create_clearly", move || {
        let c = c.get();
        let wrapper = broken_runtime(c.dir.path(), &c.bin);
        let o = run(c, &wrapper, "t-broken", &["/bin/true"]);
        assert_ne!(o.status.code(), Some(0));
        assert!(
            text(&o.stderr).contains("/nonexistent/vmlinux not found"),
            "{}",
            text(&o.stderr)
        );
        assert_nothing_left(c);
    }));
    trials.extend(half("bulkhead", &shared, |c| c.bin.clone(), true));
    let c = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        assert_nothing_left(c.get())
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("ctr_run", &needs, trials, shared)
}

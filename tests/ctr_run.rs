//! containerd drives Bulkhead two ways, and both must behave as runc does under containerd's
//! own `ctr`: as a runc-compatible binary under containerd's runc shim (`ctr run
//! --runc-binary`, issue 5), and through Bulkhead's own shim v2 (`ctr run --runtime
//! io.containerd.bulkhead.v2`), which owns what the runc shim did for us (stdio, exits,
//! events). Every case is a named trial run against runc first (which proves the case, and
//! what containerd 1.6 prints for it), then the runc-shim Bulkhead half, then the shim-v2 half.
//!
//! A private containerd (own root, state, socket, namespace; CRI off) runs for the suite, with
//! PATH led by the suite's directory, which holds private copies of `bulkhead` and of the shim:
//! containerd finds our shim there and the shim finds our `bulkhead` beside itself, so "nothing
//! left behind" can look for processes of these very files while other suites (and other
//! containerds) run on the machine. The events case reads `ctr events`, because containerd
//! learns a task's exit from the shim's events and not from the process itself.
//! Gated by `BULKHEAD_E2E=1`; a missing shim build fails the suite rather than skipping a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_tests::busybox::{busybox_tar, oci_image_tar};
use bulkhead_tests::engine::dockerd::ensure_docker;
use bulkhead_tests::engine::suite::{self, half_trials, trial, Shared};
use bulkhead_tests::engine::{
    broken_runtime, output, private_bulkhead, processes_of, stop_daemon, text, COMMAND_TIMEOUT,
};
use bulkhead_tests::{in_terminal, vm_needs, workspace_binary, Need};
use libtest_mimic::Trial;
use serde_json::Value;

const RUNC: &str = "/usr/sbin/runc";
const SHIM: &str = "containerd-shim-bulkhead-v2";
const SHIM_RUNTIME: &str = "io.containerd.bulkhead.v2";
/// The busybox image the suite builds and imports (containerd hands its snapshot to the
/// runtime as rootfs mounts, which the shim mounts on the bundle's rootfs).
const IMAGE: &str = "localhost/bulkhead-test/busybox:1";

struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    namespace: String,
    rootfs: PathBuf,
    /// The private `bulkhead` copy this suite runs (see `engine::private_bulkhead`).
    bin: PathBuf,
    /// The private shim copy beside it, which containerd runs for `SHIM_RUNTIME`.
    shim: PathBuf,
    /// The long-running task of each half, shared by its exec and kill cases.
    long: Mutex<Option<Child>>,
    /// Every task id `ctr run` was given (their shims' sockets must be gone at the end).
    ids: Mutex<BTreeSet<String>>,
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
        let bin = private_bulkhead(d);
        let shim = d.join(SHIM);
        let built = workspace_binary(SHIM);
        fs::copy(&built, &shim).unwrap_or_else(|e| {
            panic!(
                "copy {} to {}: {e} (build it: cargo build --release -p {SHIM})",
                built.display(),
                shim.display()
            )
        });
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
            d.display()
        );
        fs::write(d.join("config.toml"), config).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            [d.to_path_buf()]
                .into_iter()
                .chain(std::env::split_paths(&path)),
        )
        .unwrap();
        let log = fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
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
            .arg(&tar)
            .status()
            .unwrap()
            .success());
        let image = oci_image_tar(d, &tar, IMAGE);
        let c = Containerd {
            dir,
            child,
            namespace: format!("bhctr{}", std::process::id()),
            rootfs,
            bin,
            shim,
            long: Mutex::new(None),
            ids: Mutex::default(),
        };
        let t = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(300),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = c.ctr(&["images", "import", image.to_str().unwrap()]);
        assert!(o.status.success(), "import {IMAGE}: {}", text(&o.stderr));
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(self.address())
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        output(&mut self.cmd(args))
    }

    fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// `ctr run --rm RUNTIME --rootfs ROOTFS ID ARGS…` as a command. Ids end in our pid:
    /// Bulkhead names its console logs (in the machine-wide log directory) after them.
    fn run_cmd(&self, runtime: &Runtime, id: &str, args: &[&str]) -> Command {
        let id = self.id(id);
        self.ids.lock().unwrap().insert(id.clone());
        let mut v = vec!["run", "--rm"];
        v.extend(runtime.args());
        v.extend(["--rootfs", self.rootfs.to_str().unwrap(), &id]);
        v.extend_from_slice(args);
        self.cmd(&v)
    }

    /// `ctr run --rm RUNTIME IMAGE ID ARGS…`: the image's snapshot as the rootfs.
    fn run_image(&self, runtime: &Runtime, id: &str, args: &[&str]) -> Output {
        let id = self.id(id);
        self.ids.lock().unwrap().insert(id.clone());
        let mut v = vec!["run", "--rm"];
        v.extend(runtime.args());
        v.extend([IMAGE, &id]);
        v.extend_from_slice(args);
        self.ctr(&v)
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-{}", std::process::id())
    }

    /// The runtimes' state directories for our namespace: the runc shim's `--root` for its
    /// runc binary, and our shim's `bulkhead` root.
    fn runtime_roots(&self) -> [PathBuf; 2] {
        ["runc", "bulkhead"].map(|r| Path::new("/run/containerd").join(r).join(&self.namespace))
    }

    /// containerd's task bundles of our namespace.
    fn bundles(&self) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
    }

    /// The socket of the shim serving task `id`, by containerd's shim v2 convention (the runc
    /// shim's and the containerd-shim crate's): `/run/containerd/s/<sha256 of
    /// "<containerd address>/<namespace>/<id>">`. `long_task_starts` checks a live shim's.
    fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/{}/{id}", self.address().display(), self.namespace);
        let mut sha = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sha256sum");
        sha.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        let out = sha.wait_with_output().unwrap();
        let hex = text(&out.stdout);
        Path::new("/run/containerd/s").join(hex.split_whitespace().next().unwrap())
    }

    /// The last `n` lines of containerd's log (which holds its shims' logs too).
    fn log_tail(&self, n: usize) -> String {
        let log = text(&fs::read(self.dir.path().join("containerd.log")).unwrap_or_default());
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut long) = self.long.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", &self.id("t-long")]);
            let _ = long.kill();
            let _ = long.wait();
        }
        // The (empty) per-namespace runtime roots outlive containerd otherwise.
        for root in self.runtime_roots() {
            let _ = fs::remove_dir(root);
        }
        stop_daemon(&mut self.child);
        // The namespace's cgroup parents (`/<namespace>/<id>` groups): runc and we remove only
        // the container's own.
        bulkhead_tests::remove_cgroup_dirs(&self.namespace);
    }
}

/// How `ctr run` is told which runtime to use.
enum Runtime {
    /// containerd's runc shim (`io.containerd.runc.v2`) running this runc-compatible binary.
    RuncBinary(PathBuf),
    /// A shim v2 by runtime name: containerd runs `containerd-shim-<name>-v2` from its PATH.
    ShimV2(&'static str),
}

impl Runtime {
    fn args(&self) -> [&str; 2] {
        match self {
            Runtime::RuncBinary(bin) => ["--runc-binary", bin.to_str().unwrap()],
            Runtime::ShimV2(name) => ["--runtime", name],
        }
    }
}

/// One runtime's half: how it is run, whether it runs a guest kernel, and the one run whose
/// output two cases read (a Bulkhead run is a guest boot).
struct Half {
    runtime: Runtime,
    guest_kernel: bool,
    printed: OnceLock<Output>,
}

type Case = (&'static str, fn(&Containerd, &Half));

const CASES: &[Case] = &[
    ("run_prints_output_and_exits_0", echo),
    ("uname_shows_the_expected_kernel", kernel),
    ("run_reports_exit_code_3", exit_code_3),
    ("run_of_an_image_mounts_and_unmounts_its_snapshot", image),
    ("events_report_the_task_lifecycle", events),
    ("long_task_starts", long_task_starts),
    ("task_pause_resume_ps_and_metrics", task_pause_resume),
    ("task_exec_prints_output_and_exit_code_4", task_exec),
    ("task_exec_t_gets_a_terminal", task_exec_t),
    ("task_kill_reports_137", task_kill),
];

fn run(c: &Containerd, runtime: &Runtime, id: &str, args: &[&str]) -> Output {
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

/// An image's container: containerd sends its snapshot as rootfs mounts, which the runtime's
/// shim mounts on the bundle's `rootfs` and must unmount at delete.
fn image(c: &Containerd, h: &Half) {
    let o = c.run_image(
        &h.runtime,
        "t-image",
        &["sh", "-c", "echo from-image; exit 6"],
    );
    assert_eq!(
        (text(&o.stdout).as_str(), o.status.code()),
        ("from-image\n", Some(6)),
        "{}",
        text(&o.stderr)
    );
    let bundle = c.bundles().join(c.id("t-image"));
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<_> = mounts
        .lines()
        .filter(|l| l.contains(bundle.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
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

/// `ctr events` running for one case, printing into a file: containerd 1.6 prints one line
/// per event, `<timestamp> <namespace> <topic> <event as JSON>`.
struct Events {
    child: Child,
    file: PathBuf,
}

impl Events {
    /// Started and subscribed: a namespace label change (`/namespaces/update`), made after
    /// it started, has reached the file. Labelled again until one does (a change made before
    /// `ctr events` subscribed is never printed).
    fn start(c: &Containerd, name: &str) -> Events {
        let file = c.dir.path().join(format!("{name}.events"));
        let child = c
            .cmd(&["events"])
            .stdout(fs::File::create(&file).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let events = Events { child, file };
        // The namespace exists once a task has run in it; this case may be the first.
        c.ctr(&["namespaces", "create", &c.namespace]);
        let t = Instant::now();
        for n in 0.. {
            if events.text().contains("/namespaces/update") {
                break;
            }
            let label = format!("bulkhead-test-events={n}");
            let o = c.ctr(&["namespaces", "label", &c.namespace, &label]);
            assert!(
                t.elapsed() < COMMAND_TIMEOUT,
                "ctr events printed nothing; the last label: {}",
                text(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        events
    }

    fn text(&self) -> String {
        text(&fs::read(&self.file).unwrap_or_default())
    }

    /// The events printed so far that `of` selects, as (topic, event), in order. A line
    /// that is not one whole event (one being written) is left out.
    fn printed(&self, of: &dyn Fn(&Value) -> bool) -> Vec<(String, Value)> {
        self.text()
            .lines()
            .filter_map(|line| {
                let topic = line.split_whitespace().find(|w| w.starts_with('/'))?;
                let at = line.find(topic)? + topic.len();
                let event: Value = serde_json::from_str(line[at..].trim()).ok()?;
                of(&event).then(|| (topic.to_string(), event))
            })
            .collect()
    }

    /// Waits until every topic of `want` has been printed for events `of` selects, then
    /// checks that they came in `want`'s order (others may come between). Returns the exit
    /// status the `/tasks/exit` event reports.
    fn expect(&self, of: &dyn Fn(&Value) -> bool, want: &[&str]) -> Option<u64> {
        let t = Instant::now();
        let (got, exit) = loop {
            let printed = self.printed(of);
            let got: Vec<_> = printed.iter().map(|(topic, _)| topic.clone()).collect();
            if want.iter().all(|w| got.iter().any(|g| g == w)) {
                let exit = printed.iter().find(|(topic, _)| topic == "/tasks/exit");
                // Protobuf's JSON leaves a zero out.
                let status = exit.map(|(_, e)| e["exit_status"].as_u64().unwrap_or(0));
                break (got, status);
            }
            assert!(
                t.elapsed() < COMMAND_TIMEOUT,
                "events {got:?} lack some of {want:?}; ctr events printed:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut rest = got.iter();
        assert!(
            want.iter().all(|w| rest.any(|g| g == w)),
            "events {got:?} are not in the order {want:?}"
        );
        exit
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events of task `id`'s container (its init process's and its execs').
fn of_task(id: String) -> impl Fn(&Value) -> bool {
    move |e| e["container_id"] == id.as_str()
}

/// A task's life as containerd's event subscribers see it: created, started, exited, deleted.
fn events(c: &Containerd, h: &Half) {
    let events = Events::start(c, "t-events");
    let o = run(c, &h.runtime, "t-events", &["/bin/sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let lifecycle = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let status = events.expect(&of_task(c.id("t-events")), &lifecycle);
    assert_eq!(status, Some(5), "the exit event's status");
}

/// A long-running task for the exec and kill cases; started when `ctr task ls` says RUNNING.
/// Its shim's socket is where the leak check will look for it.
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
    // Our copies run it, not others found on PATH (setup.sh installs both).
    if let Runtime::ShimV2(_) = h.runtime {
        let ours = processes_of(&c.shim);
        assert!(!ours.is_empty(), "no process of {}", c.shim.display());
    }
    if h.guest_kernel {
        let ours = processes_of(&c.bin);
        assert!(!ours.is_empty(), "no process of {}", c.bin.display());
    }
    let socket = c.shim_socket(&c.id("t-long"));
    assert!(
        socket.exists(),
        "no shim socket at {} (containerd's shim v2 convention): the leak check relies on it",
        socket.display()
    );
}

/// The long task's status through a pause and a resume, its processes and its metrics.
fn task_pause_resume(c: &Containerd, _: &Half) {
    let id = c.id("t-long");
    let status = || {
        let ls = text(&c.ctr(&["task", "ls"]).stdout);
        ls.lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    for (verb, want) in [("pause", "PAUSED"), ("resume", "RUNNING")] {
        let o = c.ctr(&["task", verb, &id]);
        assert!(o.status.success(), "task {verb}: {}", text(&o.stderr));
        assert_eq!(status(), want, "after task {verb}");
    }
    let o = c.ctr(&["task", "ps", &id]);
    let pids = text(&o.stdout).lines().skip(1).count();
    assert!(o.status.success() && pids >= 1, "task ps: {o:?}");
    let o = c.ctr(&["task", "metrics", &id]);
    assert!(
        o.status.success() && text(&o.stdout).contains("pids.current"),
        "task metrics: {} {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// An exec's output and exit code, and its events: added, started, exited.
fn task_exec(c: &Containerd, _: &Half) {
    let events = Events::start(c, "e1");
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
    let task = of_task(c.id("t-long"));
    // An exec's exit event names the exec as `id`, the others as `exec_id`.
    let of_e1 = |e: &Value| task(e) && (e["exec_id"] == "e1" || e["id"] == "e1");
    let status = events.expect(
        &of_e1,
        &["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
    );
    assert_eq!(status, Some(4), "the exec's exit event's status");
}

fn task_exec_t(c: &Containerd, _: &Half) {
    let line = format!(
        "ctr -a {} -n {} task exec -t --exec-id e2 {} /bin/sh -c 'tty; echo tty-ok'",
        c.address().display(),
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

/// Runs `body`; when it fails, prints the tail of containerd's log first (the shims' own
/// messages are there).
fn with_log_tail(c: &Containerd, body: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(body)) {
        eprintln!("containerd's log, last lines:\n{}", c.log_tail(40));
        resume_unwind(p)
    }
}

/// The trials of one half, named `<prefix>::<case>`.
fn half(
    prefix: &str,
    shared: &Arc<Shared<Containerd>>,
    runtime: fn(&Containerd) -> Runtime,
    guest_kernel: bool,
) -> Vec<Trial> {
    let half = move |c: &Containerd| Half {
        runtime: runtime(c),
        guest_kernel,
        printed: OnceLock::new(),
    };
    let cases = CASES.iter().map(|&(name, case)| {
        (name, move |c: &Containerd, h: &Half| {
            with_log_tail(c, || case(c, h))
        })
    });
    half_trials(prefix, shared, half, cases)
}

/// Nothing of the runtimes is left: no process of this suite's `bulkhead` or shim, no runtime
/// state or bundle in our namespace, no socket of a shim of ours.
///
/// Sockets: /run/containerd/s is shared with every containerd on the machine (other suites'
/// containerds run beside this one), so a "new entries since we started" check would count
/// theirs. Our shims' socket names derive from our private containerd's address, which no
/// other containerd has, so exactly those are checked ([`Containerd::shim_socket`]).
fn assert_nothing_left(c: &Containerd) {
    // containerd does not wait for a shim it told to shut down to exit.
    let t = Instant::now();
    while !processes_of(&c.shim).is_empty() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = processes_of(&c.shim);
    assert!(left.is_empty(), "shim processes left: {left:?}");
    let left = processes_of(&c.bin);
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
    let mut dirs = c.runtime_roots().to_vec();
    dirs.push(c.bundles());
    let left: Vec<_> = dirs
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|r| r.filter_map(Result::ok).map(|e| e.path()))
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
    let ids = c.ids.lock().unwrap().clone();
    let left: Vec<_> = ids
        .iter()
        .map(|id| c.shim_socket(id))
        .filter(|s| s.exists())
        .collect();
    assert!(left.is_empty(), "shim sockets left: {left:?}");
}

fn nothing_left_trial(name: &str, shared: &Arc<Shared<Containerd>>) -> Trial {
    let c = Arc::clone(shared);
    trial(name, move || {
        let c = c.get();
        with_log_tail(c, || assert_nothing_left(c))
    })
}

fn main() {
    let shared = Shared::new(Containerd::start);
    let mut trials = half("runc", &shared, |_| Runtime::RuncBinary(RUNC.into()), false);
    let c = Arc::clone(&shared);
    trials.push(trial("broken_runtime_fails_create_clearly", move || {
        let c = c.get();
        let wrapper = Runtime::RuncBinary(broken_runtime(c.dir.path(), &c.bin));
        let o = run(c, &wrapper, "t-broken", &["/bin/true"]);
        assert_ne!(o.status.code(), Some(0));
        assert!(
            text(&o.stderr).contains("/nonexistent/vmlinux not found"),
            "{}",
            text(&o.stderr)
        );
        assert_nothing_left(c);
    }));
    let bulkhead = |c: &Containerd| Runtime::RuncBinary(c.bin.clone());
    trials.extend(half("bulkhead", &shared, bulkhead, true));
    trials.push(nothing_left_trial("bulkhead::nothing_left_behind", &shared));
    let shim = |_: &Containerd| Runtime::ShimV2(SHIM_RUNTIME);
    trials.extend(half("bulkhead_v2", &shared, shim, true));
    trials.push(nothing_left_trial(
        "bulkhead_v2::nothing_left_behind",
        &shared,
    ));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("ctr_run", &needs, trials, shared)
}

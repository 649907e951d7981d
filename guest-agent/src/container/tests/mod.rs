//! Host tests of the container module: real containers from a busybox rootfs, checked from the
//! inside through their stdout.
//!
//! They need root ([`require`]: a skip line without `BULKHEAD_E2E=1`, a failure with it) and
//! run each in a fresh copy of the test
//! binary ([`isolated`]): that process is the only one whose reaper collects container statuses,
//! it is a child subreaper (as PID 1 is in the guest), and a crash cannot take other tests along.

mod fixture;

mod basic;
mod errors;
mod lifecycle;
mod security;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bulkhead_test_support::{require_for, Need, SKIP_MARKER};
use nix::unistd::Pid;
use serde_json::Value;

use super::{Container, ContainerError, CreateOptions, Stdio};
use crate::reaper::{ExitStatus, Reaper};

pub use fixture::{base_spec, Bundle};

const ISOLATED_ENV: &str = "BULKHEAD_CONTAINER_TEST";
const DONE_MARKER: &str = "<<isolated test passed>>";

/// Declares a host test that runs `body` in its own process as root.
macro_rules! container_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            fn body() $body
            $crate::container::tests::isolated(
                concat!(module_path!(), "::", stringify!($name)),
                body,
            );
        }
    };
}
pub(crate) use container_test;

/// Runs `body` in a fresh test process (see the module doc); needs root.
pub fn isolated(path: &str, body: fn()) {
    let name = path.strip_prefix("bulkhead_agent::").unwrap_or(path);
    if std::env::var(ISOLATED_ENV).as_deref() == Ok(name) {
        run_forked(body);
        return;
    }
    if !require_for(name, &[Need::Root]) {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED_ENV, name)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let err = errs.join().unwrap();
    // The exit status may be collected by another test's reaper in this process: the marker
    // is what counts.
    let _ = child.wait();
    // The body's own prerequisites are checked in the child: pass its skip line on.
    for line in out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with(SKIP_MARKER))
    {
        // Past libtest's capture, as `require` prints it (the parent passes).
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    assert!(
        out.contains(DONE_MARKER),
        "isolated test {name} failed\n--- stdout\n{out}\n--- stderr\n{err}"
    );
}

/// Runs `body` in a forked copy of this process that has a single thread, like the agent's
/// processes: every thread it starts blocks SIGCHLD, so the reaper sees each exit at once.
fn run_forked(body: fn()) {
    // SAFETY: the child only runs test code and leaves through _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = std::panic::catch_unwind(|| {
                reaper();
                body();
            })
            .is_ok();
            if ok {
                println!("{DONE_MARKER}");
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // SAFETY: _exit ends the process without running the harness's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 101 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).unwrap();
        }
    }
}

/// The process-wide reaper of an isolated test process, which is also made a child subreaper.
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        Reaper::start().unwrap()
    })
}

/// A container id unique in this process.
pub fn unique_id() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bulkhead-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pipe: (read end, write end).
pub fn pipe() -> (std::fs::File, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (std::fs::File::from(r), w)
}

/// Reads a pipe to its end on a thread.
fn drain(mut f: std::fs::File) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    })
}

/// The output of a process: its stdout and stderr, read to the end on threads.
pub struct Output {
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

impl Output {
    /// Stdio for a process whose output we collect, and the collector.
    pub fn capture() -> (Stdio, Output) {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let stdio = Stdio::Pipes {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        (
            stdio,
            Output {
                out: drain(out_r),
                err: drain(err_r),
            },
        )
    }

    /// (stdout, stderr), once the writers are gone.
    pub fn finish(self) -> (String, String) {
        (self.out.join().unwrap(), self.err.join().unwrap())
    }
}

/// What a finished container did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Creates a container from `spec` (JSON) on `rootfs`.
pub fn create(
    spec: &Value,
    rootfs: &Path,
    stdio: Stdio,
    options: CreateOptions,
) -> Result<Container, ContainerError> {
    let spec = serde_json::from_value(spec.clone()).unwrap();
    Container::create_with(&unique_id(), &spec, rootfs, stdio, reaper(), options)
}

/// Creates, starts and waits for a container; destroys it afterwards.
pub fn run_with(spec: &Value, bundle: &Bundle, options: CreateOptions) -> Finished {
    let (stdio, output) = Output::capture();
    let mut c = create(spec, &bundle.rootfs, stdio, options).unwrap();
    c.start().unwrap();
    let status = wait(c.init_pid());
    let (stdout, stderr) = output.finish();
    c.destroy().unwrap();
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// [`run_with`] with default options.
pub fn run(spec: &Value, bundle: &Bundle) -> Finished {
    run_with(spec, bundle, CreateOptions::default())
}

/// Runs `sh -c script` in a container made from the base spec changed by `tweak`; returns
/// stdout, checking the exit status is 0.
pub fn sh(bundle: &Bundle, script: &str, tweak: impl FnOnce(&mut Value)) -> String {
    let mut spec = base_spec(script);
    tweak(&mut spec);
    let done = run(&spec, bundle);
    assert_eq!(
        done.status,
        ExitStatus::Exited(0),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        done.stdout,
        done.stderr
    );
    done.stdout
}

/// True when the agent's cgroup offers `controller` to its children (not on every host).
pub fn controller_available(controller: &str) -> bool {
    bulkhead_test_support::cgroup_v2_controllers()
        .iter()
        .any(|c| c == controller)
}

/// Makes an `OwnedFd` from a raw descriptor the caller owns.
pub fn owned(fd: i32) -> OwnedFd {
    // SAFETY: callers pass descriptors they just created and own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Waits for `pid` with a generous timeout, so a broken test fails instead of hanging.
pub fn wait(pid: Pid) -> ExitStatus {
    reaper()
        .wait_timeout(pid, std::time::Duration::from_secs(60))
        .unwrap_or_else(|| panic!("pid {pid} did not exit"))
}

#[test]
fn containers_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Container>();
}

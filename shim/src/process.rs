//! Process plumbing shared by `create`, `run` and `exec`: forking the monitor or exec proxy,
//! the readiness pipe, pid files, waiting for a non-child to exit, and signal forwarding.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("fork")]
    Fork(#[source] nix::Error),
    #[error("pipe")]
    Pipe(#[source] nix::Error),
    #[error("write pid file {path}")]
    PidFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Child(String),
    #[error("the sandbox monitor exited before it was ready")]
    Vanished,
}

/// What a forked monitor or exec proxy reports to the process that forked it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    #[serde(default)]
    pub error: Option<String>,
}

/// Write end of the readiness pipe, held by the child.
pub struct ReadyWriter(File);

impl ReadyWriter {
    /// Reports success or the one-line error; consumes the pipe so it is reported once.
    pub fn report(mut self, error: Option<String>) {
        let mut line = serde_json::to_vec(&Ready { error }).unwrap_or_default();
        line.push(b'\n');
        let _ = self.0.write_all(&line);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Forks. The child runs `child(ready)` and exits with its return value, never returning
/// here; the parent gets the child's pid and the read end of the readiness pipe.
///
/// Only call while the process is single-threaded (the child inherits one thread).
pub fn fork_with_ready(
    child: impl FnOnce(ReadyWriter) -> i32,
) -> Result<(Pid, File), ProcessError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ProcessError::Pipe)?;
    // SAFETY: callers fork while single-threaded (create/run/exec before any thread starts), so
    // the child's copy of the address space holds no lock another thread owned.
    match unsafe { fork() }.map_err(ProcessError::Fork)? {
        ForkResult::Child => {
            drop(r);
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                child(ReadyWriter(File::from(w)))
            }))
            .unwrap_or(255);
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(w);
            Ok((child, File::from(r)))
        }
    }
}

/// Waits for the child's readiness report; EOF without one means it died.
pub fn wait_ready(mut r: File) -> Result<(), ProcessError> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    match serde_json::from_slice::<Ready>(line) {
        Ok(Ready { error: None }) => Ok(()),
        Ok(Ready { error: Some(e) }) => Err(ProcessError::Child(e)),
        Err(_) => Err(ProcessError::Vanished),
    }
}

/// Writes a pid file atomically (temporary file + rename), as engines read it right away.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), ProcessError> {
    let err = |source| ProcessError::PidFile {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(pid.to_string().as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// A pidfd for any process (not only children), so its exit can be awaited without races.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory involved.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh descriptor that nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Waits up to `timeout` for process `pid` to exit (or become a zombie). True if it did.
pub fn wait_exit(pid: i32, start_time: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let pidfd = pidfd_open(pid);
    loop {
        if !crate::state::process_alive(pid, start_time) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &pidfd {
            Some(fd) => {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(100) as i32;
                // SAFETY: one valid pollfd on our stack for the duration of the call.
                unsafe { libc::poll(&mut p, 1, ms) };
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Signals a monitor or proxy forwards to what it stands for (catchable, not job control).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGCONT,
];

/// Blocks the forwarded signals and SIGWINCH (a terminal's resize, passed on as a new size)
/// in this thread and the threads it will spawn, so that one place takes them (a signalfd in
/// the monitor, [`next_signal`] in a thread elsewhere) and no vCPU thread is ever interrupted.
pub fn block_forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGWINCH);
    let _ = set.thread_block();
    set
}

/// Waits for the next blocked forwarded signal.
pub fn next_signal(set: &SigSet) -> Option<i32> {
    set.wait().ok().map(|s| s as i32)
}

/// Makes `cmd`'s child start with no blocked signals. The monitor and proxies block the
/// forwarded signals in every thread (see [`block_forwarded`]), and a signal mask survives
/// fork and exec: without this a hook would ignore SIGTERM.
pub fn unblock_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask, which is
    // async-signal-safe, on a local empty set.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Moves stdio away: returns dups of fds 0, 1, 2 (close-on-exec) and points 0/1/2 at
/// /dev/null, so nothing this process prints can land in the container's output and the
/// caller's copies are the only ones held besides the returned fds.
pub fn take_stdio() -> [Option<OwnedFd>; 3] {
    let mut out = [None, None, None];
    for (i, slot) in out.iter_mut().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor or -1.
        let fd = unsafe { libc::fcntl(i as RawFd, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            // SAFETY: fresh descriptor from the line above, owned by nobody else.
            *slot = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    null_stdio();
    out
}

/// Points fds 0, 1 and 2 at /dev/null.
pub fn null_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for i in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays valid for the call.
            unsafe { libc::dup2(null.as_raw_fd(), i) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_are_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(write_pid_file(Path::new("/nonexistent/dir/pid"), 1).is_err());
    }

    #[test]
    fn waits_for_non_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = crate::state::process_start_time(pid).unwrap();
        assert!(!wait_exit(pid, start, Duration::from_millis(10)));
        assert!(wait_exit(pid, start, Duration::from_secs(5)));
        child.wait().unwrap();
    }

    #[test]
    fn ready_reports() {
        let (r, w) = nix::unistd::pipe().unwrap();
        ReadyWriter(File::from(w)).report(Some("boom".into()));
        assert_eq!(wait_ready(File::from(r)).unwrap_err().to_string(), "boom");
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert!(matches!(
            wait_ready(File::from(r)),
            Err(ProcessError::Vanished)
        ));
        let (r, w) = nix::unistd::pipe().unwrap();
        ReadyWriter(File::from(w)).report(None);
        wait_ready(File::from(r)).unwrap();
    }
}

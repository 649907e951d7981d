//! The one place that collects exit statuses of the agent's children.
//!
//! As PID 1 the agent inherits every orphan in the guest, and `waitpid(-1)` anywhere would steal a
//! status another part of the agent is waiting for. So exactly one thread reaps, and everyone else
//! asks it: [`Reaper::wait`] blocks until the status of a given pid is known, whether the child
//! exited before or after the call. Statuses of pids nobody asked for (reparented orphans) are
//! kept only until the reaper has more than [`MAX_UNCLAIMED`] of them, then the oldest are dropped.
//!
//! An event loop that cannot block in [`Reaper::wait`] registers a notifier
//! ([`Reaper::set_notifier`], e.g. a write to an eventfd) and claims statuses with
//! [`Reaper::try_wait`] when it fires.
//!
//! SIGCHLD must be blocked in every thread before [`Reaper::start`] (call
//! [`block_sigchld`] first thing in `main`); children must unblock it before `exec`
//! ([`unblock_all_signals`]), or the workload starts with a signal mask it never asked for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Statuses of unclaimed pids kept before the oldest are forgotten.
pub const MAX_UNCLAIMED: usize = 1024;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention runc and Docker report: the code, or 128 + the signal.
    #[allow(dead_code)] // for the container module
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => 128 + sig,
        }
    }
}

/// Called by the reaping thread after it recorded one or more statuses.
pub type Notifier = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct Table {
    done: HashMap<i32, ExitStatus>,
    order: VecDeque<i32>,
    notifier: Option<Notifier>,
    /// Threads blocked in `wait`/`wait_timeout`; the condvar is only signalled when there are
    /// some (a futex wake is a syscall, and in the agent nobody usually blocks).
    waiting: usize,
}

/// Handle to the reaping thread; cheap to clone.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<(Mutex<Table>, Condvar)>,
}

/// Errors from starting the reaper.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// SIGCHLD could not be blocked.
    #[error("block SIGCHLD")]
    Mask(#[source] Errno),
    /// The reaping thread could not be spawned.
    #[error("spawn reaper thread")]
    Spawn(#[source] std::io::Error),
}

/// Blocks SIGCHLD in the calling thread; threads spawned afterwards inherit the mask.
pub fn block_sigchld() -> Result<(), ReaperError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(ReaperError::Mask)
}

/// Blocks SIGCHLD and SIGPIPE, and gives SIGPIPE back its default action (Rust's runtime
/// ignores it, and an ignored signal stays ignored across exec). Blocked, a broken pipe or
/// socket still fails the agent's write with EPIPE; children start with an empty mask and
/// nothing pending, so they get a normal SIGPIPE without any per-spawn work.
pub fn block_sigchld_and_sigpipe() -> Result<(), ReaperError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGPIPE);
    set.thread_block().map_err(ReaperError::Mask)?;
    // SAFETY: installing the default disposition has no handler to be unsafe about.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) }
        .map(drop)
        .map_err(ReaperError::Mask)
}

/// Unblocks every signal in the calling thread; for a child between `fork` and `exec`.
#[allow(dead_code)] // for children forked by the container module; the agent's spawner does it raw
pub fn unblock_all_signals() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

impl Reaper {
    /// Starts the reaping thread. SIGCHLD must already be blocked (see [`block_sigchld`]).
    pub fn start() -> Result<Self, ReaperError> {
        block_sigchld()?;
        let reaper = Reaper {
            inner: Arc::new((Mutex::new(Table::default()), Condvar::new())),
        };
        let worker = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || worker.run())
            .map_err(ReaperError::Spawn)?;
        Ok(reaper)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        // A thread that does not block SIGCHLD (one started before `block_sigchld`, or a test
        // harness thread) can swallow the signal, so the wait also times out now and then and
        // polls; in the agent every thread blocks it and the timeout is only a safety net.
        let timeout = libc::timespec {
            tv_sec: 2,
            tv_nsec: 0,
        };
        loop {
            // One SIGCHLD may stand for many exits: drain every finished child each time.
            self.reap_all();
            // SAFETY: `set` is a valid, initialised sigset_t and `timeout` a valid timespec; a
            // null siginfo pointer is allowed. The return value only says whether a signal came.
            unsafe {
                libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout);
            }
        }
    }

    fn reap_all(&self) {
        let mut recorded = false;
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            self.record(status.0, status.1);
            recorded = true;
        }
        if recorded {
            let notifier = {
                let table = self.table();
                if table.waiting > 0 {
                    self.inner.1.notify_all();
                }
                table.notifier.clone()
            };
            // Called without the table lock, so the notifier may call back into the reaper.
            if let Some(notify) = notifier {
                notify();
            }
        }
    }

    /// Installs the function the reaping thread calls after recording exits (replacing any
    /// earlier one). It runs on the reaping thread: keep it short and non-blocking.
    pub fn set_notifier(&self, notifier: Notifier) {
        self.table().notifier = Some(notifier);
    }

    /// The status of `pid` if it has been reaped (handed out once, like [`Reaper::wait`]).
    pub fn try_wait(&self, pid: Pid) -> Option<ExitStatus> {
        let mut table = self.table();
        let status = table.done.remove(&pid.as_raw())?;
        table.order.retain(|p| *p != pid.as_raw());
        Some(status)
    }

    fn record(&self, pid: Pid, status: ExitStatus) {
        let mut table = self.table();
        table.done.insert(pid.as_raw(), status);
        table.order.push_back(pid.as_raw());
        while table.order.len() > MAX_UNCLAIMED {
            if let Some(old) = table.order.pop_front() {
                table.done.remove(&old);
            }
        }
    }

    /// Blocks until `pid` has been reaped and returns how it ended. Each status is handed out once.
    pub fn wait(&self, pid: Pid) -> ExitStatus {
        let mut table = self.table();
        loop {
            if let Some(status) = table.done.remove(&pid.as_raw()) {
                table.order.retain(|p| *p != pid.as_raw());
                return status;
            }
            table.waiting += 1;
            table = self.inner.1.wait(table).unwrap_or_else(|p| p.into_inner());
            table.waiting -= 1;
        }
    }

    /// Like [`Reaper::wait`] but gives up after `timeout`, returning `None`.
    #[allow(dead_code)] // for the container module
    pub fn wait_timeout(&self, pid: Pid, timeout: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let mut table = self.table();
        loop {
            if let Some(status) = table.done.remove(&pid.as_raw()) {
                table.order.retain(|p| *p != pid.as_raw());
                return Some(status);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            table.waiting += 1;
            table = self
                .inner
                .1
                .wait_timeout(table, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            table.waiting -= 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    /// One reaper per test process: two would steal each other's children.
    pub(crate) fn shared() -> Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper::start().unwrap()).clone()
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test collects them
    fn statuses_reach_the_waiter_whenever_it_asks() {
        let reaper = shared();
        let fast = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let killed = Command::new("sleep").arg("30").spawn().unwrap();
        let fast_pid = Pid::from_raw(fast.id() as i32);
        let killed_pid = Pid::from_raw(killed.id() as i32);
        // Let the fast child finish before anyone waits for it.
        std::thread::sleep(Duration::from_millis(200));
        nix::sys::signal::kill(killed_pid, Signal::SIGKILL).unwrap();
        assert_eq!(reaper.wait(fast_pid), ExitStatus::Exited(3));
        assert_eq!(reaper.wait(killed_pid), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(
            reaper.wait_timeout(Pid::from_raw(999_999), Duration::from_millis(50)),
            None
        );
    }

    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test collects them
    fn notifier_fires_and_try_wait_claims_once() {
        let reaper = shared();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        reaper.set_notifier(Arc::new(move || {
            let _ = tx.lock().unwrap().send(());
        }));
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            // Other tests' children may fire the notifier too; keep looking for ours.
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
            if let Some(status) = reaper.try_wait(pid) {
                break status;
            }
            assert!(std::time::Instant::now() < deadline);
        };
        assert_eq!(status, ExitStatus::Exited(7));
        assert_eq!(reaper.try_wait(pid), None);
    }
}

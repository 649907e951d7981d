//! Processes the agent runs: their stdio, spawning, relaying and exit handling.
//!
//! A [`Process`] is created with its pipes (or terminal) already open — the child's ends wait in
//! a [`Stdio`], the agent's ends in the [`Relay`] — so the host can attach its streams before the
//! program starts and no output can be missed.

pub mod pty;
pub mod relay;
pub mod spawn;
pub mod stdio;

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;

use self::relay::{
    FdKind, Reg, Relay, GUEST_ERR, GUEST_IN, GUEST_OUT, HOST_ERR, HOST_IN, HOST_OUT,
};
pub use self::stdio::Stdio;
use crate::reaper::ExitStatus;
use bulkhead_protocol::stream::StreamKind;

/// Which host streams a process expects before it may start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started. A container's init already exists (waiting for start) and has a pid.
    Created(Option<Pid>),
    Running(Pid),
    Exited(Pid, ExitStatus),
}

/// Errors setting up a process's stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("create pipe")]
    Pipe(#[source] Errno),
    #[error("open terminal")]
    Pty(#[from] pty::PtyError),
}

/// Errors attaching a host stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("stream not expected")]
    NotExpected,
    #[error("stream already attached")]
    Duplicate,
}

/// One process known to the agent.
#[derive(Debug)]
pub struct Process {
    pub terminal: bool,
    pub state: State,
    /// The child's stdio until it is started.
    pub child_stdio: Option<Stdio>,
    pub relay: Relay,
    expected: Streams,
    /// Host streams attached so far (a terminal stream counts as stdout). Kept apart from the
    /// relay's slots, which close again at EOF.
    attached: Streams,
}

impl Process {
    /// Creates the process's pipes or terminal; `expected` says which host streams will come
    /// (for a terminal: one terminal stream, expected if any flag is set). A terminal comes
    /// from `ptmx` when given (a container's devpts), else from the agent's.
    pub fn new(
        terminal: Option<Option<(u16, u16)>>,
        expected: Streams,
        ptmx: Option<OwnedFd>,
    ) -> Result<Process, StdioError> {
        let mut relay = Relay::new(terminal.is_some());
        let child_stdio = match terminal {
            Some(size) => {
                let pty = pty::open_pty(size, ptmx)?;
                relay.attach(GUEST_IN, pty.master, FdKind::Pty, Reg::No);
                Stdio::Terminal(pty.slave)
            }
            None => {
                let stdin = expected
                    .stdin
                    .then(|| pipe(&mut relay, GUEST_IN, false))
                    .transpose()?;
                let stdout = expected
                    .stdout
                    .then(|| pipe(&mut relay, GUEST_OUT, true))
                    .transpose()?;
                let stderr = expected
                    .stderr
                    .then(|| pipe(&mut relay, GUEST_ERR, true))
                    .transpose()?;
                Stdio::Pipes {
                    stdin,
                    stdout,
                    stderr,
                }
            }
        };
        Ok(Process {
            terminal: terminal.is_some(),
            state: State::Created(None),
            child_stdio: Some(child_stdio),
            relay,
            expected,
            attached: Streams::default(),
        })
    }

    /// Relays `master` (non-blocking, as the init opened it) instead of the terminal made by
    /// [`Process::new`], whose slave the child dropped for a pty of its own devpts (see
    /// `Container::take_console`); sized as asked. Only before the relay is first synced with
    /// epoll.
    pub fn replace_terminal(
        &mut self,
        master: OwnedFd,
        size: Option<(u16, u16)>,
    ) -> Result<(), StdioError> {
        if let Some((rows, cols)) = size {
            pty::resize(&master, rows, cols)?;
        }
        self.relay.attach(GUEST_IN, master, FdKind::Pty, Reg::No);
        Ok(())
    }

    /// The relay slot a host stream of `kind` goes to.
    fn host_slot(&self, kind: StreamKind) -> Result<usize, AttachError> {
        let e = self.expected;
        let slot = match (self.terminal, kind) {
            (true, StreamKind::Terminal) if e.stdin || e.stdout || e.stderr => HOST_IN,
            (false, StreamKind::Stdin) if e.stdin => HOST_IN,
            (false, StreamKind::Stdout) if e.stdout => HOST_OUT,
            (false, StreamKind::Stderr) if e.stderr => HOST_ERR,
            _ => return Err(AttachError::NotExpected),
        };
        Ok(slot)
    }

    /// Attaches a host stream connection (non-blocking, close-on-exec; `reg`: how it stands
    /// with epoll).
    pub fn attach(&mut self, kind: StreamKind, sock: OwnedFd, reg: Reg) -> Result<(), AttachError> {
        let slot = self.host_slot(kind)?;
        let flag = match kind {
            StreamKind::Stdin => &mut self.attached.stdin,
            StreamKind::Stderr => &mut self.attached.stderr,
            StreamKind::Stdout | StreamKind::Terminal => &mut self.attached.stdout,
        };
        if *flag {
            return Err(AttachError::Duplicate);
        }
        *flag = true;
        self.relay.attach(slot, sock, FdKind::Socket, reg);
        Ok(())
    }

    /// Every expected host stream is attached.
    pub fn streams_ready(&self) -> bool {
        let (e, a) = (self.expected, self.attached);
        if self.terminal {
            return !(e.stdin || e.stdout || e.stderr) || a.stdout;
        }
        (!e.stdin || a.stdin) && (!e.stdout || a.stdout) && (!e.stderr || a.stderr)
    }

    /// Stdin will not come (closed before it was attached, or closed on request).
    pub fn give_up_stdin(&mut self) {
        self.expected.stdin = false;
    }
}

/// Creates a pipe; the agent's end goes into `relay` at `slot` (non-blocking), the child's end
/// (blocking, as programs expect) is returned. `output`: the child writes.
fn pipe(relay: &mut Relay, slot: usize, output: bool) -> Result<OwnedFd, StdioError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)?;
    let (ours, theirs) = if output { (read, write) } else { (write, read) };
    fcntl(ours.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(StdioError::Pipe)?;
    relay.attach(slot, ours, FdKind::Pipe, Reg::No);
    Ok(theirs)
}

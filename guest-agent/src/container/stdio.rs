//! Installing a process's standard streams ([`Stdio`], the agent's type) in the cloned child.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::error::{AtStep, ChildResult, ContainerError, Step};
use super::sys;
pub use crate::process::Stdio;

/// What the child needs: three source descriptors and whether they are a terminal.
pub struct ChildStdio {
    fds: [RawFd; 3],
    terminal: bool,
    /// The terminal's path (e.g. `/dev/pts/3`): `/dev/console` is a bind mount of it, and a
    /// bind mount needs a path in the child's own mount namespace, not a descriptor.
    tty_path: Option<CString>,
    /// Keeps `/dev/null` open until the child has its copies.
    _null: Option<File>,
}

impl ChildStdio {
    /// Borrows the descriptors of `stdio` (which must outlive the clone).
    pub fn new(stdio: &Stdio) -> Result<ChildStdio, ContainerError> {
        match stdio {
            Stdio::Terminal(tty) => {
                let fd = tty.as_raw_fd();
                let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map_err(|e| ContainerError::Io("find the terminal's path", e))?;
                Ok(ChildStdio {
                    fds: [fd; 3],
                    terminal: true,
                    tty_path: CString::new(path.into_os_string().into_encoded_bytes()).ok(),
                    _null: None,
                })
            }
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let null = if stdin.is_none() || stdout.is_none() || stderr.is_none() {
                    Some(
                        File::options()
                            .read(true)
                            .write(true)
                            .open("/dev/null")
                            .map_err(|e| ContainerError::Io("open /dev/null", e))?,
                    )
                } else {
                    None
                };
                let null_fd = null.as_ref().map_or(-1, AsRawFd::as_raw_fd);
                let pick = |fd: &Option<OwnedFd>| fd.as_ref().map_or(null_fd, AsRawFd::as_raw_fd);
                Ok(ChildStdio {
                    fds: [pick(stdin), pick(stdout), pick(stderr)],
                    terminal: false,
                    tty_path: None,
                    _null: null,
                })
            }
        }
    }

    /// The descriptors the child must keep open until it has set up its streams.
    pub fn fds(&self) -> [RawFd; 3] {
        self.fds
    }

    /// The pty slave's path, when the process has a terminal.
    pub fn terminal(&self) -> Option<&CStr> {
        self.tty_path.as_deref()
    }

    /// True when the streams are a terminal.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Installs the streams as 0, 1 and 2 (child side) and, with `claim_tty`, makes a terminal
    /// the controlling one; without, a terminal is only installed, for a caller that may still
    /// swap it (the init, see `create::InitPlan::terminal`) and then calls [`claim_terminal`].
    pub fn install(&self, winsize: Option<(u16, u16)>, claim_tty: bool) -> ChildResult<()> {
        let mut src = self.fds;
        // A source numbered 0–2 would be clobbered by an earlier dup2: move it up first.
        for fd in src.iter_mut() {
            if *fd < 3 {
                *fd = sys::dup_above(*fd, 3).step(Step::Stdio)?;
            }
        }
        if self.terminal && claim_tty {
            claim_terminal(src[0], winsize)?;
        }
        for (target, fd) in src.iter().enumerate() {
            sys::dup2(*fd, target as RawFd).step_at(Step::Stdio, target)?;
        }
        Ok(())
    }
}

/// Opens the container's own `dev/pts/ptmx` below `root` (its devpts instance), non-blocking
/// and close-on-exec, for a terminal whose `/dev/pts/N` name means the same inside the
/// container: a pty of the agent's devpts shows up there under a name that means another
/// device. The path is the container's, so it is resolved in-root without magic links and must
/// lead to a `ptmx` (char 5:2). `None` when the container has none (allocation-free: the init
/// calls it after the clone, the agent for exec'd processes).
pub fn open_container_ptmx(root: RawFd) -> Option<RawFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK;
    let fd = sys::openat2(root, c"dev/pts/ptmx", flags, super::rootfs_path::RESOLVE).ok()?;
    match sys::fstat(fd) {
        Ok(st)
            if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(5, 2) =>
        {
            Some(fd)
        }
        _ => {
            sys::close(fd);
            None
        }
    }
}

/// Starts a new session with terminal `fd` as its controlling terminal, sized `winsize`.
pub fn claim_terminal(fd: RawFd, winsize: Option<(u16, u16)>) -> ChildResult<()> {
    sys::setsid().step(Step::Terminal)?;
    sys::set_controlling_tty(fd).step(Step::Terminal)?;
    if let Some((rows, cols)) = winsize {
        sys::set_winsize(fd, rows, cols).step(Step::Terminal)?;
    }
    Ok(())
}

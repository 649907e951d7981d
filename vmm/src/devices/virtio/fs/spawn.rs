//! Starting a share's server process: a fresh program (exec), never a fork of the
//! multi-threaded monitor that goes on running its code.
//!
//! The child is made with `clone(CLONE_NEWPID)`: the server is PID 1 of a PID namespace of its
//! own, so the `/proc` it mounts shows only itself (see [`super::sandbox::mount_private_proc`])
//! and `kill` could name no other process even if its seccomp list allowed it. Between
//! `clone` and `execve` the child runs only async-signal-safe calls on data prepared before
//! (the monitor has other threads, whose locks the child would inherit held):
//! 1. the fds it keeps are first moved above 9, then put at 0-4 (`dup2` clears close-on-exec):
//!    `/dev/null` as stdin and stdout, a pipe as stderr (the monitor reads it when the server
//!    is gone: its panic message, its seccomp report), the socket at
//!    [`server::SOCKET_FD`] and the share's `O_PATH` directory fd at [`server::SHARE_FD`];
//! 2. `close_range(5, ~0)`: no other fd of the monitor survives, whether or not it was
//!    close-on-exec (fds the engine passed down, the KVM fds, guest memory);
//! 3. `PR_SET_PDEATHSIG(SIGKILL)`: the server dies with the thread that started it (the
//!    monitor's queue thread of this share, which lives as long as the device) and so with
//!    the monitor. If the monitor is gone before this line, the server reads end-of-file on
//!    its socket first thing and exits;
//! 4. `execve` with an empty environment.
//!
//! Needs `CAP_SYS_ADMIN` (a new PID namespace), which the monitor has while it builds its VM.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::unistd::Pid;

use super::server;

/// Why the server process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program or an argument holds a NUL byte.
    #[error("the server's command line holds a NUL byte")]
    Nul,
    /// `/dev/null` or the stderr pipe.
    #[error("cannot prepare the server's stdio")]
    Stdio(#[source] nix::Error),
    /// `clone` failed.
    #[error("cannot create the server process")]
    Clone(#[source] nix::Error),
}

/// A started server process.
#[derive(Debug)]
pub struct Child {
    /// Its pid (in the monitor's PID namespace).
    pub pid: Pid,
    /// The read end of its stderr (non-blocking).
    pub stderr: File,
}

/// Where each kept fd goes in the child: stdin, stdout, stderr, socket, share.
const TARGETS: [RawFd; 5] = [0, 1, 2, server::SOCKET_FD, server::SHARE_FD];
/// First fd number the kept fds are parked at before they move to [`TARGETS`].
const PARK: RawFd = 10;
/// The child's exit status when a step before `execve` failed, and when `execve` failed.
const SETUP_FAILED: i32 = 126;
const EXEC_FAILED: i32 = 127;

/// Starts `program args…` as a share's server with `sock` and `share` (see the module docs).
/// The caller keeps its own ends; the child's are closed here once it has them.
pub fn spawn(
    program: &Path,
    args: &[OsString],
    sock: OwnedFd,
    share: BorrowedFd<'_>,
) -> Result<Child, SpawnError> {
    let cstr = |s: &[u8]| CString::new(s).map_err(|_| SpawnError::Nul);
    let path = cstr(program.as_os_str().as_bytes())?;
    let mut argv = vec![path.clone()];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];

    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(SpawnError::Stdio)?;
    // SAFETY: `open` just returned this fd; nothing else owns it.
    let null = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(null) };
    let (err_r, err_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(SpawnError::Stdio)?;
    // Only our end reads without blocking: the server's writes (a panic message, the seccomp
    // report) must wait for room rather than fail.
    nix::fcntl::fcntl(
        err_w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
    )
    .map_err(SpawnError::Stdio)?;
    let sources: [RawFd; 5] = [
        null.as_raw_fd(),
        null.as_raw_fd(),
        err_w.as_raw_fd(),
        sock.as_raw_fd(),
        share.as_raw_fd(),
    ];

    // SAFETY: a raw `clone` without a new stack behaves like `fork`: the child continues here
    // on a copy of this thread's stack and memory. It only runs `child_steps`, which makes
    // async-signal-safe calls on the fds and pointers prepared above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if pid == 0 {
        // SAFETY: we are the child of the clone above (see there).
        unsafe { child_steps(&sources, path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr()) }
    }
    if pid < 0 {
        return Err(SpawnError::Clone(nix::Error::last()));
    }
    // The child's ends: only it keeps them.
    drop((null, err_w, sock));
    Ok(Child {
        pid: Pid::from_raw(pid as libc::pid_t),
        stderr: File::from(err_r),
    })
}

/// The child between `clone` and `execve` (see the module docs): only raw, async-signal-safe
/// calls; any failure ends it with [`SETUP_FAILED`] or [`EXEC_FAILED`].
///
/// # Safety
/// Only in the child of a fork-like `clone`, with `argv`/`envp` NULL-terminated arrays of
/// valid C strings.
unsafe fn child_steps(
    sources: &[RawFd; 5],
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    let mut parked = [-1; 5];
    for (i, &fd) in sources.iter().enumerate() {
        // SAFETY: `fcntl(F_DUPFD)` on an fd number; no memory is involved.
        let p = unsafe { libc::fcntl(fd, libc::F_DUPFD, PARK) };
        if p < 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        parked[i] = p;
    }
    for (i, &fd) in parked.iter().enumerate() {
        // SAFETY: `dup2` on fd numbers.
        if unsafe { libc::dup2(fd, TARGETS[i]) } < 0 {
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
    }
    // SAFETY: closes fd numbers; the parked copies go with everything else.
    let closed = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (server::SHARE_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    // SAFETY: `prctl` with integer arguments.
    let death = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if closed != 0 || death != 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(SETUP_FAILED) }
    }
    // SAFETY: the caller guarantees the pointers; on success nothing returns here.
    unsafe {
        libc::execve(path, argv, envp);
        libc::_exit(EXEC_FAILED)
    }
}

/// The last non-empty line the server wrote to its stderr (at most 4 KiB read, control
/// characters shown as `?`, cut at 300 characters): its panic message or seccomp report.
pub fn last_words(stderr: &mut File) -> Option<String> {
    use std::io::Read;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match stderr.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(
        line.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(300)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn last_words_are_the_last_line_made_safe() {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let mut w = File::from(w);
        w.write_all(b"first\nseccomp: the \x1b[31mend\n\n").unwrap();
        let mut r = File::from(r);
        assert_eq!(last_words(&mut r).as_deref(), Some("seccomp: the ?[31mend"));
        assert_eq!(last_words(&mut r), None);
    }
}

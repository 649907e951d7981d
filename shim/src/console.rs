//! Host terminals and `--console-socket` fd passing.
//!
//! With `process.terminal`, runc creates a pty and sends its master over the unix socket named
//! by `--console-socket` (SCM_RIGHTS, the pty's path as the message body) before `create` returns;
//! containerd's shim and conmon then own the master. We do the same; the sandbox monitor keeps the
//! slave side and relays it to the guest's terminal.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("open pty")]
    Open(#[source] nix::Error),
    #[error("connect to console socket {path}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("send fd over unix socket")]
    Send(#[source] nix::Error),
    #[error("receive fd over unix socket")]
    Recv(#[source] nix::Error),
    #[error("no fd in the message")]
    NoFd,
}

/// A pty pair; `name` is the slave's path (`/dev/pts/N`).
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub name: String,
}

/// Opens a new pty pair with both ends close-on-exec.
pub fn open_pty() -> Result<Pty, ConsoleError> {
    let res = nix::pty::openpty(None, None).map_err(ConsoleError::Open)?;
    for fd in [&res.master, &res.slave] {
        set_cloexec(fd.as_raw_fd());
    }
    let name = nix::unistd::ttyname(res.slave.as_fd())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Ok(Pty {
        master: res.master,
        slave: res.slave,
        name,
    })
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor we own; no memory is involved.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Sends `fd` with `name` as the body to the console socket at `path`, as runc does.
pub fn send_to_socket(path: &Path, name: &str, fd: &OwnedFd) -> Result<(), ConsoleError> {
    let stream = UnixStream::connect(path).map_err(|source| ConsoleError::Connect {
        path: path.into(),
        source,
    })?;
    send_fd(&stream, name.as_bytes(), fd)
}

/// Sends one fd with a body over a connected unix stream.
pub fn send_fd(stream: &UnixStream, body: &[u8], fd: &OwnedFd) -> Result<(), ConsoleError> {
    send_fds(stream, body, &[fd.as_raw_fd()])
}

/// Sends several fds with a body over a connected unix stream.
pub fn send_fds(stream: &UnixStream, body: &[u8], fds: &[RawFd]) -> Result<(), ConsoleError> {
    let iov = [IoSlice::new(if body.is_empty() { b" " } else { body })];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(ConsoleError::Send)?;
    Ok(())
}

/// Receives one message carrying fds; returns its body and the fds.
pub fn recv_fds(
    stream: &UnixStream,
    max_fds: usize,
) -> Result<(Vec<u8>, Vec<OwnedFd>), ConsoleError> {
    let (body, mut fds) = recv_msg(stream)?;
    if fds.is_empty() {
        return Err(ConsoleError::NoFd);
    }
    fds.truncate(max_fds);
    Ok((body, fds))
}

/// Receives one chunk of a unix stream with whatever fds came with it (possibly none).
pub fn recv_msg(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), ConsoleError> {
    recv_msg_raw(stream.as_raw_fd()).map_err(ConsoleError::Recv)
}

/// [`recv_msg`] on a raw socket fd (the monitor's are non-blocking: `EAGAIN` comes back).
pub fn recv_msg_raw(fd: RawFd) -> Result<(Vec<u8>, Vec<OwnedFd>), nix::Error> {
    let mut buf = vec![0u8; 65536];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed these descriptors in our table for us; we
                // are their only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

/// Window size of a terminal, if `fd` is one.
pub fn get_winsize(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass; fd is only read.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the window size of a terminal.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> bool {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the struct we pass.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) == 0 }
}

/// Puts a terminal in raw mode (no echo, no line discipline), as the relay end of a pty must be:
/// the guest's own pty does the line discipline.
pub fn make_raw(fd: impl AsFd) -> Result<(), nix::Error> {
    use nix::sys::termios;
    let mut t = termios::tcgetattr(&fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&fd, termios::SetArg::TCSANOW, &t)
}

/// Our stdin terminal in raw mode while a container's terminal process uses it (foreground
/// `run`, `exec -t`), restored when dropped — also on the way out of an error.
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal (nothing to do then).
    pub fn stdin() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = nix::sys::termios::tcgetattr(&stdin).ok()?;
        make_raw(&stdin).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// Makes `tty` the controlling terminal of a new session led by this process, so that a resize
/// by whoever holds the master arrives here as SIGWINCH (the kernel signals the session of the
/// terminal whose size changed). Best effort: without it only the start size reaches the guest.
/// The process's parent (the engine's subreaper) does not change.
pub fn take_as_controlling_terminal(tty: &OwnedFd) {
    if nix::unistd::setsid().is_err() {
        return;
    }
    // SAFETY: TIOCSCTTY takes an int argument; `tty` is an open terminal fd.
    unsafe {
        libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn pty_master_goes_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let pty = open_pty().unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        send_to_socket(&sock, &pty.name, &pty.master).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let (body, fds) = recv_fds(&conn, 1).unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), pty.name);
        // The received master really is the pty's master: bytes written to it reach the slave.
        make_raw(&pty.slave).unwrap();
        let mut master = std::fs::File::from(fds.into_iter().next().unwrap());
        master.write_all(b"ping").unwrap();
        let mut slave = std::fs::File::from(pty.slave);
        let mut buf = [0u8; 4];
        slave.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        assert!(set_winsize(master.as_raw_fd(), 40, 120));
        assert_eq!(get_winsize(slave.as_raw_fd()), Some((40, 120)));
    }

    #[test]
    fn connect_failure_names_the_socket() {
        let pty = open_pty().unwrap();
        let err = send_to_socket(Path::new("/nonexistent/sock"), "x", &pty.master).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sock"));
    }
}

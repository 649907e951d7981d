//! Pseudo-terminals for processes that asked for one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

/// A new terminal: the agent keeps the master, the process gets the slave.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Errors opening or sizing a terminal.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("open /dev/ptmx")]
    Open(#[source] Errno),
    #[error("unlock pty")]
    Unlock(#[source] Errno),
    #[error("open pty slave")]
    Slave(#[source] Errno),
    #[error("set terminal size")]
    Size(#[source] Errno),
}

/// Opens a terminal (master non-blocking) with the given size, if any, from `ptmx` (an opened,
/// non-blocking `ptmx` of another devpts instance, e.g. a container's) or else the agent's
/// `/dev/ptmx`.
/// Four syscalls: open, unlock, TIOCGPTPEER (no path lookup of the slave, and right in any
/// mount namespace), TIOCSWINSZ.
pub fn open_pty(size: Option<(u16, u16)>, ptmx: Option<OwnedFd>) -> Result<Pty, PtyError> {
    let master = match ptmx {
        Some(fd) => fd,
        None => {
            let fd = open(
                "/dev/ptmx",
                OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            )
            .map_err(PtyError::Open)?;
            // SAFETY: `open` returned a new fd that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
    };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(PtyError::Unlock(Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(PtyError::Slave(Errno::last()));
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        resize(&master, rows, cols)?;
    }
    Ok(Pty { master, slave })
}

/// Sets the terminal size; the kernel sends SIGWINCH to the foreground process group.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), PtyError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(PtyError::Size(Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slave_sees_the_size() {
        let pty = open_pty(Some((33, 101)), None).unwrap();
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize to the valid pointer.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        resize(&pty.master, 10, 20).unwrap();
        // SAFETY: as above.
        unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (10, 20));
    }
}

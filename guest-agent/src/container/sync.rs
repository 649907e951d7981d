//! The sync socket between the agent and a process it cloned: fixed 16-byte messages on a
//! `SOCK_SEQPACKET` pair. The child reports "ready" (or a [`Failure`]), an intermediate process
//! reports the pid it cloned, and the agent says "start". A successful `execve` closes the
//! child's end (it is close-on-exec), which the agent sees as end-of-file.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::error::{ContainerError, Failure, Step};
use super::sys::{self, SysResult};

/// One message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Set-up done, waiting for start; `no_pivot`: the root was entered with `chroot`.
    Ready { no_pivot: bool },
    /// A step failed.
    Failed(Failure),
    /// An intermediate process cloned this pid (in the agent's pid namespace).
    Pid(libc::pid_t),
    /// Go ahead and exec.
    Start,
}

const READY: u32 = 1;
const FAILED: u32 = 2;
const PID: u32 = 3;
const START: u32 = 4;

fn encode(msg: Msg) -> [u8; 16] {
    let (kind, a, b, c): (u32, u32, u32, i32) = match msg {
        Msg::Ready { no_pivot } => (READY, no_pivot.into(), 0, 0),
        Msg::Failed(f) => (FAILED, f.step as u32, f.index, f.errno as i32),
        Msg::Pid(pid) => (PID, 0, 0, pid),
        Msg::Start => (START, 0, 0, 0),
    };
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&kind.to_le_bytes());
    out[4..8].copy_from_slice(&a.to_le_bytes());
    out[8..12].copy_from_slice(&b.to_le_bytes());
    out[12..16].copy_from_slice(&c.to_le_bytes());
    out
}

fn decode(buf: &[u8; 16]) -> Option<Msg> {
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let c = word(12) as i32;
    match word(0) {
        READY => Some(Msg::Ready {
            no_pivot: word(4) != 0,
        }),
        FAILED => Some(Msg::Failed(Failure {
            step: Step::from_u32(word(4))?,
            index: word(8),
            errno: Errno::from_raw(c),
        })),
        PID if c > 0 => Some(Msg::Pid(c)),
        START => Some(Msg::Start),
        _ => None,
    }
}

/// A connected pair: (agent's end, child's end), both close-on-exec.
pub fn pair() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(ContainerError::Sync(Errno::last()));
    }
    // SAFETY: socketpair succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `msg`, optionally with a descriptor (allocation-free; used by children).
pub fn send(sock: RawFd, msg: Msg, fd: Option<RawFd>) -> SysResult<()> {
    sys::send_with_fd(sock, &encode(msg), fd)
}

/// Receives the next message; `None` at end-of-file (the peer exec'd or died).
pub fn recv(sock: &OwnedFd) -> Result<Option<(Msg, Option<OwnedFd>)>, ContainerError> {
    let mut buf = [0u8; 16];
    let (n, fd) = sys::recv_with_fd(sock.as_raw_fd(), &mut buf).map_err(ContainerError::Sync)?;
    // SAFETY: recv_with_fd returns a descriptor the kernel just installed for us.
    let fd = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    match n {
        0 => Ok(None),
        16 => decode(&buf)
            .map(|m| Some((m, fd)))
            .ok_or(ContainerError::Protocol),
        _ => Err(ContainerError::Protocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (a, b) = pair().unwrap();
        let msgs = [
            Msg::Ready { no_pivot: true },
            Msg::Failed(Failure::at(Step::Mount, 3, Errno::ENOENT)),
            Msg::Pid(1234),
            Msg::Start,
        ];
        for m in msgs {
            send(b.as_raw_fd(), m, None).unwrap();
            assert_eq!(recv(&a).unwrap().unwrap().0, m);
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        send(b.as_raw_fd(), Msg::Pid(5), Some(file.as_raw_fd())).unwrap();
        let (m, fd) = recv(&a).unwrap().unwrap();
        assert_eq!(m, Msg::Pid(5));
        assert!(fd.is_some());
        assert_eq!(decode(&[9; 16]), None);
        drop(b);
        assert!(recv(&a).unwrap().is_none());
    }
}

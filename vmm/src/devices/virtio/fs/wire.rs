//! The messages between the monitor's queue thread and a share's server process.
//!
//! One `SOCK_SEQPACKET` socketpair per share: the kernel keeps message boundaries, so a
//! message is exactly one `sendmsg` and one `recvmsg` and needs no length prefix. The two
//! sides go in lock-step: every message of the monitor gets exactly one answer before the
//! next one is sent, so answers need no request ids and an unsolicited message is a protocol
//! error.
//!
//! Every message starts with an 8-byte [`Head`] (two little-endian `u32`s):
//! - monitor → server: `kind` ([`SETUP`], [`REQUEST`], [`RESET`]) and, for a request, the
//!   room for its reply (the chain's writable bytes, at most [`MAX_MESSAGE`]); then the body:
//!   the encoded [`Setup`], or the FUSE request exactly as the guest wrote it (header
//!   included, at most [`MAX_MESSAGE`] bytes);
//! - server → monitor: `kind` ([`READY`], [`SETUP_FAILED`], [`SERVED`], [`FAILED`]) and 0;
//!   then the reply bytes of a served request (at most the room it was given, empty for
//!   requests that take no reply), or a one-line reason for a failed setup.
//!
//! Sizes are bounded on both sides before anything is read: a receiver's buffer is
//! [`HEAD`] + [`MAX_MESSAGE`] bytes, allocated once, and a message that does not fit
//! (`MSG_TRUNC`) is an error, never a bigger allocation.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, MsgFlags};

use super::{FsCache, SetIdFiles};

/// Size of a message's head.
pub const HEAD: usize = 8;
/// The most bytes of FUSE message either way: 1 MiB of data (the `max_pages = 256` we grant)
/// plus 4 KiB of headers, the server's largest message.
pub const MAX_MESSAGE: usize = fuse_backend_rs::api::server::MAX_BUFFER_SIZE as usize + 0x1000;
/// The size of a receive buffer: any valid message fits.
pub const BUFFER: usize = HEAD + MAX_MESSAGE;

/// Monitor → server: the share's options (the first message, once).
pub const SETUP: u32 = 1;
/// Monitor → server: a FUSE request to serve.
pub const REQUEST: u32 = 2;
/// Monitor → server: the driver reset the device; forget every inode and handle.
pub const RESET: u32 = 3;
/// Server → monitor: confined and serving (after [`SETUP`]), or reset done.
pub const READY: u32 = 16;
/// Server → monitor: it could not confine itself or set up the share; the body says why.
pub const SETUP_FAILED: u32 = 17;
/// Server → monitor: the request was answered; the body is the reply.
pub const SERVED: u32 = 18;
/// Server → monitor: the FUSE server could not answer (undecodable body, reply too big for
/// the room); the monitor answers `EINVAL` itself.
pub const FAILED: u32 = 19;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed its end (it exited, or was killed).
    #[error("the peer closed the connection")]
    Closed,
    /// The socket failed.
    #[error("socket error")]
    Io(#[source] nix::Error),
    /// A message larger than the receive buffer.
    #[error("message larger than {BUFFER} bytes")]
    TooLarge,
    /// A message shorter than its head, or with a kind the receiver does not expect.
    #[error("malformed message ({len} bytes, kind {kind})")]
    Malformed {
        /// Its length.
        len: usize,
        /// Its kind (0 when it had no head).
        kind: u32,
    },
    /// The setup could not be decoded.
    #[error("malformed setup")]
    Setup(#[source] postcard::Error),
}

/// The head of every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// What the message is.
    pub kind: u32,
    /// For [`REQUEST`]: the reply's room; otherwise 0.
    pub arg: u32,
}

impl Head {
    /// The head's bytes.
    pub fn encode(self) -> [u8; HEAD] {
        let mut b = [0u8; HEAD];
        b[..4].copy_from_slice(&self.kind.to_le_bytes());
        b[4..].copy_from_slice(&self.arg.to_le_bytes());
        b
    }

    /// The head of a received message of `len` bytes in `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        match (buf.get(..4), buf.get(4..HEAD)) {
            (Some(k), Some(a)) => {
                let word = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                Ok(Self {
                    kind: word(k),
                    arg: word(a),
                })
            }
            _ => Err(WireError::Malformed {
                len: buf.len(),
                kind: 0,
            }),
        }
    }
}

/// What the server process needs to serve a share, sent as the body of [`SETUP`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Setup {
    /// The share's tag (for the server's own messages).
    pub tag: String,
    /// The share as an absolute path in the server's mount namespace (a copy of the monitor's
    /// at the time it started), checked against the directory fd it inherited.
    pub share: PathBuf,
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// [`FsCache::Shared`] when true.
    pub shared_cache: bool,
    /// Where set-ID files may be made: `None` nowhere, `Some("")` anywhere, else below it.
    pub set_id: Option<PathBuf>,
    /// The share's open-file cap (`u64::MAX`: none).
    pub max_open_files: u64,
}

impl Setup {
    /// The cache contract.
    pub fn cache(&self) -> FsCache {
        if self.shared_cache {
            FsCache::Shared
        } else {
            FsCache::Exclusive
        }
    }

    /// The set-ID rule.
    pub fn set_id(&self) -> SetIdFiles {
        match &self.set_id {
            None => SetIdFiles::Refused,
            Some(p) if p.as_os_str().is_empty() => SetIdFiles::Allowed,
            Some(p) => SetIdFiles::AllowedUnder(p.clone()),
        }
    }

    /// The encoding of a set-ID rule.
    pub fn encode_set_id(rule: &SetIdFiles) -> Option<PathBuf> {
        match rule {
            SetIdFiles::Refused => None,
            SetIdFiles::Allowed => Some(PathBuf::new()),
            SetIdFiles::AllowedUnder(p) => Some(p.clone()),
        }
    }

    /// The message body.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        postcard::to_stdvec(self).map_err(WireError::Setup)
    }

    /// Decodes a message body.
    pub fn from_bytes(body: &[u8]) -> Result<Self, WireError> {
        postcard::from_bytes(body).map_err(WireError::Setup)
    }
}

/// Sends one message made of `head` and `body` (one `sendmsg`, never `SIGPIPE`).
pub fn send(fd: BorrowedFd<'_>, head: Head, body: &[u8]) -> Result<(), WireError> {
    let head = head.encode();
    let iov = [IoSlice::new(&head), IoSlice::new(body)];
    loop {
        match sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => return Err(WireError::Closed),
            Err(e) => return Err(WireError::Io(e)),
        }
    }
}

/// Receives one message into `buf` (at least [`HEAD`] bytes); returns its head and length.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(Head, usize), WireError> {
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) if m.flags.contains(MsgFlags::MSG_TRUNC) => return Err(WireError::TooLarge),
            Ok(m) if m.bytes == 0 => return Err(WireError::Closed),
            Ok(m) => {
                let len = m.bytes;
                return Ok((Head::decode(&buf[..len])?, len));
            }
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Err(WireError::Closed),
            Err(e) => return Err(WireError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn messages_keep_their_boundaries_and_heads() {
        let (a, b) = pair();
        send(
            a.as_fd(),
            Head {
                kind: REQUEST,
                arg: 7,
            },
            b"abc",
        )
        .unwrap();
        send(
            a.as_fd(),
            Head {
                kind: RESET,
                arg: 0,
            },
            b"",
        )
        .unwrap();
        let mut buf = vec![0u8; BUFFER];
        let (h, n) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!(
            (h, n),
            (
                Head {
                    kind: REQUEST,
                    arg: 7
                },
                HEAD + 3
            )
        );
        assert_eq!(&buf[HEAD..n], b"abc");
        let (h, n) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((h.kind, n), (RESET, HEAD));
        drop(a);
        assert!(matches!(recv(b.as_fd(), &mut buf), Err(WireError::Closed)));
    }

    #[test]
    fn oversized_and_headless_messages_are_errors() {
        let (a, b) = pair();
        let mut small = [0u8; 16];
        send(
            a.as_fd(),
            Head {
                kind: SERVED,
                arg: 0,
            },
            &[0u8; 64],
        )
        .unwrap();
        assert!(matches!(
            recv(b.as_fd(), &mut small),
            Err(WireError::TooLarge)
        ));
        nix::sys::socket::send(a.as_raw_fd(), b"abc", MsgFlags::empty()).unwrap();
        assert!(matches!(
            recv(b.as_fd(), &mut small),
            Err(WireError::Malformed { len: 3, .. })
        ));
        // A peer that is gone: sending fails without a SIGPIPE.
        drop(b);
        assert!(matches!(
            send(
                a.as_fd(),
                Head {
                    kind: RESET,
                    arg: 0
                },
                b""
            ),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn setup_round_trips() {
        for set_id in [
            SetIdFiles::Refused,
            SetIdFiles::Allowed,
            SetIdFiles::AllowedUnder("rootfs".into()),
        ] {
            let s = Setup {
                tag: "t".into(),
                share: "/srv/x".into(),
                read_only: true,
                shared_cache: true,
                set_id: Setup::encode_set_id(&set_id),
                max_open_files: 300,
            };
            let back = Setup::from_bytes(&s.to_bytes().unwrap()).unwrap();
            assert_eq!(back, s);
            assert_eq!(back.set_id(), set_id);
            assert_eq!(back.cache(), FsCache::Shared);
        }
        assert!(Setup::from_bytes(&[0xff; 3]).is_err());
    }
}

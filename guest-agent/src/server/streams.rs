//! Stream connections whose header has not fully arrived yet.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use bulkhead_protocol::stream::{HeaderError, StreamHeader, MAX_HEADER_LEN};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// A connection on the stream port waiting for its header.
#[derive(Debug)]
pub struct PendingStream {
    pub fd: OwnedFd,
    pub since: Instant,
    /// Registered one-shot and not fired yet.
    pub armed: bool,
    buf: Vec<u8>,
}

/// Outcome of reading a pending stream.
pub enum Header {
    Incomplete,
    /// The header, plus stream bytes that came with it.
    Done(StreamHeader, Vec<u8>),
    Bad(Option<HeaderError>),
}

impl PendingStream {
    pub fn new(fd: OwnedFd) -> PendingStream {
        PendingStream {
            fd,
            since: Instant::now(),
            armed: false,
            buf: Vec::new(),
        }
    }

    /// Waits for the next bytes: one-shot, so after the event the fd stays in the epoll set
    /// but silent, and can be handed to a relay without an `EPOLL_CTL_DEL`.
    pub fn arm(&mut self, epoll: &Epoll, token: u64, first: bool) -> nix::Result<()> {
        let mut event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, token);
        if first {
            epoll.add(self.fd.as_fd(), event)?;
        } else {
            epoll.modify(self.fd.as_fd(), &mut event)?;
        }
        self.armed = true;
        Ok(())
    }

    /// Reads at most up to the longest header, so stream data after it mostly stays in the
    /// socket for the relay.
    pub fn read(&mut self) -> Header {
        let mut chunk = [0u8; MAX_HEADER_LEN];
        let want = MAX_HEADER_LEN - self.buf.len();
        let n = loop {
            match nix::unistd::read(self.fd.as_raw_fd(), &mut chunk[..want]) {
                Ok(0) => return Header::Bad(None),
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Header::Incomplete,
                Err(_) => return Header::Bad(None),
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        match StreamHeader::decode(&self.buf) {
            Ok(Some((header, used))) => Header::Done(header, self.buf[used..].to_vec()),
            Ok(None) if self.buf.len() < MAX_HEADER_LEN => Header::Incomplete,
            Ok(None) => Header::Bad(None),
            Err(e) => Header::Bad(Some(e)),
        }
    }

    /// Drops the connection; an armed registration is removed first (see relay::Reg).
    pub fn close(self, epoll: &Epoll) {
        if self.armed {
            let _ = epoll.delete(self.fd.as_fd());
        }
    }
}

//! One control connection: request bytes in, response bytes out, both non-blocking.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use bulkhead_protocol::frame::{Decoder, Frame, FrameError};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// What reading produced.
pub enum Input {
    /// Complete frames (possibly none yet).
    Frames(Vec<Frame>),
    /// The host closed the connection, or it failed.
    Closed,
    /// The host sent something that is not ttrpc; the connection must be dropped.
    Broken(FrameError),
}

#[derive(Debug)]
pub struct ControlConn {
    pub fd: OwnedFd,
    /// Tells a reused slot apart from the connection a waiter was registered on.
    pub serial: u64,
    decoder: Decoder,
    out: Vec<u8>,
    out_pos: usize,
    registered: EpollFlags,
}

impl ControlConn {
    pub fn new(fd: OwnedFd, serial: u64) -> ControlConn {
        ControlConn {
            fd,
            serial,
            decoder: Decoder::new(),
            out: Vec::new(),
            out_pos: 0,
            registered: EpollFlags::empty(),
        }
    }

    /// Reads what is there (one read; level-triggered epoll reports the rest).
    pub fn read(&mut self, scratch: &mut [u8]) -> Input {
        let n = loop {
            match nix::unistd::read(self.fd.as_raw_fd(), scratch) {
                Ok(0) => return Input::Closed,
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Input::Frames(Vec::new()),
                Err(_) => return Input::Closed,
            }
        };
        self.decoder.push(&scratch[..n]);
        let mut frames = Vec::new();
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return Input::Frames(frames),
                Err(e) => return Input::Broken(e),
            }
        }
    }

    /// Queues encoded response bytes.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Writes queued bytes; `false` when the connection failed.
    pub fn flush(&mut self) -> bool {
        while self.has_output() {
            match nix::unistd::write(&self.fd, &self.out[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        true
    }

    /// Registers for input, and for output while bytes are queued.
    pub fn sync(&mut self, epoll: &Epoll, token: u64) {
        let mut want = EpollFlags::EPOLLIN;
        if self.has_output() {
            want |= EpollFlags::EPOLLOUT;
        }
        if want == self.registered {
            return;
        }
        let mut event = EpollEvent::new(want, token);
        let result = if self.registered.is_empty() {
            epoll.add(self.fd.as_fd(), event)
        } else {
            epoll.modify(self.fd.as_fd(), &mut event)
        };
        if result.is_ok() {
            self.registered = want;
        }
    }

    /// Deregisters before the fd is dropped.
    pub fn close(self, epoll: &Epoll) {
        if !self.registered.is_empty() {
            let _ = epoll.delete(self.fd.as_fd());
        }
    }
}

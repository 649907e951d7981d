//! A bounded byte ring for guest→host data the host socket would not take yet.
//!
//! The guest may only send as much as we advertised (`buf_alloc`), so the ring never needs to
//! grow past that; a guest that sends more is cut off by the caller. Memory is allocated on
//! first use only: most connections keep up with their host reader and never buffer a byte.

use std::io::{self, IoSlice, Write};

use super::packet::{PacketError, TxData};

/// The payload did not fit: the guest ignored our credit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxBufError {
    /// More bytes than the free space.
    #[error("{len} bytes do not fit in {free} free bytes")]
    Full { len: usize, free: usize },
    /// Copying from guest memory failed.
    #[error("cannot copy guest data")]
    Copy(#[from] PacketError),
}

/// The ring.
#[derive(Debug)]
pub struct TxBuf {
    data: Vec<u8>,
    cap: usize,
    head: usize,
    len: usize,
}

impl TxBuf {
    /// An empty ring that will hold at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            data: Vec::new(),
            cap,
            head: 0,
            len: 0,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes.
    pub fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Appends the rest of `src`, all of it or nothing.
    pub fn push(&mut self, src: &mut TxData<'_>) -> Result<(), TxBufError> {
        let len = src.len();
        if len > self.free() {
            return Err(TxBufError::Full {
                len,
                free: self.free(),
            });
        }
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        let tail = (self.head + self.len) % self.cap.max(1);
        let first = len.min(self.cap - tail);
        src.copy_to(&mut self.data[tail..tail + first])?;
        src.copy_to(&mut self.data[..len - first])?;
        self.len += len;
        Ok(())
    }

    /// Appends bytes from a host-side slice (tests and the fuzzer use this path).
    pub fn push_slice(&mut self, bytes: &[u8]) -> Result<(), TxBufError> {
        let len = bytes.len();
        if len > self.free() {
            return Err(TxBufError::Full {
                len,
                free: self.free(),
            });
        }
        if self.data.len() < self.cap {
            self.data.resize(self.cap, 0);
        }
        let tail = (self.head + self.len) % self.cap.max(1);
        let first = len.min(self.cap - tail);
        self.data[tail..tail + first].copy_from_slice(&bytes[..first]);
        self.data[..len - first].copy_from_slice(&bytes[first..]);
        self.len += len;
        Ok(())
    }

    /// Writes as much as `dst` takes without blocking. Returns the bytes written;
    /// `WouldBlock` is not an error here (0 bytes).
    pub fn flush_to<W: Write>(&mut self, dst: &mut W) -> io::Result<usize> {
        let mut total = 0;
        while self.len > 0 {
            let first_end = (self.head + self.len).min(self.cap);
            let first = &self.data[self.head..first_end];
            let second = &self.data[..self.len - first.len()];
            let slices = [IoSlice::new(first), IoSlice::new(second)];
            match dst.write_vectored(&slices) {
                Ok(0) => break,
                Ok(n) => {
                    let n = n.min(self.len);
                    self.head = (self.head + n) % self.cap;
                    self.len -= n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if total > 0 => {
                    tracing::trace!("vsock: flush stopped: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 {
            self.head = 0;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `chunk` bytes per call, then blocks after `limit`.
    struct Slow {
        out: Vec<u8>,
        chunk: usize,
        limit: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.out.len() >= self.limit {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.limit - self.out.len());
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn wraps_and_keeps_order() {
        let mut b = TxBuf::new(8);
        let mut w = Slow {
            out: Vec::new(),
            chunk: 3,
            limit: 5,
        };
        b.push_slice(b"abcdef").unwrap();
        assert_eq!(b.flush_to(&mut w).unwrap(), 5);
        assert_eq!(b.len(), 1);
        b.push_slice(b"ghijklm").unwrap();
        assert_eq!(
            b.push_slice(b"x"),
            Err(TxBufError::Full { len: 1, free: 0 })
        );
        w.limit = 100;
        assert_eq!(b.flush_to(&mut w).unwrap(), 8);
        assert_eq!(w.out, b"abcdefghijklm");
        assert!(b.is_empty());
    }
}

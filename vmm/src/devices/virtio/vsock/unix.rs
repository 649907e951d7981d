//! The host side of the vsock device: Unix sockets in Firecracker's "hybrid vsock" convention.
//!
//! - Host → guest: a host process connects to the socket at `PATH` and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <hostport>\n` and then has a byte
//!   stream to the guest listener on `<port>`.
//! - Guest → host: a guest connection to host port `P` is a connection to the Unix socket at
//!   `PATH_P`, which some host process listens on.
//!
//! Every socket here is non-blocking: the event loop must never wait for a host process.

use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{VolatileMemoryError, VolatileSlice, WriteVolatile};

/// Longest `CONNECT <port>\n` line we wait for ("CONNECT 4294967295\n" is 19 bytes).
pub const MAX_CONNECT_LINE: usize = 32;

/// Errors on the host side.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    /// The listening socket could not be created.
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    /// The host sent something other than `CONNECT <port>\n`.
    #[error("bad connect line")]
    BadConnectLine,
    /// The host closed before finishing its connect line.
    #[error("host closed during the connect handshake")]
    Closed,
    /// A socket call failed.
    #[error("host socket error")]
    Io(#[from] io::Error),
}

/// The listening socket at `PATH`; removes the socket file when dropped.
#[derive(Debug)]
pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path`. It must not exist: a stale socket from a crashed VMM is for the caller
    /// (who knows whether it is stale) to remove.
    pub fn bind(path: &Path) -> Result<Self, UnixError> {
        let inner = UnixListener::bind(path).map_err(|e| UnixError::Bind(path.into(), e))?;
        inner
            .set_nonblocking(true)
            .map_err(|e| UnixError::Bind(path.into(), e))?;
        Ok(Self {
            inner,
            path: path.into(),
        })
    }

    /// Accepts one pending connection, if any, as a non-blocking stream.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.inner.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The path the guest's outgoing connections derive from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the `CONNECT <port>\n` line without consuming anything after it (those bytes belong
/// to the guest). Returns `None` while the line is incomplete.
pub fn read_connect_line(stream: &UnixStream) -> Result<Option<u32>, UnixError> {
    let mut peek = [0u8; MAX_CONNECT_LINE];
    let n = match socket::recv(stream.as_raw_fd(), &mut peek, MsgFlags::MSG_PEEK) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(UnixError::Io(e.into())),
    };
    if n == 0 {
        return Err(UnixError::Closed);
    }
    let Some(end) = peek[..n].iter().position(|&b| b == b'\n') else {
        return if n == MAX_CONNECT_LINE {
            Err(UnixError::BadConnectLine)
        } else {
            Ok(None)
        };
    };
    // Consume exactly the line.
    let mut line = [0u8; MAX_CONNECT_LINE];
    let got = socket::recv(stream.as_raw_fd(), &mut line[..=end], MsgFlags::empty())
        .map_err(|e| UnixError::Io(e.into()))?;
    if got != end + 1 {
        return Err(UnixError::BadConnectLine);
    }
    parse_connect_line(&line[..end]).map(Some)
}

/// Parses `CONNECT <port>` (without the newline; a trailing `\r` is tolerated).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, UnixError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line
        .strip_prefix(b"CONNECT ")
        .ok_or(UnixError::BadConnectLine)?;
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return Err(UnixError::BadConnectLine);
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(UnixError::BadConnectLine)
}

/// Writes to a host stream with `MSG_NOSIGNAL`: a host peer that went away is an `EPIPE` for us
/// to handle, never a SIGPIPE that kills whatever process links this library.
pub struct NoSigPipe<'a>(pub &'a UnixStream);

impl Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket::send(self.0.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket::sendmsg::<()>(self.0.as_raw_fd(), bufs, &[], MsgFlags::MSG_NOSIGNAL, None)
            .map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteVolatile for NoSigPipe<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        // SAFETY: the guard keeps `buf.len()` bytes at its pointer mapped for the call; `send`
        // only reads them, and guest memory changing under it is harmless (it is a copy).
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))
    }
}

/// Tells a host-initiated connection that the guest accepted: `OK <hostport>\n`.
pub fn write_ok(stream: &UnixStream, local_port: u32) -> io::Result<()> {
    let line = format!("OK {local_port}\n");
    // A fresh stream's send buffer is empty, so this cannot block or come up short.
    let n = NoSigPipe(stream).write(line.as_bytes())?;
    if n == line.len() {
        Ok(())
    } else {
        Err(io::ErrorKind::WriteZero.into())
    }
}

/// Connects (without blocking) to `<base>_<port>` for a guest connection to host port `port`.
/// A listener with a full backlog counts as refused: we never wait for the host.
pub fn connect_port(base: &Path, port: u32) -> io::Result<UnixStream> {
    let mut path = base.as_os_str().to_owned();
    path.push(format!("_{port}"));
    let addr = UnixAddr::new(Path::new(&path)).map_err(io::Error::from)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024").unwrap(), 1024);
        assert_eq!(parse_connect_line(b"CONNECT 52\r").unwrap(), 52);
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 1",
            b"CONNECT -1",
            b"CONNECT 1 2",
            b"CONNECT 4294967296",
            b"CONNECT +5",
        ] {
            assert!(parse_connect_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peeks_line_and_leaves_the_rest() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        assert!(read_connect_line(&b).unwrap().is_none());
        (&a).write_all(b"CONNECT 7").unwrap();
        assert!(read_connect_line(&b).unwrap().is_none());
        (&a).write_all(b"\nhello").unwrap();
        assert_eq!(read_connect_line(&b).unwrap(), Some(7));
        let mut rest = [0u8; 8];
        let n = io::Read::read(&mut &b, &mut rest).unwrap();
        assert_eq!(&rest[..n], b"hello");
        (&a).write_all(&[b'x'; MAX_CONNECT_LINE]).unwrap();
        assert!(matches!(
            read_connect_line(&b),
            Err(UnixError::BadConnectLine)
        ));
        drop(a);
        // Drain, then EOF.
        let mut sink = [0u8; 64];
        let _ = io::Read::read(&mut &b, &mut sink);
        assert!(matches!(read_connect_line(&b), Err(UnixError::Closed)));
    }

    #[test]
    fn writes_to_a_closed_peer_are_epipe_not_sigpipe() {
        // Test binaries ignore SIGPIPE, so this only checks the error; the fuzz targets run
        // with the default disposition and would die of a SIGPIPE.
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = NoSigPipe(&a).write(b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        let err = NoSigPipe(&a)
            .write_vectored(&[IoSlice::new(b"x"), IoSlice::new(b"y")])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        let mut data = *b"zz";
        let slice = VolatileSlice::from(&mut data[..]);
        assert!(NoSigPipe(&a).write_volatile(&slice).is_err());
    }

    #[test]
    fn connects_to_port_socket_or_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("v.sock");
        assert!(connect_port(&base, 5000).is_err());
        let l = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        let s = connect_port(&base, 5000).unwrap();
        let (peer, _) = l.accept().unwrap();
        (&s).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        io::Read::read_exact(&mut &peer, &mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}

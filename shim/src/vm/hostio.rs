//! The caller's stdio fds, made safe to drive from the monitor's event loop.
//!
//! They come from an engine (FIFOs, pipes, a pty slave), from a user's shell (their terminal, a
//! file) or from a test (a socket, /dev/null). Waiting on them must not block the runtime, yet
//! setting `O_NONBLOCK` on them would change the *caller's* open file description too — a
//! shell whose terminal turned non-blocking breaks after the container ends. So:
//! - pipes, FIFOs and terminals are reopened through `/proc/self/fd/N`, which gives us our own
//!   description of the same pipe or tty, non-blocking, and polled — unless the description
//!   is non-blocking already, which means it is ours: the `exec` CLI reopens its fds itself
//!   before it passes them (`commands::exec`), as the caller's user, because a locked-down
//!   monitor may no longer open another user's terminal or pipe;
//! - sockets (which cannot be reopened) are polled with per-call `MSG_DONTWAIT`;
//! - regular files and devices that cannot be polled (`/dev/null`) never make I/O wait, so
//!   they are read and written directly.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use tokio::io::unix::AsyncFd;

/// One direction of one host stdio fd.
#[derive(Debug)]
pub enum HostIo {
    /// Our own non-blocking description of a pipe, FIFO or terminal.
    Polled(AsyncFd<File>),
    /// A socket, polled; every call says `MSG_DONTWAIT`.
    Socket(AsyncFd<OwnedFd>),
    /// A file or unpollable device: I/O never waits.
    Direct(File),
}

/// Which way the data flows through the fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl HostIo {
    /// Prepares `fd` for `dir`. Must run inside the monitor's runtime.
    pub fn new(fd: OwnedFd, dir: Direction) -> io::Result<HostIo> {
        let file = File::from(fd);
        let kind = file.metadata()?.file_type();
        if kind.is_socket() {
            // SAFETY: the socket's fd is owned by the `OwnedFd` we hand over; nothing else closes
            // or replaces it while the `AsyncFd` holds it.
            let polled = unsafe { AsyncFd::register(OwnedFd::from(file))? };
            return Ok(HostIo::Socket(polled));
        }
        if kind.is_file() || kind.is_block_device() {
            return Ok(HostIo::Direct(file));
        }
        // Pipes, FIFOs, character devices (terminals, /dev/null).
        if nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .is_ok_and(|fl| fl & libc::O_NONBLOCK != 0)
        {
            return Self::polled_or_direct(file);
        }
        let own = match reopen_non_blocking(&file, dir == Direction::Read, dir == Direction::Write)
        {
            Ok(f) => f,
            // A pipe whose reader is gone cannot be opened for writing; a write to it fails at
            // once (EPIPE) instead of waiting, which ends the relay as it should.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(HostIo::Direct(file)),
            Err(e) => return Err(e),
        };
        Self::polled_or_direct(own)
    }

    /// A non-blocking description of ours, polled; a device epoll refuses (`/dev/null`: its
    /// I/O never waits) is used directly.
    fn polled_or_direct(own: File) -> io::Result<HostIo> {
        // SAFETY: `own` is a descriptor handed over to us; nothing else closes or replaces it
        // while the `AsyncFd` holds it.
        match unsafe { AsyncFd::register(own) } {
            Ok(polled) => Ok(HostIo::Polled(polled)),
            Err(e) => match e.into_parts() {
                (own, e) if e.raw_os_error() == Some(libc::EPERM) => Ok(HostIo::Direct(own)),
                (_, e) => Err(e),
            },
        }
    }

    /// Reads what is there (waiting until something is); 0 at EOF.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostIo::Direct(f) => retry(|| (&*f).read(buf)),
            HostIo::Polled(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Ok(r) = ready.try_io(|f| f.get_ref().read(buf)) {
                    return r;
                }
            },
            HostIo::Socket(fd) => loop {
                let mut ready = fd.readable().await?;
                if let Ok(r) = ready.try_io(|s| recv(s.as_raw_fd(), buf)) {
                    return r;
                }
            },
        }
    }

    /// Writes all of `buf`, waiting while the reader is slow.
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = match self {
                HostIo::Direct(f) => retry(|| (&*f).write(buf))?,
                HostIo::Polled(fd) => loop {
                    let mut ready = fd.writable().await?;
                    if let Ok(r) = ready.try_io(|f| f.get_ref().write(buf)) {
                        break r?;
                    }
                },
                HostIo::Socket(fd) => loop {
                    let mut ready = fd.writable().await?;
                    if let Ok(r) = ready.try_io(|s| send(s.as_raw_fd(), buf)) {
                        break r?;
                    }
                },
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// One non-blocking `recv`.
fn recv(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is `buf.len()` writable bytes, borrowed for the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Our own description of the pipe, FIFO or terminal `file`, non-blocking (the caller's stays
/// as it is), opened again through `/proc/self/fd` for reading and/or writing.
pub fn reopen_non_blocking(file: &File, read: bool, write: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// One non-blocking `send` (never SIGPIPE: a gone reader is an error, not a signal).
fn send(fd: i32, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: `buf` is `buf.len()` readable bytes, borrowed for the call.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(fd: &impl AsRawFd) -> i32 {
        // SAFETY: F_GETFL on an open descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }
    }

    #[tokio::test]
    async fn a_pipe_is_reopened_and_the_callers_stays_blocking() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let keep = r.try_clone().unwrap();
        let io = HostIo::new(r, Direction::Read).unwrap();
        assert!(matches!(io, HostIo::Polled(_)));
        assert_eq!(flags(&keep) & libc::O_NONBLOCK, 0, "caller's pipe changed");
        File::from(w).write_all(b"hi").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "EOF");
    }

    #[tokio::test]
    async fn a_non_blocking_description_is_used_as_it_is() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        let ino = |f: &dyn AsRawFd| nix::sys::stat::fstat(f.as_raw_fd()).unwrap().st_ino;
        let (keep, ours) = (r.try_clone().unwrap(), ino(&r));
        let io = HostIo::new(r, Direction::Read).unwrap();
        let HostIo::Polled(fd) = &io else {
            panic!("not polled")
        };
        assert_eq!(ino(fd.get_ref()), ours);
        // The same description, not a reopened one: a status flag set through the caller's fd
        // shows through ours.
        // SAFETY: F_SETFL on an open descriptor.
        unsafe {
            libc::fcntl(
                keep.as_raw_fd(),
                libc::F_SETFL,
                libc::O_NONBLOCK | libc::O_APPEND,
            )
        };
        assert_ne!(flags(fd.get_ref()) & libc::O_APPEND, 0);
        File::from(w).write_all(b"hi").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_pipe_without_reader_fails_writes_at_once() {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let io = HostIo::new(w, Direction::Write).unwrap();
        let err = io.write_all(b"nobody reads").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn files_devices_and_sockets() {
        let d = tempfile::tempdir().unwrap();
        let f = File::create(d.path().join("out")).unwrap();
        let io = HostIo::new(f.into(), Direction::Write).unwrap();
        assert!(matches!(io, HostIo::Direct(_)));
        io.write_all(b"data").await.unwrap();
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"data");

        let null = File::options().write(true).open("/dev/null").unwrap();
        let io = HostIo::new(null.into(), Direction::Write).unwrap();
        io.write_all(b"gone").await.unwrap();

        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let keep = a.try_clone().unwrap();
        let io = HostIo::new(a.into(), Direction::Write).unwrap();
        assert!(matches!(io, HostIo::Socket(_)));
        io.write_all(b"sock").await.unwrap();
        assert_eq!(
            flags(&keep) & libc::O_NONBLOCK,
            0,
            "caller's socket changed"
        );
        let mut got = [0u8; 4];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"sock");
    }
}

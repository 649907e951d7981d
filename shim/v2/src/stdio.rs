//! A task process's stdio: containerd names FIFOs (or nothing), the process gets fds.
//!
//! Without a terminal the FIFOs themselves become the runtime's (and so the container
//! process's) stdio: the monitor writes the container's output straight into them, as it does
//! into a runc-shim pipe, and no copy runs in the shim. With a terminal the runtime hands the
//! pty's master to a console socket, like runc, and the shim copies between it and the FIFOs
//! (`ctr task exec -t`, `ctr run -t`), and resizes it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use bulkhead_shim::console;
use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::runtime::ProcessIo;

/// What containerd asked for one process.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The FIFOs as the process's own fds (no terminal).
pub fn open_fifos(stdio: &Stdio) -> io::Result<ProcessIo> {
    Ok(ProcessIo {
        stdin: open_reader(&stdio.stdin)?,
        stdout: open_writer(&stdio.stdout)?,
        stderr: open_writer(&stdio.stderr)?,
    })
}

/// A FIFO to read from: opened without waiting for a writer (containerd's client opens its
/// end first), then blocking like a pipe.
fn open_reader(path: &str) -> io::Result<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| named(e, path))?;
    blocking(f).map(Some)
}

/// A FIFO to write to. Its reader (containerd's client) is normally there already; if not,
/// the FIFO is opened for reading too, which never waits, rather than blocking the shim.
fn open_writer(path: &str) -> io::Result<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path),
        other => other,
    }
    .map_err(|e| named(e, path))?;
    blocking(f).map(Some)
}

fn blocking(f: File) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(f);
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
    )?;
    Ok(fd)
}

fn named(e: io::Error, path: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

/// The socket a terminal process's runtime sends its pty master to (`--console-socket`).
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// In a directory of its own under /tmp: bundle paths are too long for a socket's name.
    pub fn new() -> io::Result<ConsoleSocket> {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-console-")
            .tempdir_in("/tmp")?;
        let listener = UnixListener::bind(dir.path().join("c.sock"))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// The master the runtime sent. Called once `create`/`exec` returned: like runc, the
    /// runtime has connected and sent it by then, so nothing here waits.
    pub fn master(self) -> io::Result<OwnedFd> {
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| io::Error::new(e.kind(), format!("the runtime sent no terminal: {e}")))?;
        conn.set_nonblocking(false)?;
        let (_, mut fds) = console::recv_fds(&conn, 1).map_err(io::Error::other)?;
        fds.pop()
            .ok_or_else(|| io::Error::other("the runtime sent no terminal fd"))
    }
}

/// Copies between a terminal's master and the process's FIFOs, each way on its own thread,
/// until the terminal closes (its process is gone) or containerd closes stdin.
pub fn copy_terminal(master: &OwnedFd, stdio: &Stdio) -> io::Result<()> {
    if !stdio.stdout.is_empty() {
        let from = File::from(master.try_clone()?);
        let to = open_writer(&stdio.stdout)?.map(File::from);
        if let Some(to) = to {
            std::thread::Builder::new()
                .name("tty-out".into())
                .spawn(move || pump(from, to))?;
        }
    }
    if !stdio.stdin.is_empty() {
        let to = File::from(master.try_clone()?);
        let from = open_reader(&stdio.stdin)?.map(File::from);
        if let Some(from) = from {
            std::thread::Builder::new()
                .name("tty-in".into())
                .spawn(move || pump(from, to))?;
        }
    }
    Ok(())
}

/// Reads until end of file or an error (EIO from a master whose terminal closed), writing all.
fn pump(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Sets a terminal's window size (containerd's ResizePty); the runtime passes it on.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> io::Result<()> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    if !console::set_winsize(master.as_raw_fd(), clamp(height), clamp(width)) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_open_without_a_peer_and_carry_data() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = fifo.to_str().unwrap().to_string();
        // No reader yet: the writer still opens (read-write), and does not block.
        let io = open_fifos(&Stdio {
            stdout: path.clone(),
            ..Default::default()
        })
        .unwrap();
        let mut w = File::from(io.stdout.unwrap());
        w.write_all(b"hi").unwrap();
        let mut r = File::from(open_reader(&path).unwrap().unwrap());
        let mut got = [0u8; 2];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        assert!(io.stdin.is_none() && io.stderr.is_none());
    }

    #[test]
    fn a_missing_fifo_is_named() {
        let e = open_fifos(&Stdio {
            stdin: "/nonexistent/fifo".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/fifo"), "{e}");
    }
}

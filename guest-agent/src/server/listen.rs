//! The agent's two listening sockets: vsock ports in the guest, or `DIR/<port>` Unix sockets
//! when it runs on the host for tests (`--listen-unix DIR`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, VsockAddr,
};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Vsock,
    Unix(PathBuf),
}

/// Errors creating a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("create socket")]
    Socket(#[source] Errno),
    #[error("bind port {0}")]
    Bind(u32, #[source] Errno),
    #[error("listen on port {0}")]
    Listen(u32, #[source] Errno),
    #[error("socket path {0:?} too long")]
    Path(PathBuf),
}

const BACKLOG: i32 = 64;

/// A non-blocking, close-on-exec listener for `port`.
pub fn listener(transport: &Transport, port: u32) -> Result<OwnedFd, ListenError> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let (family, path) = match transport {
        Transport::Vsock => (AddressFamily::Vsock, None),
        Transport::Unix(dir) => (AddressFamily::Unix, Some(dir.join(port.to_string()))),
    };
    let fd = socket(family, SockType::Stream, flags, None).map_err(ListenError::Socket)?;
    let bound = match &path {
        None => bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)),
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let addr =
                UnixAddr::new(path.as_path()).map_err(|_| ListenError::Path(path.clone()))?;
            bind(fd.as_raw_fd(), &addr)
        }
    };
    bound.map_err(|e| ListenError::Bind(port, e))?;
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog).map_err(|e| ListenError::Listen(port, e))?;
    Ok(fd)
}

/// Accepts one connection, non-blocking and close-on-exec from the start (one syscall).
/// `Ok(None)` when none is waiting.
pub fn accept(listener: &OwnedFd) -> Result<Option<OwnedFd>, Errno> {
    loop {
        match accept4(
            listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            Ok(fd) => return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the Unix socket files (test mode) when the agent stops.
pub fn cleanup(transport: &Transport, ports: &[u32]) {
    if let Transport::Unix(dir) = transport {
        for port in ports {
            let _ = std::fs::remove_file(Path::new(dir).join(port.to_string()));
        }
    }
}

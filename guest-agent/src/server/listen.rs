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

/// Receive buffer (`SO_VM_SOCKETS_BUFFER_SIZE`) of the stream connections, which they inherit
/// from their listener. Linux's virtio transport sends at most min(own buffer, peer's buffer)
/// unacknowledged bytes, so the 256 KiB default would cap an output stream at a quarter of the
/// VMM's 1 MiB window: more credit updates from the host, each an interrupt and a kworker
/// run in the guest (see docs/DESIGN-NOTES.md, agent measurements).
pub const STREAM_BUFFER_SIZE: u64 = 1 << 20;

// From <linux/vm_sockets.h> (not in the libc crate); level AF_VSOCK, value a u64.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// A non-blocking, close-on-exec listener for `port`; with vsock and `buffer_size`, its
/// connections get that receive buffer (and send window, see [`STREAM_BUFFER_SIZE`]).
pub fn listener(
    transport: &Transport,
    port: u32,
    buffer_size: Option<u64>,
) -> Result<OwnedFd, ListenError> {
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
    if let (Transport::Vsock, Some(size)) = (transport, buffer_size) {
        // The maximum first: the size is clamped to it.
        // Best effort: the default buffer only costs speed.
        for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
            if set_u64(&fd, opt, size).is_err() {
                break;
            }
        }
    }
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog).map_err(|e| ListenError::Listen(port, e))?;
    Ok(fd)
}

fn set_u64(fd: &OwnedFd, opt: libc::c_int, value: u64) -> Result<(), Errno> {
    // SAFETY: `value` outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::AF_VSOCK,
            opt,
            (&value as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
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

//! How the host reaches the agent's vsock ports: through the VMM's hybrid-vsock Unix socket, or,
//! in tests, through per-port Unix sockets of an agent running on the host (`--listen-unix DIR`).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest handshake reply line accepted (`OK <u32>\n` is at most 14 bytes).
const MAX_REPLY: usize = 64;

/// Where the agent's ports are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connector {
    /// The VMM's vsock device socket (Firecracker-compatible hybrid vsock): connect, send
    /// `CONNECT <port>\n`, read `OK <host port>\n`, then the stream is the guest connection.
    HybridVsock { uds_path: PathBuf },
    /// An agent on the host in `--listen-unix DIR` mode: port P is the socket `DIR/P`.
    Unix { dir: PathBuf },
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The VM's socket is missing or nobody accepts on it: the VMM has exited.
    #[error("vm is gone")]
    VmGone,
    /// The socket is there but nothing listens on the port (yet).
    #[error("agent is not listening on port {0}")]
    NotListening(u32),
    #[error("vsock handshake timed out")]
    HandshakeTimeout,
    #[error("unexpected vsock handshake reply {0:?}")]
    BadReply(String),
    #[error("connect to {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// Worth trying again while the guest may still be booting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::NotListening(_) | ConnectError::HandshakeTimeout
        )
    }
}

impl Connector {
    /// Opens a byte stream to guest vsock `port`; the handshake (if any) must finish within
    /// `timeout`. The returned stream has no read or write timeout.
    pub fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
        match self {
            Connector::HybridVsock { uds_path } => hybrid_connect(uds_path, port, timeout),
            Connector::Unix { dir } => {
                let path = dir.join(port.to_string());
                UnixStream::connect(&path).map_err(|e| match e.kind() {
                    _ if !dir.exists() => ConnectError::VmGone,
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        ConnectError::NotListening(port)
                    }
                    _ => ConnectError::Io { path, source: e },
                })
            }
        }
    }

    /// Whether the VM (or the test agent's directory) still takes connections; tells "vm is
    /// gone" apart from "agent connection closed" after a connection dropped.
    pub fn vm_present(&self) -> bool {
        match self {
            Connector::HybridVsock { uds_path } => UnixStream::connect(uds_path).is_ok(),
            Connector::Unix { dir } => dir.exists(),
        }
    }
}

fn hybrid_connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
    let mut stream = UnixStream::connect(uds).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::VmGone,
        _ => ConnectError::Io {
            path: uds.to_owned(),
            source: e,
        },
    })?;
    let deadline = Instant::now() + timeout;
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnectError::HandshakeTimeout,
        // The VMM drops the connection when the guest resets it: no listener on that port.
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            ConnectError::NotListening(port)
        }
        _ => ConnectError::Io {
            path: uds.to_owned(),
            source: e,
        },
    };
    set_timeouts(&stream, Some(timeout)).map_err(io_err)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    // Byte by byte: whatever follows the newline already belongs to the guest stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ConnectError::HandshakeTimeout)?;
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return Err(ConnectError::NotListening(port)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REPLY => {
                return Err(ConnectError::BadReply(
                    String::from_utf8_lossy(&line).into_owned(),
                ))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    let ok = reply
        .strip_prefix("OK ")
        .is_some_and(|n| n.parse::<u32>().is_ok());
    if !ok {
        return Err(ConnectError::BadReply(reply));
    }
    set_timeouts(&stream, None).map_err(io_err)?;
    Ok(stream)
}

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> io::Result<()> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake VMM socket that answers one connection with `reply` (None: close at once).
    fn fake_vmm(dir: &Path, reply: Option<&'static str>) -> (PathBuf, thread::JoinHandle<String>) {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(reply) = reply {
                (&conn).write_all(reply.as_bytes()).unwrap();
                // Keep the connection until the client hangs up.
                let _ = reader.read(&mut [0u8; 1]);
            }
            line
        });
        (path, handle)
    }

    #[test]
    fn hybrid_handshake_leaves_following_bytes_in_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), Some("OK 1073741824\nDATA"));
        let c = Connector::HybridVsock { uds_path: path };
        let mut s = c.connect(1024, Duration::from_secs(5)).unwrap();
        let mut data = [0u8; 4];
        s.read_exact(&mut data).unwrap();
        assert_eq!(&data, b"DATA");
        drop(s);
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn hybrid_close_means_not_listening_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), None);
        let c = Connector::HybridVsock { uds_path: path };
        assert!(matches!(
            c.connect(1025, Duration::from_secs(5)),
            Err(ConnectError::NotListening(1025))
        ));
        vmm.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), Some("NOPE\n"));
        let c = Connector::HybridVsock { uds_path: path };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(5)),
            Err(ConnectError::BadReply(r)) if r == "NOPE"
        ));
        vmm.join().unwrap();
    }

    #[test]
    fn hybrid_handshake_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let _listener = UnixListener::bind(&path).unwrap(); // never answers
        let c = Connector::HybridVsock { uds_path: path };
        let start = Instant::now();
        assert!(matches!(
            c.connect(1024, Duration::from_millis(200)),
            Err(ConnectError::HandshakeTimeout)
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn missing_or_dead_sockets_mean_the_vm_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let c = Connector::HybridVsock {
            uds_path: path.clone(),
        };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)),
            Err(ConnectError::VmGone)
        ));
        drop(UnixListener::bind(&path).unwrap()); // socket file left behind, nobody accepts
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)),
            Err(ConnectError::VmGone)
        ));
        assert!(!c.vm_present());
    }

    #[test]
    fn unix_connector_uses_one_socket_per_port() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connector::Unix {
            dir: dir.path().to_owned(),
        };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)),
            Err(ConnectError::NotListening(1024))
        ));
        let _l = UnixListener::bind(dir.path().join("1024")).unwrap();
        assert!(c.connect(1024, Duration::from_secs(1)).is_ok());
        let gone = Connector::Unix {
            dir: dir.path().join("missing"),
        };
        assert!(matches!(
            gone.connect(1024, Duration::from_secs(1)),
            Err(ConnectError::VmGone)
        ));
    }
}

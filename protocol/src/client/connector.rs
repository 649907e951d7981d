//! How the host reaches the agent's vsock ports: through the VMM's hybrid-vsock Unix socket, or,
//! in tests, through per-port Unix sockets of an agent running on the host (`--listen-unix DIR`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

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
    /// `timeout`.
    pub async fn connect(&self, port: u32, timeout: Duration) -> Result<UnixStream, ConnectError> {
        match self {
            Connector::HybridVsock { uds_path } => {
                match tokio::time::timeout(timeout, hybrid_connect(uds_path, port)).await {
                    Ok(r) => r,
                    Err(_) => Err(ConnectError::HandshakeTimeout),
                }
            }
            Connector::Unix { dir } => {
                let path = dir.join(port.to_string());
                UnixStream::connect(&path)
                    .await
                    .map_err(|e| match e.kind() {
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
            // A Unix-socket connect never blocks on a listening socket: fine on a runtime thread.
            Connector::HybridVsock { uds_path } => {
                std::os::unix::net::UnixStream::connect(uds_path).is_ok()
            }
            Connector::Unix { dir } => dir.exists(),
        }
    }
}

/// The hybrid-vsock handshake; the caller bounds it with a deadline.
async fn hybrid_connect(uds: &Path, port: u32) -> Result<UnixStream, ConnectError> {
    let mut stream = UnixStream::connect(uds).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ConnectError::VmGone,
        _ => ConnectError::Io {
            path: uds.to_owned(),
            source: e,
        },
    })?;
    let io_err = |e: io::Error| match e.kind() {
        // The VMM drops the connection when the guest resets it: no listener on that port.
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            ConnectError::NotListening(port)
        }
        _ => ConnectError::Io {
            path: uds.to_owned(),
            source: e,
        },
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err)?;
    // Byte by byte: whatever follows the newline already belongs to the guest stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
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
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::os::unix::net::UnixListener;
    use std::thread;
    use std::time::Instant;

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

    #[tokio::test]
    async fn hybrid_handshake_leaves_following_bytes_in_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), Some("OK 1073741824\nDATA"));
        let c = Connector::HybridVsock { uds_path: path };
        let mut s = c.connect(1024, Duration::from_secs(5)).await.unwrap();
        let mut data = [0u8; 4];
        s.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"DATA");
        drop(s);
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn hybrid_close_means_not_listening_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), None);
        let c = Connector::HybridVsock { uds_path: path };
        assert!(matches!(
            c.connect(1025, Duration::from_secs(5)).await,
            Err(ConnectError::NotListening(1025))
        ));
        vmm.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), Some("NOPE\n"));
        let c = Connector::HybridVsock { uds_path: path };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(5)).await,
            Err(ConnectError::BadReply(r)) if r == "NOPE"
        ));
        vmm.join().unwrap();
    }

    #[tokio::test]
    async fn hybrid_handshake_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let _listener = UnixListener::bind(&path).unwrap(); // never answers
        let c = Connector::HybridVsock { uds_path: path };
        let start = Instant::now();
        assert!(matches!(
            c.connect(1024, Duration::from_millis(200)).await,
            Err(ConnectError::HandshakeTimeout)
        ));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn missing_or_dead_sockets_mean_the_vm_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let c = Connector::HybridVsock {
            uds_path: path.clone(),
        };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)).await,
            Err(ConnectError::VmGone)
        ));
        drop(UnixListener::bind(&path).unwrap()); // socket file left behind, nobody accepts
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)).await,
            Err(ConnectError::VmGone)
        ));
        assert!(!c.vm_present());
    }

    #[tokio::test]
    async fn unix_connector_uses_one_socket_per_port() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connector::Unix {
            dir: dir.path().to_owned(),
        };
        assert!(matches!(
            c.connect(1024, Duration::from_secs(1)).await,
            Err(ConnectError::NotListening(1024))
        ));
        let _l = UnixListener::bind(dir.path().join("1024")).unwrap();
        assert!(c.connect(1024, Duration::from_secs(1)).await.is_ok());
        let gone = Connector::Unix {
            dir: dir.path().join("missing"),
        };
        assert!(matches!(
            gone.connect(1024, Duration::from_secs(1)).await,
            Err(ConnectError::VmGone)
        ));
    }
}

//! The monitor's control socket, `<root>/<id>/control.sock`: JSON lines over a unix stream.
//!
//! Each CLI call connects, sends one [`Request`] line and reads one [`Response`] line. `exec`
//! attaches its stdio fds to the request (SCM_RIGHTS) and keeps the connection: the monitor
//! later sends an [`ExecEvent`] with the exit status, and the caller may send [`ExecControl`]
//! lines (signals it received) meanwhile. The connection's end means the caller is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SOCKET_NAME: &str = "control.sock";
/// Requests and replies are small; anything longer is a broken or hostile peer.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The monitor is not there (socket missing or refusing): the container is stopped.
    #[error("container not running")]
    Unreachable,
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket: bad message")]
    Protocol(#[source] serde_json::Error),
    #[error("control socket: connection closed")]
    Closed,
    #[error("control socket: message too long")]
    TooLong,
    #[error("control socket: pass fds")]
    Fds(#[from] crate::console::ConsoleError),
    /// The monitor refused the request; the message is meant for the user.
    #[error("{0}")]
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    /// Run a process; `tty` says the single attached fd is a terminal, else fds are
    /// stdin/stdout/stderr in that order (`stdin: false` when there is none).
    Exec {
        process: Value,
        tty: bool,
        stdin: bool,
    },
    Pids,
    Pause,
    Resume,
    Update {
        resources: Value,
    },
    Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Response {
    pub fn ok(data: Option<Value>) -> Self {
        Response { error: None, data }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            error: Some(msg.into()),
            data: None,
        }
    }
}

/// Sent by the monitor on an exec connection once the process has exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecEvent {
    pub exit_status: i32,
}

/// Sent by the exec caller on its connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ExecControl {
    Signal { signal: i32 },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Longest path `sun_path` holds (108 bytes with the NUL).
const MAX_SUN_PATH: usize = 107;

/// A unix socket path short enough for bind/connect. Engines choose long roots and ids
/// (`/run/containerd/runc/<namespace>/<64 hex>/control.sock` can pass 108 bytes), so a long path
/// is reached as `/proc/self/fd/<n>/<name>` through an open fd of its directory, held here.
#[derive(Debug)]
pub struct SockPath {
    pub path: PathBuf,
    _dir: Option<std::fs::File>,
}

pub fn sock_path(dir: &Path, name: &str) -> std::io::Result<SockPath> {
    let full = dir.join(name);
    if full.as_os_str().len() <= MAX_SUN_PATH {
        return Ok(SockPath {
            path: full,
            _dir: None,
        });
    }
    let f = std::fs::File::open(dir)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}/{name}",
        std::os::fd::AsRawFd::as_raw_fd(&f)
    ));
    Ok(SockPath {
        path,
        _dir: Some(f),
    })
}

/// A connection to a monitor.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(state_dir: &Path) -> Result<Client, ControlError> {
        let path = socket_path(state_dir);
        let short = sock_path(state_dir, SOCKET_NAME).map_err(|source| ControlError::Io {
            path: path.clone(),
            source,
        })?;
        let stream = match UnixStream::connect(&short.path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::Unreachable)
            }
            Err(source) => return Err(ControlError::Io { path, source }),
        };
        Ok(Client {
            path,
            reader: BufReader::new(stream),
        })
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
        |source| ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends a request (with `fds` attached) and returns the reply's data.
    pub fn call_with_fds(
        &mut self,
        req: &Request,
        fds: &[RawFd],
    ) -> Result<Option<Value>, ControlError> {
        let mut line = serde_json::to_vec(req).map_err(ControlError::Protocol)?;
        line.push(b'\n');
        if fds.is_empty() {
            self.reader.get_mut().write_all(&line).map_err(self.io())?;
        } else {
            crate::console::send_fds(self.reader.get_ref(), &line, fds)?;
        }
        let resp: Response = read_json(&mut self.reader)?;
        match resp.error {
            Some(e) => Err(ControlError::Remote(e)),
            None => Ok(resp.data),
        }
    }

    pub fn call(&mut self, req: &Request) -> Result<Option<Value>, ControlError> {
        self.call_with_fds(req, &[])
    }

    /// Waits for the exit event of an exec connection.
    pub fn read_exec_event(&mut self) -> Result<ExecEvent, ControlError> {
        read_json(&mut self.reader)
    }

    /// A second handle on the connection, for a thread that forwards signals.
    pub fn try_clone_stream(&self) -> Result<UnixStream, ControlError> {
        self.reader.get_ref().try_clone().map_err(self.io())
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) {
        let _ = self.reader.get_ref().set_read_timeout(t);
    }
}

/// Writes one JSON line.
pub fn write_json<T: Serialize>(mut w: impl Write, v: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes.
pub fn read_json<T: for<'de> Deserialize<'de>, R: Read>(
    r: &mut BufReader<R>,
) -> Result<T, ControlError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|source| ControlError::Io {
            path: PathBuf::new(),
            source,
        })?;
    if n == 0 {
        return Err(ControlError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n > MAX_LINE {
            ControlError::TooLong
        } else {
            ControlError::Closed
        });
    }
    serde_json::from_slice(&line).map_err(ControlError::Protocol)
}

/// Server side: reads the first request of a connection, collecting any fds sent with it.
/// Reads no further than the request's newline, so later lines stay in the stream.
pub fn read_request(stream: &UnixStream) -> Result<(Request, Vec<OwnedFd>), ControlError> {
    let (mut line, fds) = crate::console::recv_msg(stream)?;
    if line.is_empty() {
        return Err(ControlError::Closed);
    }
    let mut s = stream;
    while !line.contains(&b'\n') {
        if line.len() > MAX_LINE {
            return Err(ControlError::TooLong);
        }
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => return Err(ControlError::Closed),
            Ok(_) => line.push(b[0]),
            Err(source) => {
                return Err(ControlError::Io {
                    path: PathBuf::new(),
                    source,
                })
            }
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let req = serde_json::from_slice(&line[..end]).map_err(ControlError::Protocol)?;
    Ok((req, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_wire_format() {
        let v = serde_json::to_value(Request::Kill {
            signal: 9,
            all: true,
        })
        .unwrap();
        assert_eq!(v, json!({"op": "kill", "signal": 9, "all": true}));
        let r: Request = serde_json::from_value(json!({"op": "start"})).unwrap();
        assert_eq!(r, Request::Start);
        assert!(serde_json::from_value::<Request>(json!({"op": "reboot"})).is_err());
    }

    #[test]
    fn unreachable_when_no_socket() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            Client::connect(d.path()),
            Err(ControlError::Unreachable)
        ));
        // A stale socket file with no listener refuses: also unreachable.
        drop(std::os::unix::net::UnixListener::bind(socket_path(d.path())).unwrap());
        assert!(matches!(
            Client::connect(d.path()),
            Err(ControlError::Unreachable)
        ));
    }

    #[test]
    fn long_socket_paths_work() {
        let d = tempfile::tempdir().unwrap();
        let long = d.path().join("x".repeat(100));
        std::fs::create_dir(&long).unwrap();
        let p = sock_path(&long, SOCKET_NAME).unwrap();
        assert!(p.path.starts_with("/proc/self/fd/"));
        let l = std::os::unix::net::UnixListener::bind(&p.path).unwrap();
        assert!(long.join(SOCKET_NAME).exists());
        let _c = Client::connect(&long).unwrap();
        drop(l.accept().unwrap());
        let short = sock_path(d.path(), SOCKET_NAME).unwrap();
        assert_eq!(short.path, d.path().join(SOCKET_NAME));
    }

    #[test]
    fn long_lines_are_rejected() {
        let data = vec![b'a'; MAX_LINE + 10];
        let mut r = BufReader::new(&data[..]);
        assert!(matches!(
            read_json::<Value, _>(&mut r),
            Err(ControlError::TooLong)
        ));
        let mut r = BufReader::new(&b""[..]);
        assert!(matches!(
            read_json::<Value, _>(&mut r),
            Err(ControlError::Closed)
        ));
    }
}

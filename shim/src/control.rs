//! The monitor's control socket, `<root>/<id>/control.sock`: JSON lines over a unix stream.
//!
//! Each CLI call connects, sends one [`Request`] line and reads one [`Reply`] line. `exec`
//! attaches its stdio fds to the request (SCM_RIGHTS) and keeps the connection: the caller may
//! send [`ExecControl`] lines meanwhile (signals it received, its terminal's new size), and the
//! monitor finally sends an [`ExecEvent`] with the exit status. The connection's end means the
//! caller is gone. The client side here is blocking (every CLI call is a short process); the
//! monitor's side is in `monitor::server`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};

use crate::error::{Failure, HasKind, Kind};
use crate::lifecycle::Status;
use crate::stats::Stats;

pub const SOCKET_NAME: &str = "control.sock";
/// Requests and replies are small; anything longer is a broken or hostile peer.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The monitor is not there (socket missing or refusing): the container is stopped.
    #[error("{}", crate::lifecycle::Refused::NotRunning)]
    Unreachable,
    #[error("control socket {}", .path.display())]
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
    #[error("control socket: unexpected reply to {0}")]
    Unexpected(&'static str),
    /// The monitor refused the request; the message is meant for the user.
    #[error(transparent)]
    Remote(Failure),
}

impl HasKind for ControlError {
    fn kind(&self) -> Kind {
        match self {
            ControlError::Unreachable => Kind::FailedPrecondition,
            ControlError::Remote(f) => f.kind,
            _ => Kind::Unavailable,
        }
    }
}

/// What a CLI call asks the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The monitor's own status (waits while the container is being created).
    Status,
    Start,
    Kill {
        signal: i32,
        all: bool,
    },
    /// Run a process; `tty` says the single attached fd is a terminal, else fds are
    /// stdin/stdout/stderr in that order (`stdin: false` when there is none).
    Exec {
        process: Box<Process>,
        tty: bool,
        stdin: bool,
    },
    Pids,
    Pause,
    Resume,
    Update {
        resources: Box<LinuxResources>,
    },
    Stats,
}

impl Request {
    /// For messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Start => "start",
            Request::Kill { .. } => "kill",
            Request::Exec { .. } => "exec",
            Request::Pids => "pids",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Update { .. } => "update",
            Request::Stats => "stats",
        }
    }
}

/// What a request succeeded with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "data", rename_all = "snake_case")]
pub enum Done {
    Nothing,
    Status { status: Status },
    Pids { pids: Vec<i32> },
    Stats { stats: Box<Stats> },
    ExecStarted { exec_id: String },
}

/// The monitor's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Done),
    Err(Failure),
}

impl From<Result<Done, Failure>> for Reply {
    fn from(r: Result<Done, Failure>) -> Reply {
        match r {
            Ok(d) => Reply::Ok(d),
            Err(f) => Reply::Err(f),
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
    /// A signal the caller received, for the process.
    Signal { signal: i32 },
    /// The caller's terminal has a new size.
    Resize { rows: u16, cols: u16 },
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

    /// Sends a request (with `fds` attached) and returns what it was done with.
    pub fn call_with_fds(&mut self, req: &Request, fds: &[RawFd]) -> Result<Done, ControlError> {
        let mut line = serde_json::to_vec(req).map_err(ControlError::Protocol)?;
        line.push(b'\n');
        if fds.is_empty() {
            self.reader.get_mut().write_all(&line).map_err(self.io())?;
        } else {
            crate::console::send_fds(self.reader.get_ref(), &line, fds)?;
        }
        match read_json::<Reply, _>(&mut self.reader)? {
            Reply::Ok(done) => Ok(done),
            Reply::Err(f) => Err(ControlError::Remote(f)),
        }
    }

    pub fn call(&mut self, req: &Request) -> Result<Done, ControlError> {
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

/// One request to the monitor of the container in `state_dir`.
pub fn call(state_dir: &Path, req: &Request) -> Result<Done, ControlError> {
    Client::connect(state_dir)?.call(req)
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
    parse_line(&line, n)
}

/// Parses a line read by [`read_json`] (or its async twin in the monitor): `n` bytes were read.
pub fn parse_line<T: for<'de> Deserialize<'de>>(line: &[u8], n: usize) -> Result<T, ControlError> {
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
    serde_json::from_slice(line).map_err(ControlError::Protocol)
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
        // Typed payloads: a process that is not an OCI process is refused at the socket.
        assert!(serde_json::from_value::<Request>(
            json!({"op": "exec", "process": {"args": 5}, "tty": false, "stdin": false})
        )
        .is_err());
    }

    #[test]
    fn replies_keep_the_kind() {
        let r = Reply::Err(Failure::new(Kind::NotFound, "no such thing"));
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), r);
        let ok = Reply::Ok(Done::Pids { pids: vec![1, 7] });
        let line = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), ok);
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
            read_json::<serde_json::Value, _>(&mut r),
            Err(ControlError::TooLong)
        ));
        let mut r = BufReader::new(&b""[..]);
        assert!(matches!(
            read_json::<serde_json::Value, _>(&mut r),
            Err(ControlError::Closed)
        ));
    }
}

//! The monitor's control-socket server: one task per connection on the monitor's runtime, each
//! answering one request with the lifecycle rules applied to the monitor's own status.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use super::{Monitor, KILL_GRACE, SIGNAL_TIMEOUT};
use crate::control::{self, ControlError, Done, Reply, Request, MAX_LINE};
use crate::error::{Failure, HasKind, Kind};
use crate::hooks::Phase;
use crate::lifecycle::Refused;
use crate::lifecycle::Status;
use crate::sandbox::{Sandbox, Target};

/// How long the accept loop rests after an error (out of fds, …) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most fds one request may carry (stdin, stdout, stderr).
const MAX_FDS: usize = 3;

/// `control.sock` on disk; [`SocketFile::remove`] takes it away when the monitor is done.
pub(super) struct SocketFile {
    path: PathBuf,
    /// Keeps a long socket path's directory fd open (see [`control::SockPath`]).
    _short: control::SockPath,
}

impl SocketFile {
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket in `state_dir`.
pub(super) fn bind(state_dir: &Path) -> io::Result<(UnixListener, SocketFile)> {
    let short = control::sock_path(state_dir, control::SOCKET_NAME)?;
    let listener = UnixListener::bind(&short.path)?;
    let file = SocketFile {
        path: control::socket_path(state_dir),
        _short: short,
    };
    Ok((listener, file))
}

/// Accepts connections until the task is aborted.
pub(super) async fn serve<S: Sandbox + 'static>(listener: UnixListener, monitor: Rc<Monitor<S>>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::task::spawn_local(connection(conn, monitor.clone()));
            }
            // Out of fds or memory: rest instead of spinning on an error that persists.
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

async fn connection<S: Sandbox + 'static>(mut conn: UnixStream, monitor: Rc<Monitor<S>>) {
    let (req, fds) = match read_request(&conn).await {
        Ok(r) => r,
        Err(e) => {
            let _ = write_json(&mut conn, &Reply::Err(e.failure())).await;
            return;
        }
    };
    if let Request::Exec {
        process,
        tty,
        stdin,
    } = req
    {
        super::exec::serve(conn, monitor, *process, tty, stdin, fds).await;
        return;
    }
    let reply = Reply::from(monitor.handle(req).await);
    let _ = write_json(&mut conn, &reply).await;
}

impl<S: Sandbox> Monitor<S> {
    /// Answers one request (not `exec`, which keeps its connection).
    async fn handle(&self, req: Request) -> Result<Done, Failure> {
        let status = self.settled_status().await.map_err(|e| e.failure())?;
        let refused = |r: Result<(), Refused>| r.map_err(|e| e.failure());
        match req {
            Request::Status => Ok(Done::Status { status }),
            Request::Start => {
                refused(status.can_start())?;
                self.start().await
            }
            Request::Kill { signal, all } => {
                refused(status.can_kill())?;
                self.kill(signal, all).await
            }
            Request::Pids => {
                refused(status.can_inspect())?;
                let pids = self.sandbox()?.pids().await.map_err(|e| e.failure())?;
                Ok(Done::Pids { pids })
            }
            Request::Pause => {
                refused(status.can_pause())?;
                self.sandbox()?.pause().await.map_err(|e| e.failure())?;
                self.set_status(Status::Paused);
                Ok(Done::Nothing)
            }
            Request::Resume => {
                refused(status.can_resume())?;
                self.sandbox()?.resume().await.map_err(|e| e.failure())?;
                self.set_status(Status::Running);
                Ok(Done::Nothing)
            }
            Request::Update { resources } => {
                refused(status.can_inspect())?;
                self.update(&resources).await
            }
            Request::Stats => {
                refused(status.can_inspect())?;
                let dirs = self.state.borrow().cgroup_dirs.clone();
                let mut stats = crate::cgroups::stats(&dirs);
                stats.guest = self.sandbox()?.stats().await.ok();
                Ok(Done::Stats {
                    stats: Box::new(stats),
                })
            }
            Request::Exec { .. } => Err(Failure::new(
                Kind::InvalidArgument,
                "exec must carry its stdio",
            )),
        }
    }

    /// Releases the init: startContainer hooks on the host first, as runc runs them just
    /// before the init's exec, then the monitor's lock-down (the last host work is done).
    async fn start(&self) -> Result<Done, Failure> {
        if self.starting.replace(true) {
            return Err(Refused::StartRunning.failure());
        }
        let started = async {
            let sb = self.sandbox()?;
            // The network first: the startContainer hooks see the container's as it will be.
            if let Err(e) = self.connect_network().await {
                let _ = sb.kill(Target::Init, libc::SIGKILL, true).await;
                return Err(e);
            }
            if let Err(e) = self.hooks(Phase::StartContainer).await {
                let _ = sb.kill(Target::Init, libc::SIGKILL, true).await;
                return Err(e);
            }
            self.lock_down().await?;
            sb.start().await.map_err(|e| e.failure())
        };
        let result = started.await;
        self.starting.set(false);
        result?;
        self.mark("started");
        self.set_status(Status::Running);
        Ok(Done::Nothing)
    }

    /// Signals the init (with `all`, every process of the container). The guest is asked in
    /// any case; a SIGKILL is also the host's to enforce (see [`Monitor::supervise`]), so it
    /// succeeds whether or not the guest answers.
    async fn kill(&self, signal: i32, all: bool) -> Result<Done, Failure> {
        let sb = self.sandbox()?;
        if signal == libc::SIGKILL {
            self.sigkill.notify_one();
            let _ = tokio::time::timeout(KILL_GRACE, sb.kill(Target::Init, signal, all)).await;
            return Ok(Done::Nothing);
        }
        match tokio::time::timeout(SIGNAL_TIMEOUT, sb.kill(Target::Init, signal, all)).await {
            Ok(sent) => sent.map_err(|e| e.failure())?,
            Err(_) => {
                return Err(Failure::new(
                    Kind::Unavailable,
                    format!(
                        "the guest did not take signal {signal} within {}s",
                        SIGNAL_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
        Ok(Done::Nothing)
    }

    /// New limits in the guest. The host group's are written by the `update` CLI afterwards:
    /// the locked-down monitor sees its cgroup read-only (its own limits are not its to raise).
    async fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<Done, Failure> {
        self.sandbox()?
            .update(resources)
            .await
            .map_err(|e| e.failure())?;
        Ok(Done::Nothing)
    }
}

/// Reads the first request of a connection, with any fds sent with it. Reads no further than
/// the request's newline, so later lines (an exec caller's signals) stay in the stream.
async fn read_request(conn: &UnixStream) -> Result<(Request, Vec<OwnedFd>), ControlError> {
    let (mut line, fds) = loop {
        conn.readable().await.map_err(io_error)?;
        match conn.try_io(Interest::READABLE, || recv_with_fds(conn.as_raw_fd())) {
            Ok(got) => break got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error(e)),
        }
    };
    while !line.contains(&b'\n') {
        if line.len() > MAX_LINE {
            return Err(ControlError::TooLong);
        }
        conn.readable().await.map_err(io_error)?;
        let mut b = [0u8; 1];
        match conn.try_read(&mut b) {
            Ok(0) => return Err(ControlError::Closed),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    let req = serde_json::from_slice(&line[..end]).map_err(ControlError::Protocol)?;
    Ok((req, fds))
}

fn io_error(source: io::Error) -> ControlError {
    ControlError::Io {
        path: PathBuf::from(control::SOCKET_NAME),
        source,
    }
}

/// One `recvmsg` on a non-blocking socket: the bytes and the fds that came with them.
fn recv_with_fds(fd: i32) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let (body, mut fds) = crate::console::recv_msg_raw(fd).map_err(io::Error::from)?;
    if body.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a request",
        ));
    }
    fds.truncate(MAX_FDS);
    Ok((body, fds))
}

/// Writes one JSON line.
pub(super) async fn write_json<T: serde::Serialize>(
    conn: &mut (impl AsyncWriteExt + Unpin),
    v: &T,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line).await
}

//! The monitor's control-socket server and signal forwarder.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::Shared;
use crate::control::{self, ExecControl, ExecEvent, Request, Response};
use crate::hooks::{self, Phase};
use crate::sandbox::Stdio;
use crate::state::Status;

static EXEC_SEQ: AtomicU64 = AtomicU64::new(1);

/// Serves control connections on a thread each.
pub(super) fn spawn(listener: UnixListener, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let shared = shared.clone();
            std::thread::spawn(move || serve(conn, &shared));
        }
    });
}

/// Forwards signals sent to the monitor (e.g. by an engine that signals the pid it knows) to
/// the container's init, as if they had been sent to it.
pub(super) fn spawn_signal_forwarder(set: nix::sys::signal::SigSet, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        while let Some(sig) = crate::process::next_signal(&set) {
            if shared.status() != Status::Stopped {
                let _ = shared.sandbox.kill(sig, false);
            }
        }
    });
}

fn serve(conn: UnixStream, shared: &Shared) {
    let (req, fds) = match control::read_request(&conn) {
        Ok(r) => r,
        Err(e) => {
            let _ = control::write_json(&conn, &Response::err(e.to_string()));
            return;
        }
    };
    if let Request::Exec {
        process,
        tty,
        stdin,
    } = req
    {
        serve_exec(conn, shared, &process, tty, stdin, fds);
        return;
    }
    let resp = match handle(shared, req) {
        Ok(data) => Response::ok(data),
        Err(msg) => Response::err(msg),
    };
    let _ = control::write_json(&conn, &resp);
}

fn handle(shared: &Shared, req: Request) -> Result<Option<Value>, String> {
    let status = shared.status();
    let sb = &shared.sandbox;
    match req {
        Request::Start => {
            if status != Status::Created {
                return Err(format!("cannot start a container that is {status}"));
            }
            if let Err(e) = hooks::run(&shared.spec, Phase::StartContainer, &shared.state_json()) {
                let _ = sb.kill(libc::SIGKILL, true);
                return Err(e.to_string());
            }
            sb.start().map_err(|e| e.to_string())?;
            super::mark(shared, "started");
            shared.set_status(Status::Running);
            Ok(None)
        }
        Request::Kill { signal, all } => {
            if status == Status::Stopped {
                return Err("container not running".into());
            }
            sb.kill(signal, all).map_err(|e| e.to_string())?;
            Ok(None)
        }
        Request::Pids => {
            let pids = sb.pids().map_err(|e| e.to_string())?;
            Ok(Some(json!(pids)))
        }
        Request::Pause => {
            if status != Status::Running {
                return Err("container not running".into());
            }
            sb.pause().map_err(|e| e.to_string())?;
            shared.set_status(Status::Paused);
            Ok(None)
        }
        Request::Resume => {
            if status != Status::Paused {
                return Err("container not paused".into());
            }
            sb.resume().map_err(|e| e.to_string())?;
            shared.set_status(Status::Running);
            Ok(None)
        }
        Request::Update { resources } => {
            sb.update(&resources).map_err(|e| e.to_string())?;
            Ok(None)
        }
        Request::Stats => {
            let dirs = shared
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cgroup_dirs
                .clone();
            let mut data = crate::cgroups::stats(&dirs);
            if let Ok(guest) = sb.stats() {
                data["guest"] = guest;
            }
            Ok(Some(data))
        }
        Request::Exec { .. } => Err("exec must carry stdio".into()),
    }
}

/// Runs an exec'd process for the lifetime of this connection: replies once it started, then
/// forwards signals from the caller and finally sends the exit status. If the caller goes away
/// first (its proxy was SIGKILLed), the process is killed.
fn serve_exec(
    conn: UnixStream,
    shared: &Shared,
    process: &Value,
    tty: bool,
    stdin: bool,
    fds: Vec<std::os::fd::OwnedFd>,
) {
    let status = shared.status();
    if status != Status::Running && status != Status::Created {
        let msg = if status == Status::Paused {
            "cannot exec in a paused container"
        } else {
            "cannot exec in a stopped container"
        };
        let _ = control::write_json(&conn, &Response::err(msg));
        return;
    }
    let stdio = match stdio_from(fds, tty, stdin) {
        Some(s) => s,
        None => {
            let _ = control::write_json(&conn, &Response::err("exec: missing stdio fds"));
            return;
        }
    };
    let exec_id = format!("exec-{}", EXEC_SEQ.fetch_add(1, Ordering::Relaxed));
    if let Err(e) = shared.sandbox.exec(&exec_id, process, stdio) {
        let _ = control::write_json(&conn, &Response::err(e.to_string()));
        return;
    }
    if control::write_json(&conn, &Response::ok(Some(json!({"exec_id": exec_id})))).is_err() {
        let _ = shared.sandbox.kill_exec(&exec_id, libc::SIGKILL);
    }
    let Ok(reader_conn) = conn.try_clone() else {
        return;
    };
    let sb: &dyn crate::sandbox::Sandbox = &*shared.sandbox;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = BufReader::new(reader_conn);
            while let Ok(ExecControl::Signal { signal }) =
                control::read_json::<ExecControl, _>(&mut r)
            {
                let _ = sb.kill_exec(&exec_id, signal);
            }
            // The caller is gone (or we closed the connection after the exit).
            if !done.load(Ordering::SeqCst) {
                let _ = sb.kill_exec(&exec_id, libc::SIGKILL);
            }
        });
        let exit_status = sb.wait_exec(&exec_id).unwrap_or(255);
        done.store(true, Ordering::SeqCst);
        let _ = control::write_json(&conn, &ExecEvent { exit_status });
        let _ = conn.shutdown(std::net::Shutdown::Both);
    });
}

fn stdio_from(fds: Vec<std::os::fd::OwnedFd>, tty: bool, stdin: bool) -> Option<Stdio> {
    let mut it = fds.into_iter();
    if tty {
        return it.next().map(Stdio::Terminal);
    }
    let stdin_fd = if stdin { Some(it.next()?) } else { None };
    let stdout = it.next();
    let stderr = it.next();
    Some(Stdio::Pipes {
        stdin: stdin_fd,
        stdout,
        stderr,
    })
}

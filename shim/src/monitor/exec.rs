//! An exec'd process, for the lifetime of its control connection: the monitor replies once the
//! process started, then passes on what the caller sends (signals it received, its terminal's
//! new size) and finally sends the exit status. If the caller goes away first (its proxy was
//! SIGKILLed), the process is killed, as the caller's death would kill a runc exec.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use oci_spec::runtime::Process;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::server::write_json;
use super::Monitor;
use crate::control::{self, ControlError, Done, ExecControl, ExecEvent, Reply, MAX_LINE};
use crate::error::{Failure, HasKind, Kind};
use crate::sandbox::{Sandbox, Stdio, Target};

pub(super) async fn serve<S: Sandbox>(
    conn: UnixStream,
    monitor: Rc<Monitor<S>>,
    process: Process,
    tty: bool,
    stdin: bool,
    fds: Vec<OwnedFd>,
) {
    let (reader, mut writer) = conn.into_split();
    let started = monitor.start_exec(&process, tty, stdin, fds).await;
    let reply = Reply::from(started.clone().map(|exec_id| Done::ExecStarted { exec_id }));
    let replied = write_json(&mut writer, &reply).await.is_ok();
    let Ok(exec_id) = started else { return };
    let Ok(sb) = monitor.sandbox() else { return };
    if !replied {
        let _ = sb.kill(Target::Exec(&exec_id), libc::SIGKILL, false).await;
    }
    let target = Target::Exec(&exec_id);
    let (tx, mut from_caller) = mpsc::unbounded_channel();
    let listener = tokio::task::spawn_local(read_controls(reader, tx));
    let exit = sb.wait(target);
    tokio::pin!(exit);
    let mut caller_gone = false;
    let exit_status = loop {
        tokio::select! {
            // A process whose VM went away died with it, as runc's exec'd processes die with
            // their container's pid namespace.
            status = &mut exit => {
                break status.unwrap_or(crate::signal::killed_status(libc::SIGKILL))
            }
            control = from_caller.recv(), if !caller_gone => match control {
                Some(ExecControl::Signal { signal }) => {
                    let _ = sb.kill(target, signal, false).await;
                }
                Some(ExecControl::Resize { rows, cols }) => {
                    let _ = sb.resize(target, Some((rows, cols))).await;
                }
                // The caller is gone: so is its process.
                None => {
                    caller_gone = true;
                    let _ = sb.kill(target, libc::SIGKILL, false).await;
                }
            },
        }
    };
    listener.abort();
    let _ = write_json(&mut writer, &ExecEvent { exit_status }).await;
}

/// Reads the caller's lines until its end (or a line that is not one of ours).
async fn read_controls(reader: OwnedReadHalf, tx: mpsc::UnboundedSender<ExecControl>) {
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        let parsed = match read {
            Ok(n) => control::parse_line::<ExecControl>(&line, n),
            Err(_) => Err(ControlError::Closed),
        };
        match parsed {
            Ok(c) => {
                if tx.send(c).is_err() {
                    return;
                }
            }
            // A garbled line is skipped; only the connection's end means the caller is gone.
            Err(ControlError::Protocol(_)) => {}
            Err(_) => return,
        }
    }
}

impl<S: Sandbox> Monitor<S> {
    /// Checks the rules and starts the process; returns its exec id.
    async fn start_exec(
        &self,
        process: &Process,
        tty: bool,
        stdin: bool,
        fds: Vec<OwnedFd>,
    ) -> Result<String, Failure> {
        let status = self.settled_status().await.map_err(|e| e.failure())?;
        status.can_exec().map_err(|e| e.failure())?;
        // An exec into a created container is the workload's first process.
        self.lock_down().await?;
        let stdio = stdio_from(fds, tty, stdin)
            .ok_or_else(|| Failure::new(Kind::InvalidArgument, "exec: missing stdio fds"))?;
        let seq = self.exec_seq.get();
        self.exec_seq.set(seq + 1);
        let exec_id = format!("exec-{seq}");
        self.sandbox()?
            .exec(&exec_id, process, stdio)
            .await
            .map_err(|e| e.failure())?;
        Ok(exec_id)
    }
}

fn stdio_from(fds: Vec<OwnedFd>, tty: bool, stdin: bool) -> Option<Stdio> {
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

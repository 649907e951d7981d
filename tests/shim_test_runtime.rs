//! `bulkhead-test-runtime`: the `bulkhead` CLI with a host-process sandbox instead of a VM.
//!
//! Test-only. It exercises the real process model — monitor fork, pid file, readiness, control
//! socket, exec proxies, exit statuses, cleanup — with the container's process run directly on
//! the host (no namespaces, no rootfs), so those parts are tested in seconds without a guest.
//! The shipped `bulkhead` binary never contains this sandbox.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex};

use bulkhead_shim::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory, Stdio};
use serde_json::Value;

fn main() {
    std::process::exit(bulkhead_shim::main_with(&HostFactory));
}

struct HostFactory;

impl SandboxFactory for HostFactory {
    fn boot(&self, ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError> {
        // Lets tests prove that a boot failure leaves nothing behind.
        if std::env::var_os("BULKHEAD_TEST_FAIL_BOOT").is_some() {
            return Err(SandboxError::Failed("test: boot failed".into()));
        }
        std::fs::write(&ctx.console_log, format!("test sandbox for {}\n", ctx.id))
            .map_err(|e| SandboxError::Failed(format!("console log: {e}")))?;
        Ok(Box::new(HostSandbox {
            init: Mutex::new(Init::default()),
            cv: Condvar::new(),
            execs: Mutex::new(HashMap::new()),
        }))
    }
}

#[derive(Default)]
struct Init {
    pending: Option<Command>,
    pid: Option<i32>,
    status: Option<i32>,
}

struct HostSandbox {
    init: Mutex<Init>,
    cv: Condvar,
    execs: Mutex<HashMap<String, Child>>,
}

fn failed(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Failed(e.to_string())
}

/// Builds the host command for an OCI process, with runc's "not found" wording.
fn command(process: &Value, stdio: Stdio) -> Result<Command, SandboxError> {
    let args: Vec<String> = process
        .get("args")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    let Some(prog) = args.first() else {
        return Err(failed("args must not be empty"));
    };
    if !prog.contains('/') && which(prog).is_none() {
        return Err(failed(format!(
            "exec: \"{prog}\": executable file not found in $PATH"
        )));
    }
    let mut cmd = Command::new(prog);
    cmd.args(&args[1..]).env_clear();
    bulkhead_shim::process::unblock_signals_in_child(&mut cmd);
    for kv in process
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some((k, v)) = kv.as_str().and_then(|s| s.split_once('=')) {
            cmd.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_some()
        && !process
            .get("env")
            .is_some_and(|e| e.to_string().contains("PATH="))
    {
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    }
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let io = |fd: Option<OwnedFd>| {
                fd.map(std::process::Stdio::from)
                    .unwrap_or_else(std::process::Stdio::null)
            };
            cmd.stdin(io(stdin)).stdout(io(stdout)).stderr(io(stderr));
            // SAFETY: setpgid is async-signal-safe; the closure touches no shared state.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setpgid(0, 0);
                    Ok(())
                });
            }
        }
        Stdio::Terminal(t) => {
            let raw = t.as_raw_fd();
            cmd.stdin(std::process::Stdio::from(t.try_clone().map_err(failed)?));
            cmd.stdout(std::process::Stdio::from(t.try_clone().map_err(failed)?));
            cmd.stderr(std::process::Stdio::from(t));
            let _ = raw;
            // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                    Ok(())
                });
            }
        }
    }
    Ok(cmd)
}

fn which(prog: &str) -> Option<std::path::PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(prog))
        .find(|p| p.is_file())
}

fn status_of(s: std::process::ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

impl Sandbox for HostSandbox {
    fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let process = spec.get("process").cloned().unwrap_or_default();
        let cmd = command(&process, stdio)?;
        self.init.lock().map_err(failed)?.pending = Some(cmd);
        Ok(())
    }

    fn start(&self) -> Result<(), SandboxError> {
        let mut init = self.init.lock().map_err(failed)?;
        let mut cmd = init.pending.take().ok_or_else(|| failed("not created"))?;
        let child = cmd.spawn().map_err(failed)?;
        init.pid = Some(child.id() as i32);
        drop(cmd);
        std::mem::forget(child); // reaped by waitpid in wait()
        self.cv.notify_all();
        Ok(())
    }

    fn kill(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        let mut init = self.init.lock().map_err(failed)?;
        match init.pid {
            // SAFETY: kill(2) with a pid (or process group) and a signal number.
            Some(pid) => unsafe {
                libc::kill(if all { -pid } else { pid }, signal);
            },
            None => {
                // Not started: the init "dies" of the signal unless it is harmless.
                if ![libc::SIGCHLD, libc::SIGWINCH, libc::SIGCONT, libc::SIGURG].contains(&signal) {
                    init.pending = None;
                    init.status = Some(128 + signal);
                    self.cv.notify_all();
                }
            }
        }
        Ok(())
    }

    fn wait(&self) -> Result<i32, SandboxError> {
        let mut init = self.init.lock().map_err(failed)?;
        let pid = loop {
            if let Some(s) = init.status {
                return Ok(s);
            }
            if let Some(pid) = init.pid {
                break pid;
            }
            init = self.cv.wait(init).map_err(failed)?;
        };
        drop(init);
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            return Err(failed("waitpid"));
        }
        Ok(status_of(std::process::ExitStatus::from_raw(st)))
    }

    fn exec(&self, exec_id: &str, process: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let mut cmd = command(process, stdio)?;
        let child = cmd.spawn().map_err(failed)?;
        self.execs
            .lock()
            .map_err(failed)?
            .insert(exec_id.to_string(), child);
        Ok(())
    }

    fn kill_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        let execs = self.execs.lock().map_err(failed)?;
        let child = execs.get(exec_id).ok_or_else(|| failed("no such exec"))?;
        // SAFETY: kill(2) with a pid and a signal number.
        unsafe { libc::kill(child.id() as i32, signal) };
        Ok(())
    }

    fn wait_exec(&self, exec_id: &str) -> Result<i32, SandboxError> {
        let pid = self
            .execs
            .lock()
            .map_err(failed)?
            .get(exec_id)
            .map(|c| c.id() as i32)
            .ok_or_else(|| failed("no such exec"))?;
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        Ok(status_of(std::process::ExitStatus::from_raw(st)))
    }

    fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        let mut pids: Vec<i32> = self.init.lock().map_err(failed)?.pid.into_iter().collect();
        pids.extend(
            self.execs
                .lock()
                .map_err(failed)?
                .values()
                .map(|c| c.id() as i32),
        );
        Ok(pids)
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.kill(libc::SIGSTOP, true)
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.kill(libc::SIGCONT, true)
    }

    fn update(&self, _resources: &Value) -> Result<(), SandboxError> {
        Err(SandboxError::Unsupported("update in the host test sandbox"))
    }

    fn stats(&self) -> Result<Value, SandboxError> {
        Ok(serde_json::json!({"sandbox": "host-test"}))
    }

    fn shutdown(&self) {
        if let Ok(execs) = self.execs.lock() {
            for c in execs.values() {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            }
        }
    }
}

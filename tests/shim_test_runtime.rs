//! `bulkhead-test-runtime`: the `bulkhead` CLI with a host-process sandbox instead of a VM.
//!
//! Test-only. It exercises the real process model — monitor fork, pid file, readiness, control
//! socket, exec proxies, exit statuses, cleanup — with the container's process run directly on
//! the host (no namespaces, no rootfs), so those parts are tested in seconds without a guest.
//! The shipped `bulkhead` binary never contains this sandbox.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use bulkhead_shim::error::Kind;
use bulkhead_shim::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory, Stdio, Target};
use bulkhead_shim::stats::GuestStats;
use oci_spec::runtime::{LinuxResources, Process};
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::watch;

fn main() {
    std::process::exit(bulkhead_shim::main_with(&HostFactory));
}

struct HostFactory;

impl SandboxFactory for HostFactory {
    type Sandbox = HostSandbox;

    /// Its processes are host processes: they can share the host's network.
    fn can_share_host_network(&self) -> bool {
        true
    }

    /// Host processes join the spec's network namespace by its path themselves.
    fn adapt_spec(&self, _spec: &mut serde_json::Value) {}

    async fn boot(&self, ctx: &BootContext) -> Result<HostSandbox, SandboxError> {
        // Lets tests prove that a boot failure leaves nothing behind.
        if std::env::var_os("BULKHEAD_TEST_FAIL_BOOT").is_some() {
            return Err(SandboxError::failed(Kind::Internal, "test: boot failed"));
        }
        // Lets tests see a container "creating" for a while, as a booting VM is.
        if let Some(ms) = std::env::var("BULKHEAD_TEST_BOOT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        std::fs::write(&ctx.console_log, format!("test sandbox for {}\n", ctx.id))
            .map_err(|e| failed(format!("console log: {e}")))?;
        Ok(HostSandbox {
            pending: RefCell::new(None),
            init: RefCell::new(None),
            init_pid: Cell::new(None),
            // `None` until the init is started or dies unstarted.
            exit: watch::Sender::new(None),
            started: watch::Sender::new(false),
            execs: RefCell::new(HashMap::new()),
            terminal: RefCell::new(None),
        })
    }
}

struct HostSandbox {
    pending: RefCell<Option<Command>>,
    init: RefCell<Option<Child>>,
    /// Kept apart from the child, which `wait` takes while `kill` still needs the pid.
    init_pid: Cell<Option<u32>>,
    exit: watch::Sender<Option<i32>>,
    started: watch::Sender<bool>,
    /// Exec'd processes: pid, and the child until `wait` takes it.
    execs: RefCell<HashMap<String, Exec>>,
    terminal: RefCell<Option<OwnedFd>>,
}

/// An exec'd process: its pid, and the child until `wait` takes it.
type Exec = (Option<u32>, Option<Child>);

fn failed(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::failed(Kind::Internal, e.to_string())
}

/// Builds the host command for an OCI process, with runc's "not found" wording.
fn command(process: &Process, stdio: Stdio) -> Result<(Command, Option<OwnedFd>), SandboxError> {
    let args = process.args().clone().unwrap_or_default();
    let Some(prog) = args.first() else {
        return Err(SandboxError::failed(
            Kind::InvalidArgument,
            "args must not be empty",
        ));
    };
    if !prog.contains('/') && which(prog).is_none() {
        return Err(SandboxError::failed(
            Kind::NotFound,
            format!("exec: \"{prog}\": executable file not found in $PATH"),
        ));
    }
    let mut cmd = Command::new(prog);
    cmd.args(&args[1..]).env_clear();
    bulkhead_shim::process::unblock_signals_in_child(&mut cmd);
    let env = process.env().clone().unwrap_or_default();
    for (k, v) in env.iter().filter_map(|kv| kv.split_once('=')) {
        cmd.env(k, v);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    }
    let mut terminal = None;
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
            let dup = || t.try_clone().map(std::process::Stdio::from).map_err(failed);
            cmd.stdin(dup()?).stdout(dup()?).stderr(dup()?);
            terminal = Some(t);
            // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe. The monitor may hold
            // the terminal as its own controlling terminal (console sockets); 1 takes it over.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 1);
                    Ok(())
                });
            }
        }
    }
    Ok((cmd, terminal))
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

fn spawn(cmd: Command) -> Result<Child, SandboxError> {
    tokio::process::Command::from(cmd).spawn().map_err(failed)
}

fn signal(pid: Option<u32>, sig: i32, group: bool) {
    if let Some(pid) = pid {
        let pid = pid as i32;
        // SAFETY: kill(2) with a pid (or process group) and a signal number.
        unsafe { libc::kill(if group { -pid } else { pid }, sig) };
    }
}

impl Sandbox for HostSandbox {
    async fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let process: Process = spec
            .get("process")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(failed)?
            .ok_or_else(|| failed("no process"))?;
        let (cmd, terminal) = command(&process, stdio)?;
        *self.pending.borrow_mut() = Some(cmd);
        *self.terminal.borrow_mut() = terminal;
        Ok(())
    }

    async fn start(&self) -> Result<(), SandboxError> {
        let cmd = self
            .pending
            .borrow_mut()
            .take()
            .ok_or_else(|| failed("not created"))?;
        let child = spawn(cmd)?;
        self.init_pid.set(child.id());
        *self.init.borrow_mut() = Some(child);
        self.started.send_replace(true);
        Ok(())
    }

    async fn kill(&self, target: Target<'_>, sig: i32, all: bool) -> Result<(), SandboxError> {
        match target {
            Target::Init => {
                if *self.started.borrow() {
                    signal(self.init_pid.get(), sig, all);
                } else if ![libc::SIGCHLD, libc::SIGWINCH, libc::SIGCONT, libc::SIGURG]
                    .contains(&sig)
                {
                    // Not started: the init "dies" of the signal unless it is harmless.
                    self.pending.borrow_mut().take();
                    self.exit.send_replace(Some(128 + sig));
                }
            }
            Target::Exec(id) => {
                let pid = self.execs.borrow().get(id).map(|(pid, _)| *pid);
                signal(pid.ok_or_else(|| failed("no such exec"))?, sig, false);
            }
        }
        Ok(())
    }

    async fn wait(&self, target: Target<'_>) -> Result<i32, SandboxError> {
        let mut child = match target {
            Target::Init => {
                let mut exit = self.exit.subscribe();
                let mut started = self.started.subscribe();
                tokio::select! {
                    s = exit.wait_for(Option::is_some) => {
                        return Ok(s.map(|s| s.unwrap_or(255)).unwrap_or(255));
                    }
                    _ = started.wait_for(|s| *s) => {}
                }
                self.init.borrow_mut().take()
            }
            Target::Exec(id) => self
                .execs
                .borrow_mut()
                .get_mut(id)
                .and_then(|(_, child)| child.take()),
        }
        .ok_or_else(|| failed("no such process"))?;
        let status = child.wait().await.map_err(failed)?;
        match target {
            Target::Exec(id) => {
                self.execs.borrow_mut().remove(id);
            }
            Target::Init => {
                self.exit.send_replace(Some(status_of(status)));
            }
        }
        Ok(status_of(status))
    }

    async fn exec(
        &self,
        exec_id: &str,
        process: &Process,
        stdio: Stdio,
    ) -> Result<(), SandboxError> {
        let (cmd, _terminal) = command(process, stdio)?;
        let child = spawn(cmd)?;
        self.execs
            .borrow_mut()
            .insert(exec_id.to_string(), (child.id(), Some(child)));
        Ok(())
    }

    async fn resize(
        &self,
        target: Target<'_>,
        size: Option<(u16, u16)>,
    ) -> Result<(), SandboxError> {
        // The init shares the host's pty: a size the monitor noticed is already its size.
        if let (Target::Init, Some((rows, cols))) = (target, size) {
            if let Some(t) = self.terminal.borrow().as_ref() {
                bulkhead_shim::console::set_winsize(t.as_raw_fd(), rows, cols);
            }
        }
        Ok(())
    }

    async fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        let mut pids: Vec<i32> = self.init_pid.get().map(|p| p as i32).into_iter().collect();
        pids.extend(
            self.execs
                .borrow()
                .values()
                .filter_map(|(pid, _)| *pid)
                .map(|p| p as i32),
        );
        Ok(pids)
    }

    async fn pause(&self) -> Result<(), SandboxError> {
        self.kill(Target::Init, libc::SIGSTOP, true).await
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.kill(Target::Init, libc::SIGCONT, true).await
    }

    async fn update(&self, _resources: &LinuxResources) -> Result<(), SandboxError> {
        Err(SandboxError::Unsupported("update in the host test sandbox"))
    }

    async fn stats(&self) -> Result<GuestStats, SandboxError> {
        Ok(GuestStats::default())
    }

    /// Its processes are host processes: they need the host's file system.
    fn confinable(&self) -> bool {
        false
    }

    fn init_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// A host process has no guest to ask: its init and execs are killed.
    async fn power_off(&self) {
        signal(self.init_pid.get(), libc::SIGKILL, true);
        for (pid, _) in self.execs.borrow().values() {
            signal(*pid, libc::SIGKILL, false);
        }
    }

    async fn shutdown(&self) -> Option<String> {
        for (pid, _) in self.execs.borrow().values() {
            signal(*pid, libc::SIGKILL, false);
        }
        None
    }
}

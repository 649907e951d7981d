//! The sandbox monitor: the process `create` leaves behind, one per container.
//!
//! It is forked by `create` (so it stays a descendant of the engine's subreaper, which waits
//! for it), and in order: moves into its own mount namespace (share binds stay private and die
//! with it) and the spec's network namespace, joins the host cgroup, binds the share, runs the
//! createRuntime/prestart hooks, boots the VM, creates the container in the guest with the
//! caller's stdio (or a pty whose master went to `--console-socket`), runs the createContainer
//! hooks, opens `control.sock` and only then tells `create` it is ready. It then serves control
//! requests until the container's init exits, and exits with the init's status after the VM
//! is gone. Any failure before readiness undoes every step and is reported to `create` as one
//! line.

mod server;
mod setup;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Config, VmSize};
use crate::hooks::{self, Phase};
use crate::process::ReadyWriter;
use crate::sandbox::{BootContext, Sandbox, SandboxFactory, Stdio};
use crate::share::Share;
use crate::spec::Bundle;
use crate::state::{State, Status, Store};

/// Where the guest mounts the share (the agent uses the same path for the rootfs tag).
pub const GUEST_SHARE_ROOT: &str = bulkhead_protocol::GUEST_SHARE_DIR;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error("listen on control socket")]
    Listen(#[source] std::io::Error),
}

/// How the container's terminal or streams reach the monitor.
#[derive(Debug)]
pub enum StdioPlan {
    /// Relay the stdio fds inherited from the caller.
    Inherited,
    /// Open a pty and send its master to this socket (`--console-socket`).
    ConsoleSocket(PathBuf),
    /// Use the caller's own terminal (foreground `run` of a terminal process).
    OwnTerminal,
}

/// Everything `create` decided before forking the monitor.
pub struct Plan {
    pub id: String,
    pub bundle: Bundle,
    pub config: Config,
    pub size: VmSize,
    pub store: Store,
    pub state_dir: PathBuf,
    pub stdio: StdioPlan,
    /// Relative cgroup path (already resolved from cgroupsPath and the driver).
    pub cgroup: PathBuf,
    pub created: String,
}

/// Shared between the monitor's threads.
pub(crate) struct Shared {
    pub store: Store,
    pub state: Mutex<State>,
    pub sandbox: Box<dyn Sandbox>,
    pub spec: oci_spec::runtime::Spec,
    pub timings: Mutex<Timings>,
}

/// When each phase of the container's life ended, in seconds since the monitor started;
/// written to `<log_dir>/<id>.timings.json` when the monitor exits (for `bench/`).
pub(crate) struct Timings {
    t0: Instant,
    marks: Vec<(&'static str, f64)>,
}

impl Timings {
    fn new() -> Self {
        Timings {
            t0: Instant::now(),
            marks: Vec::new(),
        }
    }

    pub fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, self.t0.elapsed().as_secs_f64()));
    }

    fn write(&self, path: &std::path::Path) {
        let map: serde_json::Map<String, serde_json::Value> = self
            .marks
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let _ = std::fs::write(path, serde_json::Value::Object(map).to_string() + "\n");
    }
}

impl Shared {
    /// Updates the status and persists it; persisting failures are logged, not fatal (the
    /// status is also derivable from the monitor being alive).
    pub fn set_status(&self, status: Status) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.status = status;
        if let Err(e) = self.store.save(&st) {
            crate::logging::warn(&format!("save state: {e}"));
        }
    }

    pub fn status(&self) -> Status {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).status
    }

    pub fn state_json(&self) -> String {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.oci_json().to_string()
    }
}

/// The monitor's body, run in the forked child. Returns the process exit status.
pub fn run(plan: Plan, factory: &dyn SandboxFactory, ready: ReadyWriter) -> i32 {
    let signals = crate::process::block_forwarded();
    let stdio_fds = crate::process::take_stdio();
    let mut undo = setup::Undo::default();
    let mut timings = Timings::new();
    let shared = match prepare(&plan, factory, stdio_fds, &mut undo, &mut timings) {
        Ok(s) => s,
        Err(e) => {
            undo.run();
            let _ = plan.store.remove(&plan.id);
            ready.report(Some(crate::logging::one_line(&e.to_string())));
            return 1;
        }
    };
    let sock = crate::control::sock_path(&plan.state_dir, crate::control::SOCKET_NAME);
    // `_sock` keeps the directory fd of a long socket path open while the monitor lives.
    let (listener, _sock) = match sock.and_then(|s| UnixListener::bind(&s.path).map(|l| (l, s))) {
        Ok(l) => l,
        Err(e) => {
            shared.sandbox.shutdown();
            undo.run();
            let _ = plan.store.remove(&plan.id);
            ready.report(Some(MonitorError::Listen(e).to_string()));
            return 1;
        }
    };
    let shared = Arc::new(shared);
    shared.set_status(Status::Created);
    ready.report(None);

    server::spawn(listener, shared.clone());
    server::spawn_signal_forwarder(signals, shared.clone());
    let (status, healthy) = match shared.sandbox.wait() {
        Ok(s) => (s, true),
        Err(e) => {
            crate::logging::error(&format!("container {}: {e}", plan.id));
            (255, false)
        }
    };
    {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.status = Status::Stopped;
        st.exit_status = Some(status);
        if let Err(e) = shared.store.save(&st) {
            crate::logging::warn(&format!("save state: {e}"));
        }
    }
    mark(&shared, "exited");
    shared.sandbox.shutdown();
    let _ = std::fs::remove_file(crate::control::socket_path(&plan.state_dir));
    undo.run_share_only();
    mark(&shared, "torn_down");
    if plan.config.keep_logs {
        let timings = plan
            .config
            .log_dir
            .join(format!("{}.timings.json", plan.id));
        shared
            .timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(&timings);
    } else if healthy {
        let _ = std::fs::remove_file(plan.config.console_log(&plan.id));
    }
    status
}

pub(crate) fn mark(shared: &Shared, phase: &'static str) {
    shared
        .timings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .mark(phase);
}

fn prepare(
    plan: &Plan,
    factory: &dyn SandboxFactory,
    stdio_fds: [Option<OwnedFd>; 3],
    undo: &mut setup::Undo,
    timings: &mut Timings,
) -> Result<Shared, MonitorError> {
    setup::enter_namespaces(&plan.bundle)?;
    let pid = std::process::id() as i32;
    let limits = setup::host_limits(&plan.bundle, &plan.size, &plan.config);
    let cgroup_dirs = setup::join_cgroup(&plan.cgroup, pid, &limits)?;
    undo.cgroup_dirs = cgroup_dirs.clone();

    let share = Share::prepare(
        &plan.state_dir,
        &plan.bundle,
        std::path::Path::new(GUEST_SHARE_ROOT),
    )?;
    let share_dir = share.dir.clone();
    let guest_spec = share.guest_spec.clone();
    undo.share = Some(share);

    let state = State {
        oci_version: crate::state::OCI_VERSION.into(),
        id: plan.id.clone(),
        status: Status::Creating,
        pid,
        bundle: plan.bundle.dir.clone(),
        rootfs: plan.bundle.rootfs.clone(),
        created: plan.created.clone(),
        owner: String::new(),
        annotations: plan.bundle.annotations(),
        monitor_start_time: crate::state::process_start_time(pid).unwrap_or(0),
        cgroup_dirs,
        exit_status: None,
    };
    plan.store.save(&state)?;
    let state_json = state.oci_json().to_string();
    hooks::run(&plan.bundle.spec, Phase::CreateRuntime, &state_json)?;
    hooks::run(&plan.bundle.spec, Phase::Prestart, &state_json)?;

    timings.mark("host_ready");
    let stdio = stdio_for(plan, stdio_fds)?;
    let ctx = BootContext {
        id: plan.id.clone(),
        config: plan.config.clone(),
        size: plan.size,
        share_dir,
        state_dir: plan.state_dir.clone(),
        console_log: plan.config.console_log(&plan.id),
    };
    let sandbox = factory.boot(&ctx)?;
    timings.mark("agent_ready");
    if let Err(e) = sandbox.create(&guest_spec, stdio) {
        sandbox.shutdown();
        return Err(e.into());
    }
    if let Err(e) = hooks::run(&plan.bundle.spec, Phase::CreateContainer, &state_json) {
        sandbox.shutdown();
        return Err(e.into());
    }
    timings.mark("created");
    let timings = std::mem::replace(timings, Timings::new());
    Ok(Shared {
        store: plan.store.clone(),
        state: Mutex::new(state),
        sandbox,
        spec: plan.bundle.spec.clone(),
        timings: Mutex::new(timings),
    })
}

fn stdio_for(plan: &Plan, fds: [Option<OwnedFd>; 3]) -> Result<Stdio, MonitorError> {
    let [stdin, stdout, stderr] = fds;
    match &plan.stdio {
        StdioPlan::Inherited => Ok(Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        }),
        StdioPlan::OwnTerminal => match stdin {
            Some(t) => Ok(Stdio::Terminal(t)),
            None => Err(setup::SetupError::NoTerminal.into()),
        },
        StdioPlan::ConsoleSocket(path) => {
            let pty = crate::console::open_pty()?;
            crate::console::make_raw(&pty.slave).map_err(|_| setup::SetupError::NoTerminal)?;
            crate::console::send_to_socket(path, &pty.name, &pty.master)?;
            Ok(Stdio::Terminal(pty.slave))
        }
    }
}

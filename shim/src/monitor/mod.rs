//! The sandbox monitor: the process `create` leaves behind, one per container.
//!
//! It is forked by `create` (so it stays a descendant of the engine's subreaper, which waits
//! for it). It blocks the signals it forwards (so every thread it starts inherits the mask and
//! one signalfd takes them), starts one current-thread tokio runtime, and in order: binds
//! `control.sock` (a `start` that arrives while the VM boots waits instead of failing), moves
//! into its own mount namespace and the spec's network namespace, joins the host cgroup, binds
//! the share, runs the createRuntime/prestart hooks, boots the VM, creates the container in the
//! guest with the caller's stdio (or a pty whose master went to `--console-socket`), runs the
//! createContainer hooks and only then tells `create` it is ready. It then serves control
//! requests and forwards signals until the container's init exits, and exits with the init's
//! status after the VM is gone. Any failure before readiness undoes every step and is reported
//! to `create` as one line.
//!
//! One owner: the monitor's state lives in [`Monitor`], on the runtime's one thread; connection
//! tasks borrow it between awaits, so there are no locks. Threads besides it are the VM's own
//! (vCPUs, device loop, virtio-fs worker) and hook runs.

mod exec;
mod identity;
mod jail;
#[cfg(test)]
mod lock_down_tests;
mod seccomp;
mod server;
mod setup;
mod signals;

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::{Config, VmSize};
use crate::error::{Failure, HasKind, Kind};
use crate::hooks::Phase;
use crate::lifecycle::{Refused, Status};
use crate::process::ReadyWriter;
use crate::sandbox::{BootContext, Sandbox, SandboxFactory, Stdio, Target};
use crate::share::Share;
use crate::spec::Bundle;
use crate::state::{State, Store};

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
    #[error("control socket")]
    Listen(#[source] std::io::Error),
    #[error("monitor runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// How long a guest has to carry out a SIGKILL itself (so the init's last output arrives whole)
/// before the host stops its VM. A guest that ignores the request, or cannot take it (its
/// agent starved, frozen, or gone), does not keep its container running beyond this.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the guest has to take any other signal before `kill` fails.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a signal (or terminal size) forwarded from the monitor's own pid may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

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

/// When each phase of the container's life ended, in seconds since the monitor started;
/// written to `<log_dir>/<id>.timings.json` when the monitor exits (for `bench/`).
struct Timings {
    t0: Instant,
    marks: Vec<(&'static str, f64)>,
}

impl Timings {
    fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, self.t0.elapsed().as_secs_f64()));
    }

    /// The marks, and `extra` (the sandbox's counters: [`Sandbox::counters`]).
    fn write(&self, path: &std::path::Path, extra: serde_json::Map<String, serde_json::Value>) {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .marks
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        map.extend(extra);
        let text = serde_json::Value::Object(map).to_string() + "\n";
        let _ = crate::private::write(path, text.as_bytes());
    }
}

/// The monitor's state: one per process, owned by its runtime thread.
pub(crate) struct Monitor<S> {
    plan: Plan,
    state: RefCell<State>,
    status: watch::Sender<Status>,
    sandbox: OnceCell<S>,
    timings: RefCell<Timings>,
    /// A `start` is under way (it awaits the guest; a second one must not pass the rules).
    starting: Cell<bool>,
    exec_seq: Cell<u64>,
    /// A SIGKILL was asked for: [`Monitor::supervise`] starts the [`KILL_GRACE`] clock.
    sigkill: Notify,
    /// The host stopped the VM to carry out a SIGKILL: the init's status is 137 whatever the
    /// guest (no longer) says.
    killed_by_host: Cell<bool>,
    /// Where [`Monitor::lock_down`] is.
    lock: Cell<Lock>,
    /// The container's network is in its sandbox ([`Monitor::connect_network`]).
    network_connected: Cell<bool>,
}

/// The monitor's lock-down (see [`Monitor::lock_down`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// Set-up: the whole host is in view (hooks run).
    Open,
    /// In its jail (or a sandbox that runs nothing in the guest, for tests).
    Locked,
    /// It failed part-way: the workload never runs.
    Failed,
}

/// The directory in a container's state directory the jail's root is mounted on.
const JAIL_DIR: &str = "jail";

impl<S: Sandbox> Monitor<S> {
    /// A monitor for `plan` in `status`, its clock started now.
    fn new(plan: Plan, status: Status, sandbox: OnceCell<S>) -> Self {
        Monitor {
            state: RefCell::new(initial_state(&plan)),
            status: watch::Sender::new(status),
            sandbox,
            timings: RefCell::new(Timings {
                t0: Instant::now(),
                marks: Vec::new(),
            }),
            starting: Cell::new(false),
            exec_seq: Cell::new(1),
            sigkill: Notify::new(),
            killed_by_host: Cell::new(false),
            lock: Cell::new(Lock::Open),
            network_connected: Cell::new(false),
            plan,
        }
    }

    fn id(&self) -> &str {
        &self.plan.id
    }

    /// Updates the status, tells waiters and persists it in the state's live file (the one
    /// the lock-down leaves writable: see `state`); persisting failures are logged, not fatal
    /// (the status is also derivable from the monitor being alive).
    fn set_status(&self, status: Status) {
        self.status.send_replace(status);
        let mut st = self.state.borrow_mut();
        st.status = status;
        if let Err(e) = self.plan.store.save_live(&st) {
            crate::logging::warn(&format!(
                "save state: {}",
                bulkhead_protocol::error_chain(&e)
            ));
        }
    }

    fn mark(&self, phase: &'static str) {
        self.timings.borrow_mut().mark(phase);
    }

    /// The status once creation has ended (waiting for it, bounded by the boot timeout).
    async fn settled_status(&self) -> Result<Status, Refused> {
        let mut rx = self.status.subscribe();
        let limit = u64::from(self.plan.config.boot_timeout_secs);
        let settled = tokio::time::timeout(
            Duration::from_secs(limit),
            rx.wait_for(|s| *s != Status::Creating),
        )
        .await;
        match settled {
            Ok(Ok(s)) => Ok(*s),
            Ok(Err(_)) => Ok(Status::Stopped),
            Err(_) => Err(Refused::StillCreating(limit)),
        }
    }

    fn sandbox(&self) -> Result<&S, Failure> {
        self.sandbox
            .get()
            .ok_or_else(|| Refused::NotRunning.failure())
    }

    /// The state as the OCI state JSON (hooks get it on stdin).
    fn state_json(&self) -> String {
        self.state.borrow().oci_json().to_string()
    }

    /// Carries the container's network into the sandbox, once: the engine's interfaces are in
    /// the namespace by `start` (Docker adds them in a prestart hook or between `create` and
    /// `start`), and it is host work (netlink, taps) the jail no longer allows, so it happens
    /// before the lock-down whichever comes first, `start` or an `exec` into a created
    /// container.
    async fn connect_network(&self) -> Result<(), Failure> {
        if self.network_connected.get() {
            return Ok(());
        }
        self.sandbox()?
            .connect_network()
            .await
            .map_err(|e| e.failure())?;
        self.network_connected.set(true);
        self.mark("network_ready");
        Ok(())
    }

    /// Locks the monitor down before the workload's first process runs (`start`, or an `exec`
    /// into a created container): from here on the guest may be hostile. Its own root with
    /// only what it still uses, capabilities dropped, `no_new_privs`, rlimits (`jail.rs`),
    /// then this thread's seccomp list (`seccomp.rs`, unless `seccomp = false`). Idempotent. When it
    /// fails, the init is killed and the container never runs unconfined: `start` fails with
    /// one line and the monitor ends with the init (137).
    async fn lock_down(&self) -> Result<(), Failure> {
        match self.lock.get() {
            Lock::Locked => return Ok(()),
            Lock::Failed => return Err(Failure::new(Kind::Internal, "monitor lock-down failed")),
            Lock::Open => {}
        }
        let sb = self.sandbox()?;
        if let Err(e) = self.connect_network().await {
            self.lock.set(Lock::Failed);
            let _ =
                tokio::time::timeout(KILL_GRACE, sb.kill(Target::Init, libc::SIGKILL, true)).await;
            self.sigkill.notify_one();
            return Err(e);
        }
        if !sb.confinable() {
            self.lock.set(Lock::Locked);
            return Ok(());
        }
        let locked = crate::logging::hold_file()
            .map_err(|e| format!("open the log file: {e}"))
            .and_then(|()| match self.plan.config.monitor_identity() {
                Some((uid, gid)) => identity::hand_over(&self.handed(), uid, gid)
                    .map_err(|e| bulkhead_protocol::error_chain(&e)),
                None => Ok(()),
            })
            .and_then(|()| {
                jail::enter(&self.jail()).map_err(|e| bulkhead_protocol::error_chain(&e))
            })
            .and_then(|()| {
                if !self.plan.config.seccomp {
                    return Ok(());
                }
                seccomp::install()
                    .map_err(|e| format!("seccomp: {}", bulkhead_protocol::error_chain(&e)))
            });
        if let Err(why) = locked {
            self.lock.set(Lock::Failed);
            let message = format!("container {}: lock-down failed: {why}", self.id());
            crate::logging::error(&message);
            let _ =
                tokio::time::timeout(KILL_GRACE, sb.kill(Target::Init, libc::SIGKILL, true)).await;
            self.sigkill.notify_one();
            return Err(Failure::new(Kind::Internal, message));
        }
        self.lock.set(Lock::Locked);
        crate::logging::debug(&format!("container {}: monitor locked down", self.id()));
        Ok(())
    }

    /// What the jail keeps: writable, the state's live directory (the status) and the log
    /// directory (console log and its rotation, timings); read-only, the state directory
    /// (state, sockets, which `delete` acts on with root's powers) and the host cgroup
    /// directories (stats; their limits are not the monitor's to raise, `update` writes them
    /// from the CLI). Open files for the share's cap and the monitor's reserve.
    fn jail(&self) -> jail::Jail {
        let plan = &self.plan;
        let keep = vec![
            plan.state_dir.join(crate::state::LIVE_DIR),
            plan.config.log_dir.clone(),
        ];
        let mut read_only = vec![plan.state_dir.clone()];
        read_only.extend(self.state.borrow().cgroup_dirs.iter().cloned());
        let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1 << 20, |(_, hard)| hard);
        jail::Jail {
            dir: plan.state_dir.join(JAIL_DIR),
            keep,
            read_only,
            nofile: plan.config.monitor_fd_limit(hard),
            identity: plan.config.monitor_identity(),
        }
    }

    /// What an unprivileged monitor is handed before its lock-down (`identity.rs`).
    fn handed(&self) -> identity::Handed {
        let plan = &self.plan;
        identity::Handed {
            state_dir: plan.state_dir.clone(),
            live_dir: plan.state_dir.join(crate::state::LIVE_DIR),
            log_dir: plan.config.log_dir.clone(),
            console_log: plan.config.console_log(&plan.id),
            timings: plan.config.timings_log(&plan.id),
        }
    }

    /// Runs the hooks of `phase` off the runtime thread (they are external programs).
    async fn hooks(&self, phase: Phase) -> Result<(), Failure> {
        let spec = self.plan.bundle.spec.clone();
        let state = self.state_json();
        let run = tokio::task::spawn_blocking(move || crate::hooks::run(&spec, phase, &state));
        match run.await {
            Ok(r) => r.map_err(|e| e.failure()),
            Err(e) => Err(Failure::new(Kind::Internal, format!("hooks: {e}"))),
        }
    }
}

/// The monitor's body, run in the forked child. Returns the process exit status.
pub fn run<F: SandboxFactory>(plan: Plan, factory: &F, ready: ReadyWriter) -> i32 {
    // Before any thread installs a seccomp list: every later line, and the report of a
    // forbidden syscall, goes to the log file opened now.
    if let Err(e) = crate::logging::hold_file() {
        let e = std::io::Error::new(e.kind(), format!("open the log file: {e}"));
        return fail_early(&plan, ready, &e);
    }
    crate::logging::report_forbidden_syscalls();
    // Before any other thread exists: the monitor user's ids become the saved ones, and the
    // VM's threads' seccomp lists let glibc carry the switch to them at the lock-down
    // (`jail::prepare_identity`).
    if let Some((uid, gid)) = plan.config.monitor_identity() {
        if let Err(e) = jail::prepare_identity(uid, gid) {
            return fail_early(&plan, ready, &e);
        }
        bulkhead_vmm::seccomp::expect_identity(uid, gid);
    }
    let signals = crate::process::block_forwarded();
    let stdio_fds = crate::process::take_stdio();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return fail_early(&plan, ready, &MonitorError::Runtime(e)),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, life(plan, factory, ready, signals, stdio_fds))
}

fn fail_early(plan: &Plan, ready: ReadyWriter, e: &dyn std::error::Error) -> i32 {
    let _ = plan.store.remove(&plan.id);
    ready.report(Some(crate::logging::one_line(
        &bulkhead_protocol::error_chain(e),
    )));
    1
}

async fn life<F: SandboxFactory>(
    plan: Plan,
    factory: &F,
    ready: ReadyWriter,
    signal_set: nix::sys::signal::SigSet,
    stdio_fds: [Option<OwnedFd>; 3],
) -> i32 {
    let signals = match signals::Signals::new(&signal_set) {
        Ok(s) => s,
        Err(e) => return fail_early(&plan, ready, &MonitorError::Runtime(e)),
    };
    // The control socket comes first, so that callers can wait for the creation.
    let (listener, socket_file) = match server::bind(&plan.state_dir) {
        Ok(l) => l,
        Err(e) => return fail_early(&plan, ready, &MonitorError::Listen(e)),
    };
    let monitor = Rc::new(Monitor::new(plan, Status::Creating, OnceCell::new()));
    let server = tokio::task::spawn_local(server::serve(listener, monitor.clone()));

    let mut undo = setup::Undo::default();
    match prepare(&monitor, factory, stdio_fds, &mut undo).await {
        Ok(sandbox) => {
            let _ = monitor.sandbox.set(sandbox);
        }
        Err(e) => {
            // Callers waiting for the creation (a `start` right after `create`) get their
            // refusal before the runtime goes.
            monitor.status.send_replace(Status::Stopped);
            tokio::task::yield_now().await;
            server.abort();
            socket_file.remove();
            undo.run();
            return fail_early(&monitor.plan, ready, &e);
        }
    }
    monitor.mark("created");
    monitor.set_status(Status::Created);
    ready.report(None);

    let (status, healthy) = match monitor.supervise(&signals).await {
        Ok(s) => (s, true),
        Err(e) => {
            crate::logging::error(&format!("container {}: {}", monitor.id(), e.message));
            (255, false)
        }
    };
    monitor.state.borrow_mut().exit_status = Some(status);
    monitor.set_status(Status::Stopped);
    monitor.mark("exited");
    if status == crate::signal::killed_status(libc::SIGKILL) {
        monitor.report_oom_kill().await;
    }
    let fault = match monitor.sandbox.get() {
        Some(sb) => sb.shutdown().await,
        None => None,
    };
    if let Some(why) = &fault {
        crate::logging::error(&format!("container {}: vm: {why}", monitor.id()));
        let console = monitor.plan.config.console_log(monitor.id());
        for line in console_tail(&console, CONSOLE_TAIL_LINES) {
            crate::logging::error(&format!("container {}: console: {line}", monitor.id()));
        }
    }
    server.abort();
    socket_file.remove();
    undo.run_share_only();
    monitor.mark("torn_down");
    monitor.finish_logs(healthy && fault.is_none());
    status
}

impl<S: Sandbox> Monitor<S> {
    /// Forwards signals to the init until it exits; returns its status. A SIGKILL that the
    /// guest has not carried out within [`KILL_GRACE`] is carried out by stopping the VM.
    async fn supervise(&self, signals: &signals::Signals) -> Result<i32, Failure> {
        let sb = self.sandbox()?;
        let exit = sb.wait(Target::Init);
        tokio::pin!(exit);
        let grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace);
        let mut armed = false;
        loop {
            tokio::select! {
                status = &mut exit => return match status {
                    Err(_) if self.killed_by_host.get() => {
                        Ok(crate::signal::killed_status(libc::SIGKILL))
                    }
                    other => other.map_err(|e| e.failure()),
                },
                () = self.sigkill.notified(), if !armed => {
                    armed = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
                }
                () = &mut grace, if armed && !self.killed_by_host.get() => {
                    armed = false;
                    // An init that did end is only delivering its last output (bounded by the
                    // drain timeout): that is not a guest ignoring the kill.
                    if !sb.init_exited() {
                        crate::logging::warn(&format!(
                            "container {}: still running {}s after SIGKILL: stopping its vm from the host",
                            self.id(),
                            KILL_GRACE.as_secs()
                        ));
                        self.killed_by_host.set(true);
                        sb.power_off().await;
                    }
                }
                // Once a SIGKILL is under way nothing else is forwarded, and a forward the guest
                // does not answer is given up: neither may hold off the grace above.
                signal = signals.next(), if !armed => match signal {
                    Ok(libc::SIGWINCH) => {
                        let _ = tokio::time::timeout(FORWARD_TIMEOUT, sb.resize(Target::Init, None))
                            .await;
                    }
                    // An engine that signals the pid it knows means the container.
                    Ok(signal) => {
                        let sent = sb.kill(Target::Init, signal, false);
                        let _ = tokio::time::timeout(FORWARD_TIMEOUT, sent).await;
                    }
                    Err(e) => crate::logging::warn(&format!("signals: {e}")),
                },
            }
        }
    }

    /// A SIGKILLed init may have been the guest's OOM killer's choice: say so in the log, so a
    /// guest OOM kill is told apart from a kill of the whole VM (which leaves no monitor to log).
    async fn report_oom_kill(&self) {
        let Ok(stats) = self.sandbox().map(|sb| sb.stats()) else {
            return;
        };
        let kills = stats
            .await
            .ok()
            .and_then(|s| s.memory)
            .map_or(0, |m| m.oom_kill_events);
        if kills > 0 {
            crate::logging::warn(&format!(
                "container {}: killed by the guest's OOM killer ({kills} OOM kill(s) in its memory cgroup)",
                self.id()
            ));
        }
    }

    /// Console logs of containers that ended normally are removed (unless `keep_logs`), with
    /// their rotated part (`.1`); the log of a failed VM is what the user reads next, so it
    /// stays.
    fn finish_logs(&self, healthy: bool) {
        let cfg = &self.plan.config;
        if cfg.keep_logs {
            let extra = self
                .sandbox
                .get()
                .map(Sandbox::counters)
                .unwrap_or_default();
            self.timings
                .borrow()
                .write(&cfg.timings_log(self.id()), extra);
        } else if healthy {
            let log = cfg.console_log(self.id());
            let _ = std::fs::remove_file(bulkhead_vmm::devices::serial::rotated_path(&log));
            let _ = std::fs::remove_file(log);
        }
    }
}

/// Lines of the console a failed VM leaves in the log.
const CONSOLE_TAIL_LINES: usize = 30;
/// The console bytes read for them, and the longest line kept.
const CONSOLE_TAIL_BYTES: u64 = 8192;
const CONSOLE_LINE_MAX: usize = 240;

/// The last `lines` lines of a console log (its rotated part first, when the current file is
/// short), made safe for a log line: the guest wrote them, so control characters become `?`
/// and long lines are cut.
fn console_tail(path: &std::path::Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let read_end = |p: &std::path::Path| -> Vec<u8> {
        let Ok(mut f) = std::fs::File::open(p) else {
            return Vec::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)));
        let mut buf = Vec::new();
        let _ = f.take(CONSOLE_TAIL_BYTES).read_to_end(&mut buf);
        buf
    };
    let mut bytes = read_end(path);
    if (bytes.len() as u64) < CONSOLE_TAIL_BYTES {
        let mut older = read_end(&bulkhead_vmm::devices::serial::rotated_path(path));
        older.extend_from_slice(&bytes);
        bytes = older;
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .take(CONSOLE_LINE_MAX)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].to_vec()
}

fn initial_state(plan: &Plan) -> State {
    let pid = std::process::id() as i32;
    State {
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
        cgroup_dirs: Vec::new(),
        vm: Some(plan.size),
        exit_status: None,
    }
}

/// Everything up to a created container. On error the caller runs `undo`.
async fn prepare<F: SandboxFactory>(
    monitor: &Monitor<F::Sandbox>,
    factory: &F,
    stdio_fds: [Option<OwnedFd>; 3],
    undo: &mut setup::Undo,
) -> Result<F::Sandbox, MonitorError> {
    let plan = &monitor.plan;
    setup::enter_namespaces(&plan.bundle)?;
    let pid = std::process::id() as i32;
    let res = plan.bundle.resources();
    let limits = crate::cgroups::HostLimits::new(res.as_ref(), &plan.size, &plan.config);
    let cgroup_dirs = setup::join_cgroup(&plan.cgroup, pid, &limits)?;
    undo.cgroup_dirs = cgroup_dirs.clone();
    monitor.state.borrow_mut().cgroup_dirs = cgroup_dirs;

    let share_root = factory.share_root(&plan.state_dir.join(crate::share::SHARE_DIR));
    let share = Share::prepare(&plan.state_dir, &plan.bundle, &share_root)?;
    let share_dir = share.dir.clone();
    let mut guest_spec = share.guest_spec.clone();
    factory.adapt_spec(&mut guest_spec);
    undo.share = Some(share);

    plan.store.save(&monitor.state.borrow())?;
    monitor.hooks(Phase::CreateRuntime).await.map_err(hook)?;
    monitor.hooks(Phase::Prestart).await.map_err(hook)?;

    monitor.mark("host_ready");
    let stdio = stdio_for(plan, stdio_fds)?;
    let ctx = BootContext {
        id: plan.id.clone(),
        config: plan.config.clone(),
        size: plan.size,
        share_dir,
        state_dir: plan.state_dir.clone(),
        console_log: plan.config.console_log(&plan.id),
    };
    let sandbox = factory.boot(&ctx).await?;
    monitor.mark("agent_ready");
    let created = async {
        sandbox.create(&guest_spec, stdio).await?;
        monitor.hooks(Phase::CreateContainer).await.map_err(hook)
    };
    if let Err(e) = created.await {
        sandbox.shutdown().await;
        return Err(e);
    }
    Ok(sandbox)
}

/// A hook's failure, already one line, as a monitor error.
fn hook(f: Failure) -> MonitorError {
    MonitorError::Failed(f)
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
            // The pty becomes our controlling terminal, so a resize by whoever holds the
            // master (the engine) reaches us as SIGWINCH, as it would reach runc's init.
            crate::console::take_as_controlling_terminal(&pty.slave);
            Ok(Stdio::Terminal(pty.slave))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_is_the_newest_lines_made_safe() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let old = bulkhead_vmm::devices::serial::rotated_path(&log);
        std::fs::write(&old, "old 1\nold 2\n").unwrap();
        std::fs::write(&log, "new 1\n\x1b[31mred\x07\n\n").unwrap();
        assert_eq!(
            console_tail(&log, 3),
            vec!["old 2", "new 1", "?[31mred?"],
            "the rotated part comes first; blank lines are dropped"
        );
        let long = "x".repeat(1000);
        std::fs::write(&log, format!("{long}\n")).unwrap();
        assert_eq!(console_tail(&log, 1)[0].len(), CONSOLE_LINE_MAX);
        assert!(console_tail(&dir.path().join("none"), 5).is_empty());
    }
}

//! The seam between the process model (monitor, control socket, exec proxies) and the thing that
//! actually runs the container.
//!
//! The shipped `bulkhead` binary has exactly one implementation: [`crate::vm::VmFactory`], whose
//! sandbox is [`crate::vm::AgentSandbox`] — the guest agent's API — over a micro-VM booted in the
//! monitor. The trait exists so the process model (double fork, pid file, readiness,
//! exit-status propagation, control requests) can be tested without a VM by a test-only
//! implementation in the `bulkhead-tests` crate.
//!
//! Every method is async and runs on the monitor's one runtime thread, so implementations need
//! no locks and their futures need not be `Send`.
#![allow(async_fn_in_trait)] // futures stay on the monitor's current-thread runtime

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Process};
use serde_json::Value;

use crate::config::{Config, VmSize};
use crate::error::{Failure, HasKind, Kind};
use crate::stats::GuestStats;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Refused by the guest (or by the sandbox) with a kind: the agent's status code, kept.
    #[error(transparent)]
    Failed(#[from] Failure),
    /// The guest kernel or initramfs is missing.
    #[error("{what} {} not found (install it with scripts/setup.sh, or set it in /etc/bulkhead/config.toml)", .path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    /// The VM could not be built or started.
    #[error("{what}")]
    Vm {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent did not come up; `why` says how the VM ended, `log` where its console went.
    #[error("guest agent: {message} (vm: {why}; console log {})", .log.display())]
    NoAgent {
        message: String,
        why: String,
        log: PathBuf,
    },
    #[error("guest agent speaks protocol {agent}, this runtime {ours}")]
    Protocol { agent: u32, ours: u32 },
    /// The connection to the agent failed (timeout, closed, the VM is gone).
    #[error("guest agent")]
    Transport(#[source] bulkhead_protocol::client::ClientError),
    #[error("{0} is not supported by this runtime")]
    Unsupported(&'static str),
    #[error("container network")]
    Network(#[from] crate::network::NetworkError),
}

impl HasKind for SandboxError {
    fn kind(&self) -> Kind {
        use bulkhead_protocol::client::ClientError;
        match self {
            SandboxError::Failed(f) => f.kind,
            SandboxError::MissingFile { .. } => Kind::NotFound,
            SandboxError::Vm { .. } | SandboxError::Protocol { .. } | SandboxError::Network(_) => {
                Kind::Internal
            }
            SandboxError::NoAgent { .. } => Kind::Unavailable,
            SandboxError::Transport(ClientError::Timeout(_)) => Kind::DeadlineExceeded,
            SandboxError::Transport(ClientError::Agent(status)) => status.code.into(),
            SandboxError::Transport(_) => Kind::Unavailable,
            SandboxError::Unsupported(_) => Kind::Unsupported,
        }
    }
}

impl SandboxError {
    /// A failure of `kind` (test sandboxes and host-side checks).
    pub fn failed(kind: Kind, message: impl Into<String>) -> SandboxError {
        SandboxError::Failed(Failure::new(kind, message))
    }
}

/// Stdio of a container process, as host fds the sandbox relays to the guest.
#[derive(Debug)]
pub enum Stdio {
    /// Separate streams (FIFOs or pipes from containerd/conmon); `stdin` is `None` when closed.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// One terminal fd (a pty slave in raw mode, or the caller's own terminal).
    Terminal(OwnedFd),
}

/// Which process a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The container's init.
    Init,
    /// An exec'd process, by the id the monitor gave it.
    Exec(&'a str),
}

/// What a sandbox needs to boot.
#[derive(Debug, Clone)]
pub struct BootContext {
    pub id: String,
    pub config: Config,
    pub size: VmSize,
    /// Host directory the guest mounts as the container's share (rootfs and volumes).
    pub share_dir: PathBuf,
    /// The container's state directory (`<root>/<id>`): sockets of the VM live here.
    pub state_dir: PathBuf,
    /// Serial console log; never the container's stdout.
    pub console_log: PathBuf,
}

/// One running sandbox.
pub trait Sandbox {
    /// Creates the container from the spec the guest gets (the bundle's `config.json` with the
    /// share's paths; forwarded unchanged otherwise); its init exists and waits for
    /// [`Sandbox::start`].
    async fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError>;
    /// Releases the init process.
    async fn start(&self) -> Result<(), SandboxError>;
    /// Device counters for `bench/` (written with the timings when `keep_logs` is on), e.g.
    /// each NIC's frames, kicks and interrupts; they stay readable after the sandbox ended.
    fn counters(&self) -> serde_json::Map<String, Value> {
        serde_json::Map::new()
    }
    /// Makes the container's network (the interfaces of the monitor's network namespace, where
    /// the engine put them) the sandbox's, before its init runs. Host processes already live
    /// in that namespace: nothing to do.
    async fn connect_network(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    /// Signals a process (with `all` and the init: every process of the container).
    async fn kill(&self, target: Target<'_>, signal: i32, all: bool) -> Result<(), SandboxError>;
    /// Waits until the process has exited and its output reached the caller; its status
    /// (128+signal when killed).
    async fn wait(&self, target: Target<'_>) -> Result<i32, SandboxError>;
    /// Starts an extra process in the container under `exec_id`.
    async fn exec(
        &self,
        exec_id: &str,
        process: &Process,
        stdio: Stdio,
    ) -> Result<(), SandboxError>;
    /// Sets the size of a process's terminal (`None`: the size of the host terminal it was
    /// given, for a resize the monitor noticed itself).
    async fn resize(
        &self,
        target: Target<'_>,
        size: Option<(u16, u16)>,
    ) -> Result<(), SandboxError>;
    /// Pids (guest pids) of the container's processes.
    async fn pids(&self) -> Result<Vec<i32>, SandboxError>;
    async fn pause(&self) -> Result<(), SandboxError>;
    async fn resume(&self) -> Result<(), SandboxError>;
    /// Applies new `linux.resources` inside the guest.
    async fn update(&self, resources: &LinuxResources) -> Result<(), SandboxError>;
    /// The container's statistics as its own cgroup (in the guest) sees them.
    async fn stats(&self) -> Result<GuestStats, SandboxError>;
    /// Whether the monitor may lock itself down (`monitor/jail.rs`: its own root, capabilities
    /// dropped) before the workload runs. A VM's processes are in the guest and need nothing of
    /// the host's file system; a sandbox whose processes are host processes does (tests).
    fn confinable(&self) -> bool;
    /// Whether the init has ended (its output may still be on its way to the caller: what
    /// [`Sandbox::wait`] waits for after the exit).
    fn init_exited(&self) -> bool;
    /// Stops the sandbox now, without the guest's help (a SIGKILL the guest did not carry out):
    /// every process in it ends, and [`Sandbox::wait`] of each resolves.
    async fn power_off(&self);
    /// Ends the sandbox (the VM); idempotent. Returns how it ended when that was not clean (a
    /// guest fault), for the log.
    async fn shutdown(&self) -> Option<String>;
}

/// Boots sandboxes.
pub trait SandboxFactory {
    type Sandbox: Sandbox + 'static;
    /// Boots one; `ctx` says what for.
    async fn boot(&self, ctx: &BootContext) -> Result<Self::Sandbox, SandboxError>;

    /// Whether a container may share the runtime's network namespace (a spec without one, as
    /// `docker run --network host` makes): host processes can; a VM's guest has its own kernel
    /// and network stack, so `create` refuses such a spec with one line instead of starting a
    /// container that silently has no network.
    fn can_share_host_network(&self) -> bool {
        false
    }

    /// The spec the guest gets, from the one the share made. A VM's guest has one network, the
    /// VM's, whose NICs carry the namespace's interfaces: a network namespace path names a host
    /// namespace the guest cannot open, so it goes (the container stays in the guest's own).
    fn adapt_spec(&self, spec: &mut Value) {
        crate::network::drop_namespace_path(spec);
    }

    /// Where the agent sees the container's share (`share_dir` on the host), so the spec it
    /// gets names its rootfs and volumes there: in a VM, where the agent mounts the share.
    fn share_root(&self, share_dir: &Path) -> PathBuf {
        let _ = share_dir;
        PathBuf::from(bulkhead_protocol::GUEST_SHARE_DIR)
    }
}

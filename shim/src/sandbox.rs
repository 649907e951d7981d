//! The seam between the process model (monitor, control socket, exec proxies) and the thing that
//! actually runs the container.
//!
//! The shipped `bulkhead` binary has exactly one implementation: [`crate::vm::VmFactory`], which
//! boots the micro-VM in-process and talks to the guest agent. The trait exists so the process
//! model — double fork, pid file, readiness, exit-status propagation, control requests — can be
//! tested without a VM by a test-only implementation that lives in the `bulkhead-tests` crate.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::{Config, VmSize};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A message from the guest (or the VMM) worth showing the user as is — e.g. runc's
    /// "executable file not found in $PATH" wording for a missing command.
    #[error("{0}")]
    Failed(String),
    #[error("container not running")]
    NotRunning,
    #[error("{0} is not supported by this runtime")]
    Unsupported(&'static str),
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
    /// One terminal fd (a pty slave in raw mode, or the caller's own terminal); the sandbox
    /// forwards its window size to the guest.
    Terminal(OwnedFd),
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

/// One running sandbox. Calls come from several threads: the monitor's main thread waits for
/// the init to exit while the control-socket threads start, signal, exec and query.
pub trait Sandbox: Send + Sync {
    /// Creates the container from the guest-side spec; its init exists and waits for
    /// [`Sandbox::start`]. Errors carry the guest's message.
    fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError>;
    /// Releases the init process.
    fn start(&self) -> Result<(), SandboxError>;
    /// Signals the init (or, with `all`, every process of the container).
    fn kill(&self, signal: i32, all: bool) -> Result<(), SandboxError>;
    /// Blocks until the init exits; returns its status (128+signal when killed).
    fn wait(&self) -> Result<i32, SandboxError>;
    /// Starts an extra process described by an OCI process JSON.
    fn exec(&self, exec_id: &str, process: &Value, stdio: Stdio) -> Result<(), SandboxError>;
    fn kill_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError>;
    /// Blocks until the exec'd process exits; returns its status.
    fn wait_exec(&self, exec_id: &str) -> Result<i32, SandboxError>;
    /// Pids (guest pids) of the container's processes.
    fn pids(&self) -> Result<Vec<i32>, SandboxError>;
    fn pause(&self) -> Result<(), SandboxError>;
    fn resume(&self) -> Result<(), SandboxError>;
    /// Applies new `linux.resources` inside the guest.
    fn update(&self, resources: &Value) -> Result<(), SandboxError>;
    /// Guest-side statistics (merged into the host cgroup's by the monitor).
    fn stats(&self) -> Result<Value, SandboxError>;
    /// Ends the VM; idempotent.
    fn shutdown(&self);
}

/// Boots sandboxes.
pub trait SandboxFactory: Sync {
    fn boot(&self, ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError>;
}

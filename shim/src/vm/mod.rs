//! The real sandbox: a micro-VM run by the `bulkhead_vmm` library inside the monitor process
//! (its vCPU threads are the monitor's), with the container driven through the guest agent.
//!
//! Boot recipe: VM config from the runtime config and the container's size (kernel, agent
//! initramfs, memory, vCPUs, serial console → per-container log file, hybrid vsock socket in the
//! state directory, the share as a virtio-fs device) → build → run on its own thread → connect
//! to the agent (retrying while the guest boots) → check the protocol version.

mod agent;
pub mod relay;

use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use bulkhead_protocol::client::{Client, ClientConfig, Connector};
use bulkhead_vmm::devices::virtio::fs::{FsCache, FsConfig};
use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
use bulkhead_vmm::{ConsoleOutput, ExitReason, RunError, Vm, VmConfig, VmHandle};
use serde_json::Value;

pub use agent::{AgentSandbox, SHARE_ROOTFS, SHARE_TAG};

use crate::control::SockPath;
use crate::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory, Stdio};

/// Name of the hybrid-vsock socket in the container's state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Time the guest gets to power off after the agent's Shutdown before the VM is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Boots one micro-VM per container.
pub struct VmFactory;

impl SandboxFactory for VmFactory {
    fn boot(&self, ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError> {
        check_guest_files(&ctx.config)?;
        let vsock = vsock_path(ctx)?;
        let mut cfg = vm_config(ctx, &vsock.path);
        attach_share(
            &mut cfg,
            &ctx.share_dir,
            ctx.share_dir.join("mounts").exists(),
        );
        Ok(Box::new(VmSandbox::boot(ctx, cfg, SHARE_TAG, vsock)?))
    }
}

/// The guest kernel and the agent's initramfs must exist: say which is missing, and how to get
/// it, before anything is started.
pub fn check_guest_files(cfg: &crate::config::Config) -> Result<(), SandboxError> {
    for (what, path) in [
        ("guest kernel", &cfg.kernel),
        ("agent initramfs", &cfg.initramfs),
    ] {
        if !path.is_file() {
            return Err(SandboxError::Failed(format!(
                "{what} {} not found (install it with scripts/setup.sh, or set it in /etc/bulkhead/config.toml)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The hybrid-vsock socket in the state directory (short enough for `sun_path`).
pub fn vsock_path(ctx: &BootContext) -> Result<SockPath, SandboxError> {
    crate::control::sock_path(&ctx.state_dir, VSOCK_SOCKET)
        .map_err(|e| SandboxError::Failed(format!("vsock socket path: {e}")))
}

/// The VM configuration for a container (without the share).
pub fn vm_config(ctx: &BootContext, vsock: &Path) -> VmConfig {
    let mut cfg = VmConfig::new(&ctx.config.kernel);
    cfg.initrd = Some(ctx.config.initramfs.clone());
    cfg.mem_mib = u64::from(ctx.size.memory_mib);
    cfg.vcpus = u8::try_from(ctx.size.vcpus).unwrap_or(u8::MAX);
    cfg.console = ConsoleOutput::File(ctx.console_log.clone());
    cfg.vsock = Some(VsockConfig::new(vsock));
    if !ctx.config.kernel_args.is_empty() {
        cfg.cmdline = Some(ctx.config.kernel_args.clone());
    }
    cfg
}

/// Exports the share to the guest as virtio-fs tag [`SHARE_TAG`]. The guest may cache it as its
/// own only when nothing in it is a host directory the host may also change (a volume).
fn attach_share(cfg: &mut VmConfig, share: &Path, has_volumes: bool) {
    let cache = if has_volumes {
        FsCache::Shared
    } else {
        FsCache::Exclusive
    };
    cfg.fs.push(FsConfig {
        tag: SHARE_TAG.to_string(),
        host_dir: share.to_path_buf(),
        read_only: false,
        cache,
    });
}

/// The VM half: owns the running VM.
struct VmOwner {
    handle: VmHandle,
    thread: Mutex<Option<JoinHandle<Result<ExitReason, RunError>>>>,
}

impl VmOwner {
    fn start(cfg: &VmConfig) -> Result<VmOwner, SandboxError> {
        let vm =
            Vm::build(cfg).map_err(|e| SandboxError::Failed(format!("build vm: {}", chain(&e))))?;
        let handle = vm.handle();
        let thread = std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || vm.run())
            .map_err(|e| SandboxError::Failed(format!("start vm thread: {e}")))?;
        Ok(VmOwner {
            handle,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits up to `grace` for the guest to end, then stops the VM; returns why it ended.
    fn stop(&self, grace: Duration) -> Option<String> {
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let deadline = std::time::Instant::now() + grace;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !thread.is_finished() {
            self.handle.stop();
        }
        match thread.join() {
            Ok(Ok(reason)) => Some(reason.to_string()),
            Ok(Err(e)) => Some(format!("vm failed: {}", chain(&e))),
            Err(_) => Some("vm thread panicked".into()),
        }
    }
}

/// A booted VM with its agent.
pub struct VmSandbox {
    agent: AgentSandbox,
    vm: VmOwner,
    /// Keeps a long vsock socket path reachable (see [`crate::control::SockPath`]).
    _vsock: SockPath,
}

impl VmSandbox {
    /// Boots `cfg`, waits for the agent and checks its protocol version.
    pub fn boot(
        ctx: &BootContext,
        cfg: VmConfig,
        share_tag: &str,
        vsock: SockPath,
    ) -> Result<VmSandbox, SandboxError> {
        let uds_path = cfg
            .vsock
            .as_ref()
            .map(|v| v.uds_path.clone())
            .ok_or(SandboxError::Unsupported("a vm without vsock"))?;
        let vm = VmOwner::start(&cfg)?;
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(u64::from(ctx.config.boot_timeout_secs)),
            ..ClientConfig::default()
        };
        let client = Client::connect(Connector::HybridVsock { uds_path }, config)
            .and_then(|c| c.version().map(|v| (c, v)));
        let (client, version) = match client {
            Ok(x) => x,
            Err(e) => {
                let why = vm.stop(Duration::ZERO).unwrap_or_default();
                let log = ctx.console_log.display();
                return Err(SandboxError::Failed(format!(
                    "guest agent: {} (vm: {why}; console log {log})",
                    chain(&e)
                )));
            }
        };
        if version.protocol_version != bulkhead_protocol::PROTOCOL_VERSION {
            vm.stop(Duration::ZERO);
            return Err(SandboxError::Failed(format!(
                "guest agent speaks protocol {}, this runtime {}",
                version.protocol_version,
                bulkhead_protocol::PROTOCOL_VERSION
            )));
        }
        crate::logging::debug(&format!(
            "guest up: kernel {}, agent {}",
            version.kernel_release, version.agent_version
        ));
        Ok(VmSandbox {
            agent: AgentSandbox::new(&ctx.id, client, share_tag),
            vm,
            _vsock: vsock,
        })
    }

    /// The agent client (tests ask it for the guest's version).
    pub fn client(&self) -> &Client {
        self.agent.client()
    }
}

impl Sandbox for VmSandbox {
    fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        self.agent.create(spec, stdio)
    }
    fn start(&self) -> Result<(), SandboxError> {
        self.agent.start()
    }
    fn kill(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.agent.kill(signal, all)
    }
    fn wait(&self) -> Result<i32, SandboxError> {
        self.agent.wait()
    }
    fn exec(&self, exec_id: &str, process: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        self.agent.exec(exec_id, process, stdio)
    }
    fn kill_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        self.agent.kill_exec(exec_id, signal)
    }
    fn wait_exec(&self, exec_id: &str) -> Result<i32, SandboxError> {
        self.agent.wait_exec(exec_id)
    }
    fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        self.agent.pids()
    }
    fn pause(&self) -> Result<(), SandboxError> {
        self.agent.pause()
    }
    fn resume(&self) -> Result<(), SandboxError> {
        self.agent.resume()
    }
    fn update(&self, resources: &Value) -> Result<(), SandboxError> {
        self.agent.update(resources)
    }
    fn stats(&self) -> Result<Value, SandboxError> {
        self.agent.stats()
    }
    /// Asks the agent to power the guest off, then makes sure the VM is gone.
    fn shutdown(&self) {
        self.agent.shutdown();
        if let Some(why) = self.vm.stop(SHUTDOWN_GRACE) {
            crate::logging::debug(&format!("vm ended: {why}"));
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

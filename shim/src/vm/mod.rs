//! The real sandbox: a micro-VM run by the `bulkhead_vmm` library inside the monitor process
//! (its vCPU threads are the monitor's), with the container driven through the guest agent.
//!
//! Boot recipe: VM config from the runtime config and the container's size (kernel, agent
//! initramfs, memory, vCPUs, serial console → per-container log file, hybrid vsock socket in the
//! state directory, the share as a virtio-fs device) → build → run on its own thread, which
//! reports the VM's end on a channel → connect to the agent (retrying while the guest boots) →
//! check the protocol version.

mod agent;
pub mod hostio;
mod network;
pub mod relay;
mod template;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::client::{Client, ClientConfig, Connector};
use bulkhead_vmm::devices::virtio::fs::{FsCache, FsConfig, FsServer, SetIdFiles};
use bulkhead_vmm::devices::virtio::net::{NetBackend, NetCounters, NetError, NetSlotInfo};
use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
use bulkhead_vmm::{ConsoleOutput, Vm, VmConfig, VmHandle};
use tokio::sync::watch;

pub use agent::{AgentSandbox, Guest, SHARE_ROOTFS, SHARE_TAG};
pub use template::build_now as build_template;

use crate::control::SockPath;
use crate::sandbox::{BootContext, SandboxError, SandboxFactory};

/// Name of the hybrid-vsock socket in the container's state directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// Boots one micro-VM per container.
pub struct VmFactory;

impl SandboxFactory for VmFactory {
    type Sandbox = AgentSandbox<VmGuest>;

    /// Restores the VM from its template when templates are on (making the template first if
    /// there is none); a container never fails because of a template: it boots instead.
    async fn boot(&self, ctx: &BootContext) -> Result<Self::Sandbox, SandboxError> {
        check_guest_files(&ctx.config)?;
        if ctx.config.templates {
            match template::restore(ctx).await {
                Ok((guest, client)) => {
                    return Ok(AgentSandbox::new(&ctx.id, client, guest, SHARE_TAG))
                }
                Err(e) => crate::logging::warn(&format!(
                    "container {}: template start failed, booting instead: {}",
                    ctx.id,
                    bulkhead_protocol::error_chain(&e)
                )),
            }
        }
        let (guest, client) = cold_boot(ctx).await?;
        Ok(AgentSandbox::new(&ctx.id, client, guest, SHARE_TAG))
    }
}

/// Boots the container's VM from its kernel and waits for the agent.
async fn cold_boot(ctx: &BootContext) -> Result<(VmGuest, Client), SandboxError> {
    let vsock = vsock_path(ctx)?;
    let mut cfg = vm_config(ctx, &vsock.path);
    let share = share_device(&ctx.config, &ctx.share_dir, has_volumes(&ctx.share_dir));
    cfg.fs.push(share);
    let guest = VmGuest::start(&cfg, vsock, ctx.config.seccomp)?;
    let client = connect_agent(&guest, &agent_wait(ctx)).await?;
    Ok((guest, client))
}

/// The guest may cache the share as its own only when nothing in it is a host directory the
/// host may also change (a volume).
fn has_volumes(share: &Path) -> bool {
    share.join("mounts").exists()
}

/// The guest kernel and the agent's initramfs must exist: say which is missing, and how to get
/// it, before anything is started.
pub fn check_guest_files(cfg: &crate::config::Config) -> Result<(), SandboxError> {
    for (what, path) in [
        ("guest kernel", &cfg.kernel),
        ("agent initramfs", &cfg.initramfs),
    ] {
        if !path.is_file() {
            return Err(SandboxError::MissingFile {
                what,
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// The hybrid-vsock socket in the state directory (short enough for `sun_path`).
pub fn vsock_path(ctx: &BootContext) -> Result<SockPath, SandboxError> {
    crate::control::sock_path(&ctx.state_dir, VSOCK_SOCKET).map_err(|e| SandboxError::Vm {
        what: "vsock socket path",
        source: Box::new(e),
    })
}

/// The VM configuration for a container (without the share).
pub fn vm_config(ctx: &BootContext, vsock: &Path) -> VmConfig {
    let mut cfg = VmConfig::new(&ctx.config.kernel);
    cfg.initrd = Some(ctx.config.initramfs.clone());
    cfg.mem_mib = u64::from(ctx.size.memory_mib);
    cfg.vcpus = u8::try_from(ctx.size.vcpus).unwrap_or(u8::MAX);
    cfg.console = ConsoleOutput::File(ctx.console_log.clone());
    cfg.console_max_bytes = Some(ctx.config.console_max_bytes());
    cfg.vsock = Some(VsockConfig::new(vsock));
    cfg.net_slots = ctx.config.net_slots;
    if !ctx.config.kernel_args.is_empty() {
        cfg.cmdline = Some(ctx.config.kernel_args.clone());
    }
    cfg
}

/// The share as virtio-fs tag [`SHARE_TAG`] (booted, restored and template VMs alike).
///
/// Set-ID files stay allowed in the container's rootfs (`share/rootfs`: package installs make
/// them, and it lives in the engine's private storage; it is a bind mount of its own, so nothing
/// made set-ID in it can be renamed or linked out of it) and are refused everywhere else, the
/// volumes under `share/mounts/` included, unless `volumes_allow_set_id` says otherwise.
fn share_device(cfg: &crate::config::Config, share: &Path, has_volumes: bool) -> FsConfig {
    let cache = if has_volumes {
        FsCache::Shared
    } else {
        FsCache::Exclusive
    };
    let set_id = if cfg.volumes_allow_set_id {
        SetIdFiles::Allowed
    } else {
        SetIdFiles::AllowedUnder(SHARE_ROOTFS.into())
    };
    FsConfig {
        tag: SHARE_TAG.to_string(),
        host_dir: share.to_path_buf(),
        read_only: false,
        cache,
        set_id,
        max_open_files: usize::try_from(cfg.share_max_open_files(fd_limit())).unwrap_or(usize::MAX),
        // This binary again, as `bulkhead __virtiofs-server` (see `main.rs`), started while the
        // VM is built, before the monitor's lock-down forbids `execve`.
        server: fs_server(cfg),
    }
}

/// How the share's server starts: `fs_server_program` of the config, or this binary.
fn fs_server(cfg: &crate::config::Config) -> FsServer {
    match FsServer::default() {
        FsServer::Exec { args, .. } if !cfg.fs_server_program.as_os_str().is_empty() => {
            FsServer::Exec {
                program: cfg.fs_server_program.clone(),
                args,
            }
        }
        other => other,
    }
}

/// The hard open-file limit of this process (the monitor; its VMM raises the soft limit to it).
fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1 << 20, |(_, hard)| hard)
}

/// How long to wait for a guest's agent, and where its console says why it did not come.
struct AgentWait {
    timeout: Duration,
    console_log: PathBuf,
}

fn agent_wait(ctx: &BootContext) -> AgentWait {
    AgentWait {
        timeout: Duration::from_secs(u64::from(ctx.config.boot_timeout_secs)),
        console_log: ctx.console_log.clone(),
    }
}

/// Connects to the agent of a booting (or restored) VM and checks it speaks our protocol.
async fn connect_agent(guest: &VmGuest, wait: &AgentWait) -> Result<Client, SandboxError> {
    let uds_path = guest.vsock_path().to_path_buf();
    let config = ClientConfig {
        connect_timeout: wait.timeout,
        ..ClientConfig::default()
    };
    let connected = async {
        let client = Client::connect(Connector::HybridVsock { uds_path }, config).await?;
        let version = client.version().await?;
        Ok::<_, bulkhead_protocol::client::ClientError>((client, version))
    };
    // A guest that dies while booting ends the wait at once, with its reason.
    let outcome = tokio::select! {
        r = connected => r.map_err(|e| bulkhead_protocol::error_chain(&e)),
        why = guest.ended() => Err(format!("the vm ended before its agent answered: {why}")),
    };
    let (client, version) = match outcome {
        Ok(x) => x,
        Err(message) => {
            let why = guest.stop(Duration::ZERO).await.unwrap_or_default();
            return Err(SandboxError::NoAgent {
                message,
                why,
                log: wait.console_log.clone(),
            });
        }
    };
    if version.protocol_version != bulkhead_protocol::PROTOCOL_VERSION {
        guest.stop(Duration::ZERO).await;
        return Err(SandboxError::Protocol {
            agent: version.protocol_version,
            ours: bulkhead_protocol::PROTOCOL_VERSION,
        });
    }
    crate::logging::debug(&format!(
        "guest up: kernel {}, agent {}",
        version.kernel_release, version.agent_version
    ));
    Ok(client)
}

/// How the VM ended, as the VM thread reports it.
type Ending = Option<(bool, String)>;

/// A VM running on its own thread (the thread runs vCPU 0); its end arrives on a channel.
pub struct VmGuest {
    handle: VmHandle,
    ended: watch::Receiver<Ending>,
    /// The hybrid-vsock socket; keeps a long path reachable (see [`crate::control::SockPath`]).
    vsock: SockPath,
}

impl VmGuest {
    /// Builds the VM and starts it.
    fn start(cfg: &VmConfig, vsock: SockPath, seccomp: bool) -> Result<VmGuest, SandboxError> {
        let vm = Vm::build(cfg).map_err(|e| SandboxError::Vm {
            what: "build vm",
            source: Box::new(e),
        })?;
        Self::run(vm, vsock, seccomp)
    }

    /// Runs a built (or restored) VM. The thread inherits the caller's signal mask: the
    /// monitor blocks the signals it forwards before anything starts, so vCPUs never take them.
    /// With `seccomp` the vCPU and device-loop threads run under their allow-lists.
    fn run(vm: Vm, vsock: SockPath, seccomp: bool) -> Result<VmGuest, SandboxError> {
        let vm = if seccomp { vm } else { vm.without_seccomp() };
        let handle = vm.handle();
        let (tx, ended) = watch::channel(None);
        std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || {
                // This thread only waits on the VM's own (which confine themselves): it needs
                // no capability either.
                let dropped = if seccomp {
                    bulkhead_vmm::seccomp::drop_capabilities()
                } else {
                    Ok(())
                };
                let ran = match dropped {
                    Ok(()) => vm.run().map_err(|e| bulkhead_protocol::error_chain(&e)),
                    Err(e) => Err(bulkhead_protocol::error_chain(&e)),
                };
                let ending = match ran {
                    Ok(reason) => (reason.is_clean(), reason.to_string()),
                    Err(e) => (false, format!("vm failed: {e}")),
                };
                let _ = tx.send(Some(ending));
            })
            .map_err(|e| SandboxError::Vm {
                what: "start vm thread",
                source: Box::new(e),
            })?;
        Ok(VmGuest {
            handle,
            ended,
            vsock,
        })
    }

    fn vsock_path(&self) -> &Path {
        &self.vsock.path
    }

    async fn ending(&self) -> (bool, String) {
        let mut rx = self.ended.clone();
        let ending = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        // The thread is gone without a word: it panicked.
        ending.unwrap_or_else(|| (false, "vm thread panicked".into()))
    }
}

impl Guest for VmGuest {
    async fn ended(&self) -> String {
        self.ending().await.1
    }

    async fn stop(&self, grace: Duration) -> Option<String> {
        if tokio::time::timeout(grace, self.ending()).await.is_err() {
            self.handle.stop();
        }
        let (clean, why) = self.ending().await;
        crate::logging::debug(&format!("vm ended: {why}"));
        (!clean).then_some(why)
    }

    /// The guest's processes are in the VM; the VM's threads keep what they opened.
    fn confinable(&self) -> bool {
        true
    }

    fn has_own_network(&self) -> bool {
        true
    }

    fn attach_nic(&self, backend: NetBackend) -> Result<NetSlotInfo, NetError> {
        self.handle.attach_net(backend)
    }

    fn nic_counters(&self, slot: u8) -> Option<NetCounters> {
        self.handle.net_counters(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_id_files_stay_in_the_rootfs_unless_the_config_allows_them_in_volumes() {
        let mut cfg = crate::config::Config::default();
        let share = share_device(&cfg, Path::new("/state/c1/share"), true);
        assert_eq!(share.set_id, SetIdFiles::AllowedUnder("rootfs".into()));
        assert_eq!(share.cache, FsCache::Shared);
        share.validate().unwrap();
        cfg.volumes_allow_set_id = true;
        let share = share_device(&cfg, Path::new("/state/c1/share"), false);
        assert_eq!(share.set_id, SetIdFiles::Allowed);
        assert_eq!(share.cache, FsCache::Exclusive);
    }
}

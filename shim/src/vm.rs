//! The real sandbox: a micro-VM booted in the monitor process, driven through the guest agent.
//!
//! Not wired yet: the agent's host client (`bulkhead_protocol::client`) and the virtio-fs share
//! have not landed, so booting refuses with a clear error instead of pretending.

use crate::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory};

/// Boots one micro-VM per container.
pub struct VmFactory;

impl SandboxFactory for VmFactory {
    fn boot(&self, ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError> {
        check_guest_files(&ctx.config)?;
        Err(SandboxError::Unsupported(
            "running a container in a micro-VM (guest agent client not built yet)",
        ))
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

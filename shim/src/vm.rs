//! The real sandbox: a micro-VM booted in the monitor process, driven through the guest agent.
//!
//! Not wired yet: the agent's host client (`bulkhead_protocol::client`) and the virtio-fs share
//! have not landed, so booting refuses with a clear error instead of pretending.

use crate::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory};

/// Boots one micro-VM per container.
pub struct VmFactory;

impl SandboxFactory for VmFactory {
    fn boot(&self, _ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError> {
        Err(SandboxError::Unsupported(
            "running a container in a micro-VM (guest agent client not built yet)",
        ))
    }
}

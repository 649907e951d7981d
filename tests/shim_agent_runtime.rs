//! `bulkhead-agent-runtime`: the `bulkhead` CLI whose sandbox is the real `bulkhead-agent`
//! running on the host in `--listen-unix` mode instead of inside a VM (test-only).
//!
//! Everything but the VM is real: monitor, control socket, share binds, the shim's agent client
//! calls and stdio relays (the same [`AgentSandbox`] the VM uses), and the agent's container
//! module creating a real container (its namespaces, mounts, pivot_root) from the spec. The
//! agent runs as the monitor's child, in the monitor's mount namespace, so it sees the share at
//! its host path. `$BULKHEAD_AGENT_BIN` names the agent.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bulkhead_protocol::client::{Client, ClientConfig, Connector};
use bulkhead_shim::error::Kind;
use bulkhead_shim::sandbox::{BootContext, SandboxError, SandboxFactory};
use bulkhead_shim::vm::{AgentSandbox, Guest};
use tokio::process::Child;

fn main() {
    std::process::exit(bulkhead_shim::main_with(&HostAgentFactory));
}

struct HostAgentFactory;

impl SandboxFactory for HostAgentFactory {
    type Sandbox = AgentSandbox<AgentProcess>;

    /// Its processes are host processes: they can share the host's network.
    fn can_share_host_network(&self) -> bool {
        true
    }

    /// Host processes join the spec's network namespace by its path themselves.
    fn adapt_spec(&self, _spec: &mut serde_json::Value) {}

    async fn boot(&self, ctx: &BootContext) -> Result<Self::Sandbox, SandboxError> {
        let fail = |e: String| SandboxError::failed(Kind::Internal, e);
        let bin = std::env::var_os("BULKHEAD_AGENT_BIN")
            .ok_or_else(|| fail("BULKHEAD_AGENT_BIN is not set".into()))?;
        let dir = ctx.state_dir.join("agent");
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen-unix").arg(&dir);
        bulkhead_shim::process::unblock_signals_in_child(&mut cmd);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| fail(format!("start agent: {e}")))?;
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        };
        let client = Client::connect(Connector::Unix { dir }, config)
            .await
            .map_err(|e| fail(format!("agent: {}", bulkhead_protocol::error_chain(&e))))?;
        let agent = AgentProcess {
            child: RefCell::new(Some(child)),
        };
        Ok(AgentSandbox::new(&ctx.id, client, agent, ""))
    }

    /// The agent runs in the monitor's mount namespace: the share is where the host has it.
    fn share_root(&self, share_dir: &Path) -> PathBuf {
        share_dir.to_path_buf()
    }
}

/// The agent process; on Shutdown it removes its containers and exits.
struct AgentProcess {
    child: RefCell<Option<Child>>,
}

impl Guest for AgentProcess {
    async fn ended(&self) -> String {
        // A test agent only ends when asked to: never first.
        std::future::pending().await
    }

    /// Runs once, at the end: it takes the child.
    async fn stop(&self, grace: Duration) -> Option<String> {
        let mut child = self.child.borrow_mut().take()?;
        if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            return (!status.success()).then(|| format!("agent exited: {status}"));
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some("agent killed".into())
    }

    /// The agent is a host process, and its container processes are too.
    fn confinable(&self) -> bool {
        false
    }
}

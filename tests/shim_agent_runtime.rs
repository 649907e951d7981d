//! `bulkhead-agent-runtime`: the `bulkhead` CLI whose sandbox is the real `bulkhead-agent`
//! running on the host in `--listen-unix` mode instead of inside a VM (test-only).
//!
//! Everything but the VM is real: monitor, control socket, share binds, the shim's agent client
//! calls and stdio relays, and the agent's container module creating a real container (its
//! namespaces, mounts, pivot_root) from the spec. The agent runs as the monitor's child, in the
//! monitor's mount namespace, so the share is the host directory itself: spec paths under the
//! guest share directory are pointed back at it. `$BULKHEAD_AGENT_BIN` names the agent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_protocol::client::{Client, ClientConfig, Connector};
use bulkhead_protocol::GUEST_SHARE_DIR;
use bulkhead_shim::sandbox::{BootContext, Sandbox, SandboxError, SandboxFactory, Stdio};
use bulkhead_shim::vm::AgentSandbox;
use serde_json::Value;

fn main() {
    std::process::exit(bulkhead_shim::main_with(&HostAgentFactory));
}

struct HostAgentFactory;

impl SandboxFactory for HostAgentFactory {
    fn boot(&self, ctx: &BootContext) -> Result<Box<dyn Sandbox>, SandboxError> {
        let fail = |e: String| SandboxError::Failed(e);
        let bin = std::env::var_os("BULKHEAD_AGENT_BIN")
            .ok_or_else(|| fail("BULKHEAD_AGENT_BIN is not set".into()))?;
        let dir = ctx.state_dir.join("agent");
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen-unix").arg(&dir);
        bulkhead_shim::process::unblock_signals_in_child(&mut cmd);
        let child = cmd.spawn().map_err(|e| fail(format!("start agent: {e}")))?;
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(20),
            ..ClientConfig::default()
        };
        let client = Client::connect(Connector::Unix { dir }, config)
            .map_err(|e| fail(format!("agent: {e}")))?;
        Ok(Box::new(HostAgent {
            inner: AgentSandbox::new(&ctx.id, client, ""),
            share: ctx.share_dir.clone(),
            child: Mutex::new(child),
        }))
    }
}

struct HostAgent {
    inner: AgentSandbox,
    share: PathBuf,
    child: Mutex<Child>,
}

impl HostAgent {
    /// `/run/bulkhead/share/x` → `<host share>/x`.
    fn host_path(&self, v: &mut Value) {
        if let Some(rest) = v.as_str().and_then(|s| s.strip_prefix(GUEST_SHARE_DIR)) {
            *v = Value::String(format!("{}{rest}", self.share.display()));
        }
    }
}

impl Sandbox for HostAgent {
    fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let mut spec = spec.clone();
        if let Some(p) = spec.pointer_mut("/root/path") {
            self.host_path(p);
        }
        if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
            for m in mounts {
                if let Some(src) = m.get_mut("source") {
                    self.host_path(src);
                }
            }
        }
        self.inner.create(&spec, stdio)
    }
    fn start(&self) -> Result<(), SandboxError> {
        self.inner.start()
    }
    fn kill(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.inner.kill(signal, all)
    }
    fn wait(&self) -> Result<i32, SandboxError> {
        self.inner.wait()
    }
    fn exec(&self, exec_id: &str, process: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        self.inner.exec(exec_id, process, stdio)
    }
    fn kill_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        self.inner.kill_exec(exec_id, signal)
    }
    fn wait_exec(&self, exec_id: &str) -> Result<i32, SandboxError> {
        self.inner.wait_exec(exec_id)
    }
    fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        self.inner.pids()
    }
    fn pause(&self) -> Result<(), SandboxError> {
        self.inner.pause()
    }
    fn resume(&self) -> Result<(), SandboxError> {
        self.inner.resume()
    }
    fn update(&self, resources: &Value) -> Result<(), SandboxError> {
        self.inner.update(resources)
    }
    fn stats(&self) -> Result<Value, SandboxError> {
        self.inner.stats()
    }
    /// The agent exits on Shutdown in host mode; reap it (kill it if it lingers).
    fn shutdown(&self) {
        let _ = self.inner.client().remove_container(self.inner_id(), true);
        self.inner.shutdown();
        if let Ok(mut c) = self.child.lock() {
            for _ in 0..100 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl HostAgent {
    fn inner_id(&self) -> &str {
        self.share
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("")
    }
}

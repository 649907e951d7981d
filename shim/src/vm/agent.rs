//! The container side of a sandbox: the guest agent's API behind the [`Sandbox`] trait.
//!
//! One `CreateContainer` call carries the whole spec (every guest syscall is expensive under
//! PVM, so no extra round trips); the declared stdio streams are then attached and relayed.
//! Exec'd processes follow the proto's process life: `CreateProcess` → streams →
//! `StartProcess` → `WaitProcess` → `RemoveProcess`.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_protocol::api;
use bulkhead_protocol::client::{Client, ClientError};
use bulkhead_protocol::stream::StreamKind;
use serde_json::{json, Value};

use super::relay::Relays;
use crate::sandbox::{SandboxError, Stdio};

/// Output still in flight after a process ended gets this long to reach the caller.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// virtio-fs tag of the container share; the agent mounts it and finds the rootfs in it.
pub const SHARE_TAG: &str = "bulkhead";
/// The rootfs inside the share (see [`crate::share`]).
pub const SHARE_ROOTFS: &str = "rootfs";

fn failed(e: ClientError) -> SandboxError {
    SandboxError::Failed(crate::logging::one_line(&e.to_string()))
}

/// The agent-facing half of a sandbox.
pub struct AgentSandbox {
    id: String,
    client: Arc<Client>,
    /// Empty when the rootfs is a guest path (tests); else the share's tag.
    share_tag: String,
    init_relays: Mutex<Option<Relays>>,
    exec_relays: Mutex<HashMap<String, Relays>>,
}

impl AgentSandbox {
    pub fn new(id: &str, client: Client, share_tag: &str) -> Self {
        AgentSandbox {
            id: id.to_string(),
            client: Arc::new(client),
            share_tag: share_tag.to_string(),
            init_relays: Mutex::new(None),
            exec_relays: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens the declared streams of process `pid_name` and starts relaying.
    fn attach(&self, process: &str, stdio: Stdio) -> Result<Relays, SandboxError> {
        let mut relays = Relays::default();
        match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(fd) = stdin {
                    let s = self
                        .client
                        .open_stream(process, StreamKind::Stdin)
                        .map_err(failed)?;
                    relays.input(fd, s, None);
                }
                if let Some(fd) = stdout {
                    let s = self
                        .client
                        .open_stream(process, StreamKind::Stdout)
                        .map_err(failed)?;
                    relays.output(s, fd);
                }
                if let Some(fd) = stderr {
                    let s = self
                        .client
                        .open_stream(process, StreamKind::Stderr)
                        .map_err(failed)?;
                    relays.output(s, fd);
                }
            }
            Stdio::Terminal(fd) => {
                let s = self
                    .client
                    .open_stream(process, StreamKind::Terminal)
                    .map_err(failed)?;
                let out_fd = fd
                    .try_clone()
                    .map_err(|e| SandboxError::Failed(format!("dup terminal: {e}")))?;
                let out_stream = s
                    .try_clone()
                    .map_err(|e| SandboxError::Failed(format!("dup stream: {e}")))?;
                relays.output(out_stream, out_fd);
                let client = self.client.clone();
                let name = process.to_string();
                let resize = Box::new(move |rows: u16, cols: u16| {
                    let _ = client.resize_terminal(&name, u32::from(rows), u32::from(cols));
                });
                relays.input(fd, s, Some(resize));
            }
        }
        Ok(relays)
    }
}

/// The stream flags and terminal size the agent needs for `stdio`.
fn stdio_request(stdio: &Stdio) -> (bool, api::StdioStreams, Option<api::TerminalSize>) {
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let s = api::StdioStreams {
                stdin: stdin.is_some(),
                stdout: stdout.is_some(),
                stderr: stderr.is_some(),
                ..Default::default()
            };
            (false, s, None)
        }
        Stdio::Terminal(fd) => {
            let s = api::StdioStreams {
                stdin: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let size = crate::console::get_winsize(fd.as_raw_fd())
                .filter(|(r, c)| *r > 0 && *c > 0)
                .map(|(rows, cols)| api::TerminalSize {
                    rows: rows.into(),
                    cols: cols.into(),
                    ..Default::default()
                });
            (true, s, size)
        }
    }
}

impl crate::sandbox::Sandbox for AgentSandbox {
    fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let (terminal, streams, size) = stdio_request(&stdio);
        let rootfs = if self.share_tag.is_empty() {
            spec.pointer("/root/path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        } else {
            SHARE_ROOTFS.to_string()
        };
        let req = api::CreateContainerRequest {
            id: self.id.clone(),
            oci_spec: serde_json::to_vec(spec).map_err(|e| SandboxError::Failed(e.to_string()))?,
            share_tag: self.share_tag.clone(),
            rootfs,
            terminal,
            terminal_size: size.into(),
            stdio: Some(streams).into(),
            ..Default::default()
        };
        self.client.create_container(&req).map_err(failed)?;
        let relays = self.attach(&self.id, stdio)?;
        *self.init_relays.lock().unwrap_or_else(|e| e.into_inner()) = Some(relays);
        Ok(())
    }

    fn start(&self) -> Result<(), SandboxError> {
        self.client.start_container(&self.id).map_err(failed)
    }

    fn kill(&self, signal: i32, all: bool) -> Result<(), SandboxError> {
        self.client
            .signal_process(&self.id, signal, all)
            .map_err(failed)
    }

    fn wait(&self) -> Result<i32, SandboxError> {
        let status = self.client.wait_process(&self.id, None).map_err(failed)?;
        if let Some(r) = self
            .init_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            r.finish(DRAIN_TIMEOUT);
        }
        Ok(status.code())
    }

    fn exec(&self, exec_id: &str, process: &Value, stdio: Stdio) -> Result<(), SandboxError> {
        let (terminal, streams, size) = stdio_request(&stdio);
        let req = api::CreateProcessRequest {
            id: exec_id.to_string(),
            container_id: self.id.clone(),
            oci_process: serde_json::to_vec(process)
                .map_err(|e| SandboxError::Failed(e.to_string()))?,
            terminal,
            terminal_size: size.into(),
            stdio: Some(streams).into(),
            ..Default::default()
        };
        self.client.create_process(&req).map_err(failed)?;
        let relays = self.attach(exec_id, stdio)?;
        self.exec_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(exec_id.to_string(), relays);
        self.client.start_process(exec_id).map_err(failed)?;
        Ok(())
    }

    fn kill_exec(&self, exec_id: &str, signal: i32) -> Result<(), SandboxError> {
        self.client
            .signal_process(exec_id, signal, false)
            .map_err(failed)
    }

    fn wait_exec(&self, exec_id: &str) -> Result<i32, SandboxError> {
        let status = self.client.wait_process(exec_id, None).map_err(failed)?;
        if let Some(r) = self
            .exec_relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id)
        {
            r.finish(DRAIN_TIMEOUT);
        }
        let _ = self.client.remove_process(exec_id);
        Ok(status.code())
    }

    fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        self.client.list_processes(&self.id).map_err(failed)
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.client.pause_container(&self.id).map_err(failed)
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.client.resume_container(&self.id).map_err(failed)
    }

    fn update(&self, resources: &Value) -> Result<(), SandboxError> {
        let bytes =
            serde_json::to_vec(resources).map_err(|e| SandboxError::Failed(e.to_string()))?;
        self.client
            .update_container(&self.id, bytes)
            .map_err(failed)
    }

    fn stats(&self) -> Result<Value, SandboxError> {
        let s = self.client.stats(&self.id).map_err(failed)?;
        let cpu = s.cpu.as_ref().map(|c| json!({"usage_usec": c.usage_usec, "user_usec": c.user_usec, "system_usec": c.system_usec, "throttled_usec": c.throttled_usec}));
        let mem = s.memory.as_ref().map(|m| json!({"usage": m.usage_bytes, "limit": m.limit_bytes, "max_usage": m.max_usage_bytes, "oom_kill_events": m.oom_kill_events}));
        let pids = s
            .pids
            .as_ref()
            .map(|p| json!({"current": p.current, "limit": p.limit}));
        Ok(json!({"cpu": cpu, "memory": mem, "pids": pids}))
    }

    fn shutdown(&self) {
        let _ = self.client.shutdown();
    }
}

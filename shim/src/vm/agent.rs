//! The sandbox: the guest agent's API behind the [`Sandbox`] trait, over whatever runs the agent
//! (a [`Guest`]: the micro-VM, or in tests an agent process on the host).
//!
//! One `CreateContainer` call carries the whole spec (every guest syscall is expensive under
//! PVM, so no extra round trips); the declared stdio streams are then attached and relayed.
//! Exec'd processes follow the proto's process life: `CreateProcess` → streams →
//! `StartProcess` → `WaitProcess` → `RemoveProcess`.
#![allow(async_fn_in_trait)] // futures stay on the monitor's current-thread runtime

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use bulkhead_protocol::api;
use bulkhead_protocol::client::{Client, ClientError};
use bulkhead_protocol::stream::StreamKind;
use bulkhead_vmm::devices::virtio::net::{NetBackend, NetCounters, NetError, NetSlotInfo};
use oci_spec::runtime::{LinuxResources, Process};
use serde_json::Value;

use super::hostio::{Direction, HostIo};
use super::relay::Relays;
use crate::error::Kind;
use crate::sandbox::{Sandbox, SandboxError, Stdio, Target};
use crate::stats::GuestStats;

/// Output still in flight after a process ended gets this long to reach the caller.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the guest gets to end by itself after the agent's Shutdown before it is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a dropped agent connection waits for the guest to say why it ended.
const END_REASON_WAIT: Duration = Duration::from_secs(2);

/// virtio-fs tag of the container share; the agent mounts it and finds the rootfs in it.
pub const SHARE_TAG: &str = "bulkhead";
/// The rootfs inside the share (see [`crate::share`]).
pub const SHARE_ROOTFS: &str = "rootfs";

/// What runs the agent.
pub trait Guest {
    /// Resolves once the guest has ended by itself (a reset, a fault), saying how.
    async fn ended(&self) -> String;
    /// Makes sure the guest is gone, giving it `grace` to end by itself first (the agent was
    /// just asked to shut down). Returns how it ended when that was not clean.
    async fn stop(&self, grace: Duration) -> Option<String>;
    /// Whether the guest needs nothing of the host's file system once it runs (a VM: yes; an
    /// agent run as a host process for tests: no). See [`Sandbox::confinable`].
    fn confinable(&self) -> bool;
    /// Whether the guest has a network of its own, into which the container's is carried
    /// (a VM: yes; an agent run as a host process, whose containers are host processes in the
    /// namespace already: no).
    fn has_own_network(&self) -> bool {
        false
    }
    /// Attaches a tap to a free NIC slot of the guest (only called when
    /// [`Guest::has_own_network`]).
    fn attach_nic(&self, backend: NetBackend) -> Result<NetSlotInfo, NetError> {
        drop(backend);
        Err(NetError::NoFreeSlot(0))
    }
    /// The counters of NIC slot `slot` (they outlive the VM).
    fn nic_counters(&self, slot: u8) -> Option<NetCounters> {
        let _ = slot;
        None
    }
}

/// The container side of a sandbox.
pub struct AgentSandbox<G> {
    id: String,
    client: Client,
    guest: G,
    /// Empty when the rootfs is a path the agent sees directly (tests); else the share's tag.
    share_tag: String,
    /// Relays by process id (the init's is the container id).
    relays: RefCell<HashMap<String, Relays>>,
    /// The host terminal of each terminal process, for sizes the monitor notices itself.
    terminals: RefCell<HashMap<String, OwnedFd>>,
    /// The agent reported the init's exit.
    init_exited: std::cell::Cell<bool>,
    /// Each NIC's name in the container and its counters.
    nics: RefCell<Vec<(String, NetCounters)>>,
}

fn failed(e: ClientError) -> SandboxError {
    match e {
        ClientError::Agent(status) => {
            SandboxError::failed(status.code.into(), status.message.clone())
        }
        other => SandboxError::Transport(other),
    }
}

impl<G: Guest> AgentSandbox<G> {
    pub fn new(id: &str, client: Client, guest: G, share_tag: &str) -> Self {
        AgentSandbox {
            id: id.to_string(),
            client,
            guest,
            share_tag: share_tag.to_string(),
            relays: RefCell::new(HashMap::new()),
            terminals: RefCell::new(HashMap::new()),
            init_exited: std::cell::Cell::new(false),
            nics: RefCell::new(Vec::new()),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn guest(&self) -> &G {
        &self.guest
    }

    fn process_id<'a>(&'a self, target: Target<'a>) -> &'a str {
        match target {
            Target::Init => &self.id,
            Target::Exec(id) => id,
        }
    }

    /// Opens the declared streams of `process` and starts relaying them.
    async fn attach(&self, process: &str, stdio: Stdio) -> Result<(), SandboxError> {
        let mut relays = Relays::default();
        let host = |fd: OwnedFd, dir| {
            HostIo::new(fd, dir).map_err(|e| {
                SandboxError::failed(Kind::Internal, format!("stdio of {process}: {e}"))
            })
        };
        match stdio {
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(fd) = stdin {
                    let s = self.stream(process, StreamKind::Stdin).await?;
                    relays.input(host(fd, Direction::Read)?, s);
                }
                if let Some(fd) = stdout {
                    let s = self.stream(process, StreamKind::Stdout).await?;
                    relays.output(s, host(fd, Direction::Write)?);
                }
                if let Some(fd) = stderr {
                    let s = self.stream(process, StreamKind::Stderr).await?;
                    relays.output(s, host(fd, Direction::Write)?);
                }
            }
            Stdio::Terminal(fd) => {
                let s = self.stream(process, StreamKind::Terminal).await?;
                let (from_guest, to_guest) = s.into_split();
                let dup = |fd: &OwnedFd| {
                    fd.try_clone().map_err(|e| {
                        SandboxError::failed(Kind::Internal, format!("dup terminal: {e}"))
                    })
                };
                relays.output(from_guest, host(dup(&fd)?, Direction::Write)?);
                relays.input(host(dup(&fd)?, Direction::Read)?, to_guest);
                self.terminals.borrow_mut().insert(process.to_string(), fd);
            }
        }
        self.relays.borrow_mut().insert(process.to_string(), relays);
        Ok(())
    }

    async fn stream(
        &self,
        process: &str,
        kind: StreamKind,
    ) -> Result<tokio::net::UnixStream, SandboxError> {
        self.client.open_stream(process, kind).await.map_err(failed)
    }

    /// A dropped agent connection usually means the guest ended: say how, if it did.
    async fn explain(&self, e: ClientError) -> SandboxError {
        if matches!(e, ClientError::Closed | ClientError::VmGone) {
            if let Ok(why) = tokio::time::timeout(END_REASON_WAIT, self.guest.ended()).await {
                return SandboxError::failed(Kind::Unavailable, format!("vm ended: {why}"));
            }
        }
        failed(e)
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

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, SandboxError> {
    serde_json::to_vec(v).map_err(|e| SandboxError::failed(Kind::InvalidArgument, e.to_string()))
}

impl<G: Guest> Sandbox for AgentSandbox<G> {
    async fn create(&self, spec: &Value, stdio: Stdio) -> Result<(), SandboxError> {
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
            oci_spec: json(spec)?,
            share_tag: self.share_tag.clone(),
            rootfs,
            terminal,
            terminal_size: size.into(),
            stdio: Some(streams).into(),
            ..Default::default()
        };
        self.client.create_container(&req).await.map_err(failed)?;
        self.attach(&self.id, stdio).await
    }

    async fn start(&self) -> Result<(), SandboxError> {
        self.client.start_container(&self.id).await.map_err(failed)
    }

    /// A NIC per interface of the namespace, then one agent call that configures them all.
    async fn connect_network(&self) -> Result<(), SandboxError> {
        if !self.guest.has_own_network() {
            return Ok(());
        }
        if let Some((req, slots)) = super::network::plug(&self.guest)? {
            let counters = req
                .interfaces
                .iter()
                .zip(slots)
                .filter_map(|(iface, slot)| {
                    Some((iface.name.clone(), self.guest.nic_counters(slot)?))
                });
            self.nics.borrow_mut().extend(counters);
            self.client.configure_network(&req).await.map_err(failed)?;
        }
        Ok(())
    }

    /// `net.<nic>`: the NIC's frames, bytes, kicks, interrupts and drops.
    fn counters(&self) -> serde_json::Map<String, Value> {
        self.nics
            .borrow()
            .iter()
            .map(|(name, c)| {
                let m = c.device.snapshot();
                let v = serde_json::json!({
                    "tx_packets": m.tx_packets, "tx_bytes": m.tx_bytes,
                    "rx_packets": m.rx_packets, "rx_bytes": m.rx_bytes,
                    "rx_buffers": m.rx_buffers, "kicks": m.kicks, "rx_kicks": m.rx_kicks,
                    "interrupts": m.interrupts,
                    "dropped": m.tx_malformed + m.tx_tap_errors + m.rx_too_big + m.rx_malformed,
                });
                (format!("net.{name}"), v)
            })
            .collect()
    }

    async fn kill(&self, target: Target<'_>, signal: i32, all: bool) -> Result<(), SandboxError> {
        let all = all && target == Target::Init;
        self.client
            .signal_process(self.process_id(target), signal, all)
            .await
            .map_err(failed)
    }

    async fn wait(&self, target: Target<'_>) -> Result<i32, SandboxError> {
        let id = self.process_id(target);
        let status = tokio::select! {
            r = self.client.wait_process(id, None) => match r {
                Ok(s) => s,
                Err(e) => return Err(self.explain(e).await),
            },
            why = self.guest.ended() => {
                return Err(SandboxError::failed(Kind::Unavailable, format!("vm ended: {why}")))
            }
        };
        if target == Target::Init {
            self.init_exited.set(true);
        }
        let relays = self.relays.borrow_mut().remove(id);
        if let Some(r) = relays {
            r.finish(DRAIN_TIMEOUT).await;
        }
        self.terminals.borrow_mut().remove(id);
        if target != Target::Init {
            let _ = self.client.remove_process(id).await;
        }
        Ok(status.code())
    }

    async fn exec(
        &self,
        exec_id: &str,
        process: &Process,
        stdio: Stdio,
    ) -> Result<(), SandboxError> {
        let (terminal, streams, size) = stdio_request(&stdio);
        let req = api::CreateProcessRequest {
            id: exec_id.to_string(),
            container_id: self.id.clone(),
            oci_process: json(process)?,
            terminal,
            terminal_size: size.into(),
            stdio: Some(streams).into(),
            ..Default::default()
        };
        self.client.create_process(&req).await.map_err(failed)?;
        let started = async {
            self.attach(exec_id, stdio).await?;
            self.client.start_process(exec_id).await.map_err(failed)
        };
        if let Err(e) = started.await {
            self.relays.borrow_mut().remove(exec_id);
            self.terminals.borrow_mut().remove(exec_id);
            let _ = self.client.remove_process(exec_id).await;
            return Err(e);
        }
        Ok(())
    }

    async fn resize(
        &self,
        target: Target<'_>,
        size: Option<(u16, u16)>,
    ) -> Result<(), SandboxError> {
        let id = self.process_id(target);
        let size = match size {
            Some(s) => Some(s),
            None => self
                .terminals
                .borrow()
                .get(id)
                .and_then(|t| crate::console::get_winsize(t.as_raw_fd())),
        };
        let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) else {
            return Ok(());
        };
        self.client
            .resize_terminal(id, rows.into(), cols.into())
            .await
            .map_err(failed)
    }

    async fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        self.client.list_processes(&self.id).await.map_err(failed)
    }

    async fn pause(&self) -> Result<(), SandboxError> {
        self.client.pause_container(&self.id).await.map_err(failed)
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.client.resume_container(&self.id).await.map_err(failed)
    }

    async fn update(&self, resources: &LinuxResources) -> Result<(), SandboxError> {
        self.client
            .update_container(&self.id, json(resources)?)
            .await
            .map_err(failed)
    }

    async fn stats(&self) -> Result<GuestStats, SandboxError> {
        let s = self.client.stats(&self.id).await.map_err(failed)?;
        Ok(GuestStats::from(&s))
    }

    fn confinable(&self) -> bool {
        self.guest.confinable()
    }

    fn init_exited(&self) -> bool {
        self.init_exited.get()
    }

    async fn power_off(&self) {
        self.guest.stop(Duration::ZERO).await;
    }

    /// Asks the agent to power the guest off, then makes sure the guest is gone.
    async fn shutdown(&self) -> Option<String> {
        self.relays.borrow_mut().clear();
        let _ = self.client.shutdown().await;
        self.guest.stop(SHUTDOWN_GRACE).await
    }
}

//! The host-side agent client: async on tokio (the sandbox monitor runs it on its one runtime
//! thread), with [`blocking::Client`] over the same code for tests and tools.
//!
//! Every call has a deadline ([`ClientConfig::call_timeout`], generous by default because on a
//! PVM host one guest syscall can take milliseconds and a fork+exec a second); `WaitProcess`
//! takes its own, optional one since a process may run for as long as it likes. When the
//! connection drops, callers learn it at once and are told whether the VM itself is gone.
//!
//! ```no_run
//! # use bulkhead_protocol::client::*;
//! # use std::path::PathBuf;
//! # async fn f() -> Result<(), ClientError> {
//! let connector = Connector::HybridVsock { uds_path: PathBuf::from("/run/vm/vsock.sock") };
//! let client = Client::connect(connector, ClientConfig::default()).await?;
//! println!("{}", client.version().await?.kernel_release);
//! # Ok(()) }
//! ```

pub mod blocking;
mod conn;
mod connector;

use std::fmt;
use std::time::{Duration, Instant};

use protobuf::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use self::conn::{Conn, Ended, Reply};
pub use self::connector::{ConnectError, Connector};
use crate::api;
use crate::rpc::{self, Method, RpcError, Status};
use crate::stream::{HeaderError, StreamHeader, StreamKind};
use crate::{error_chain, CONTROL_PORT, STREAM_PORT};

/// Deadlines of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long [`Client::connect`] keeps trying until the agent listens (a boot takes ~30 s
    /// on PVM hosts). Default 120 s.
    pub connect_timeout: Duration,
    /// Deadline of each call except `WaitProcess`. Default 60 s.
    pub call_timeout: Duration,
    /// Deadline of one hybrid-vsock handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Pause between connection attempts. Default 100 ms.
    pub retry_interval: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(120),
            call_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            retry_interval: Duration::from_millis(100),
        }
    }
}

/// Displays a duration as seconds: `30s`, `0.5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent did not answer within {0}")]
    Timeout(Secs),
    #[error("agent connection closed")]
    Closed,
    #[error("vm is gone")]
    VmGone,
    #[error("agent did not come up within {0}")]
    NotUp(Secs, #[source] ConnectError),
    #[error("connect to the agent")]
    Connect(#[source] ConnectError),
    /// The agent refused the call; the message is the agent's.
    #[error("{0}")]
    Agent(Status),
    #[error("agent broke the protocol: {0}")]
    Protocol(String),
    #[error("encode request")]
    Encode(#[source] RpcError),
    #[error("bad stream header")]
    Header(#[source] HeaderError),
    #[error("write to the agent")]
    Io(#[source] std::io::Error),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// A connected agent client. Calls may be made concurrently (they share one connection, owned by
/// a task on the runtime that connected).
pub struct Client {
    connector: Connector,
    config: ClientConfig,
    conn: Conn,
}

impl Client {
    /// Connects to the agent's control port, retrying until it listens or
    /// `config.connect_timeout` passes.
    pub async fn connect(
        connector: Connector,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let stream = connect_retrying(&connector, CONTROL_PORT, &config).await?;
        let conn = Conn::new(stream, config.call_timeout);
        Ok(Client {
            connector,
            config,
            conn,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sets the deadline of later calls.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.config.call_timeout = timeout;
    }

    /// Makes one call with an explicit deadline (`None`: wait as long as the connection lives).
    pub async fn call<Q: Message, R: Message>(
        &self,
        method: Method,
        req: &Q,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        let mut bytes = Vec::new();
        rpc::encode_request(0, method, req, timeout, &mut bytes).map_err(ClientError::Encode)?;
        let reply = match timeout {
            Some(t) => tokio::time::timeout(t, self.conn.call(bytes))
                .await
                .map_err(|_| ClientError::Timeout(Secs(t)))?,
            None => self.conn.call(bytes).await,
        };
        let frame = match reply {
            Reply::Frame(f) => f,
            Reply::Ended(Ended::Closed) => return Err(self.closed_error()),
            Reply::Ended(Ended::WriteTimeout) => {
                return Err(ClientError::Timeout(Secs(self.config.call_timeout)))
            }
            Reply::Ended(Ended::Protocol(why)) => return Err(ClientError::Protocol(why)),
        };
        let payload = rpc::decode_response(&frame)
            .map_err(|e| ClientError::Protocol(error_chain(&e)))?
            .map_err(ClientError::Agent)?;
        rpc::decode_message(&payload).map_err(|e| ClientError::Protocol(error_chain(&e)))
    }

    async fn call_default<Q: Message, R: Message>(
        &self,
        method: Method,
        req: &Q,
    ) -> Result<R, ClientError> {
        self.call(method, req, Some(self.config.call_timeout)).await
    }

    fn closed_error(&self) -> ClientError {
        if self.connector.vm_present() {
            ClientError::Closed
        } else {
            ClientError::VmGone
        }
    }

    pub async fn version(&self) -> Result<api::VersionResponse, ClientError> {
        self.call_default(Method::Version, &api::VersionRequest::new())
            .await
    }

    /// Creates a process (not started yet); then attach its streams with
    /// [`Client::open_stream`] and call [`Client::start_process`].
    pub async fn create_process(&self, req: &api::CreateProcessRequest) -> Result<(), ClientError> {
        self.call_default::<_, api::Empty>(Method::CreateProcess, req)
            .await
            .map(drop)
    }

    /// Starts a created process once its declared streams are attached; returns its guest pid.
    pub async fn start_process(&self, id: &str) -> Result<i32, ClientError> {
        let req = api::StartProcessRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::StartProcessResponse>(Method::StartProcess, &req)
            .await
            .map(|r| r.pid)
    }

    /// Sends `signal` to the process (`all`: to every process of the container, or to the
    /// process group of a plain process).
    pub async fn signal_process(
        &self,
        id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), ClientError> {
        let req = api::SignalProcessRequest {
            id: id.to_owned(),
            signal: u32::try_from(signal).unwrap_or(0),
            all,
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::SignalProcess, &req)
            .await
            .map(drop)
    }

    /// Waits until the process has ended and its output has reached the host, for at most
    /// `timeout` (`None`: as long as the connection lives).
    pub async fn wait_process(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        let req = api::WaitProcessRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let r: api::WaitProcessResponse = self.call(Method::WaitProcess, &req, timeout).await?;
        Ok(if r.signal > 0 {
            ExitStatus::Signaled(r.signal)
        } else {
            ExitStatus::Exited(r.exit_code)
        })
    }

    pub async fn resize_terminal(&self, id: &str, rows: u32, cols: u32) -> Result<(), ClientError> {
        let req = api::ResizeTerminalRequest {
            id: id.to_owned(),
            size: protobuf::MessageField::some(api::TerminalSize {
                rows,
                cols,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::ResizeTerminal, &req)
            .await
            .map(drop)
    }

    /// Closes the process's stdin (as EOF on the stdin stream does).
    pub async fn close_stdin(&self, id: &str) -> Result<(), ClientError> {
        let req = api::CloseStdinRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::CloseStdin, &req)
            .await
            .map(drop)
    }

    /// Forgets an exited process.
    pub async fn remove_process(&self, id: &str) -> Result<(), ClientError> {
        let req = api::RemoveProcessRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::RemoveProcess, &req)
            .await
            .map(drop)
    }

    /// Creates a container (its init waits for [`Client::start_container`]); returns the
    /// init's guest pid.
    pub async fn create_container(
        &self,
        req: &api::CreateContainerRequest,
    ) -> Result<i32, ClientError> {
        self.call_default::<_, api::CreateContainerResponse>(Method::CreateContainer, req)
            .await
            .map(|r| r.pid)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), ClientError> {
        let req = api::StartContainerRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::StartContainer, &req)
            .await
            .map(drop)
    }

    /// Guest pids of every process of the container.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<i32>, ClientError> {
        let req = api::ListProcessesRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::ListProcessesResponse>(Method::ListProcesses, &req)
            .await
            .map(|r| r.pids)
    }

    pub async fn pause_container(&self, id: &str) -> Result<(), ClientError> {
        let req = api::PauseContainerRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::PauseContainer, &req)
            .await
            .map(drop)
    }

    pub async fn resume_container(&self, id: &str) -> Result<(), ClientError> {
        let req = api::ResumeContainerRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::ResumeContainer, &req)
            .await
            .map(drop)
    }

    /// Applies an OCI `LinuxResources` object (JSON) to the container's cgroup.
    pub async fn update_container(
        &self,
        id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        let req = api::UpdateContainerRequest {
            id: id.to_owned(),
            resources: resources_json,
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::UpdateContainer, &req)
            .await
            .map(drop)
    }

    pub async fn stats(&self, id: &str) -> Result<api::StatsResponse, ClientError> {
        let req = api::StatsRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        self.call_default(Method::Stats, &req).await
    }

    pub async fn remove_container(&self, id: &str, force: bool) -> Result<(), ClientError> {
        let req = api::RemoveContainerRequest {
            id: id.to_owned(),
            force,
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::RemoveContainer, &req)
            .await
            .map(drop)
    }

    /// Asks the agent to sync and power the guest off. The VM may vanish before the answer
    /// arrives, so a dropped connection counts as success.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        match self
            .call_default::<_, api::Empty>(Method::Shutdown, &api::ShutdownRequest::new())
            .await
        {
            Ok(_) | Err(ClientError::Closed) | Err(ClientError::VmGone) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes a guest restored from a template its own: `entropy` into its RNG (reseeded), its
    /// wall clock set to `now`.
    pub async fn refresh(
        &self,
        entropy: Vec<u8>,
        now: std::time::SystemTime,
    ) -> Result<(), ClientError> {
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let req = api::RefreshRequest {
            entropy,
            realtime_sec: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            realtime_nsec: since.subsec_nanos(),
            ..Default::default()
        };
        self.call_default::<_, api::Empty>(Method::Refresh, &req)
            .await
            .map(drop)
    }

    /// Makes the container's network interfaces appear in the guest, configured as described
    /// (see `ConfigureNetwork` in proto/agent.proto).
    pub async fn configure_network(
        &self,
        req: &api::ConfigureNetworkRequest,
    ) -> Result<(), ClientError> {
        self.call_default::<_, api::Empty>(Method::ConfigureNetwork, req)
            .await
            .map(drop)
    }

    /// Opens the `kind` stdio stream of process `id`: a new connection to the stream port that
    /// starts with the stream header. Stdin: write to it, `shutdown(Write)` for EOF. Stdout,
    /// stderr: read to EOF. Terminal: both.
    pub async fn open_stream(&self, id: &str, kind: StreamKind) -> Result<UnixStream, ClientError> {
        let header = StreamHeader::new(id, kind)
            .encode()
            .map_err(ClientError::Header)?;
        let mut stream = self
            .connector
            .connect(STREAM_PORT, self.config.handshake_timeout)
            .await
            .map_err(|e| match e {
                ConnectError::VmGone => ClientError::VmGone,
                e => ClientError::Connect(e),
            })?;
        let timeout = self.config.call_timeout;
        tokio::time::timeout(timeout, stream.write_all(&header))
            .await
            .map_err(|_| ClientError::Timeout(Secs(timeout)))?
            .map_err(ClientError::Io)?;
        Ok(stream)
    }
}

/// Connects to `port`, retrying transient failures until `config.connect_timeout`.
async fn connect_retrying(
    connector: &Connector,
    port: u32,
    config: &ClientConfig,
) -> Result<UnixStream, ClientError> {
    let start = Instant::now();
    let deadline = start + config.connect_timeout;
    // A VM socket that does not exist yet may still be on its way (the VMM was just started);
    // one that existed and then vanished, or refuses, means the VMM is gone.
    let mut seen_vm = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connector
            .connect(port, config.handshake_timeout.min(left))
            .await
        {
            Ok(s) => return Ok(s),
            Err(ConnectError::VmGone) if seen_vm || !vm_may_appear(connector) => {
                return Err(ClientError::VmGone)
            }
            Err(e) if !e.is_transient() && !matches!(e, ConnectError::VmGone) => {
                return Err(ClientError::Connect(e))
            }
            Err(e) => {
                seen_vm |= !matches!(e, ConnectError::VmGone);
                if Instant::now() + config.retry_interval >= deadline {
                    return Err(ClientError::NotUp(Secs(config.connect_timeout), e));
                }
                tokio::time::sleep(config.retry_interval).await;
            }
        }
    }
}

/// A missing socket may still appear; a socket file nobody accepts on will not.
fn vm_may_appear(connector: &Connector) -> bool {
    match connector {
        Connector::HybridVsock { uds_path } => !uds_path.exists(),
        Connector::Unix { dir } => !dir.exists(),
    }
}

#[cfg(test)]
mod tests;

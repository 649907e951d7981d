//! A blocking facade over the async [`super::Client`], for tests, benchmarks and tools that are
//! plain threads. It owns a small runtime whose one worker drives the connection task between
//! calls; calls may come from several threads at once.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{ClientConfig, ClientError, Connector, ExitStatus};
use crate::api;
use crate::rpc::Method;
use crate::stream::StreamKind;

/// A connected agent client with blocking calls.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    inner: super::Client,
}

impl Client {
    /// Connects like [`super::Client::connect`].
    pub fn connect(connector: Connector, config: ClientConfig) -> Result<Client, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agent-client")
            .enable_all()
            .build()
            .map_err(ClientError::Io)?;
        let inner = runtime.block_on(super::Client::connect(connector, config))?;
        Ok(Client { runtime, inner })
    }

    pub fn config(&self) -> &ClientConfig {
        self.inner.config()
    }

    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.inner.set_call_timeout(timeout);
    }

    /// The async client, for callers that mix both styles.
    pub fn as_async(&self) -> &super::Client {
        &self.inner
    }

    /// Makes one call with an explicit deadline (`None`: as long as the connection lives).
    pub fn call<Q: protobuf::Message, R: protobuf::Message>(
        &self,
        method: Method,
        req: &Q,
        timeout: Option<Duration>,
    ) -> Result<R, ClientError> {
        self.runtime.block_on(self.inner.call(method, req, timeout))
    }

    pub fn version(&self) -> Result<api::VersionResponse, ClientError> {
        self.runtime.block_on(self.inner.version())
    }

    pub fn create_process(&self, req: &api::CreateProcessRequest) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.create_process(req))
    }

    pub fn start_process(&self, id: &str) -> Result<i32, ClientError> {
        self.runtime.block_on(self.inner.start_process(id))
    }

    pub fn signal_process(&self, id: &str, signal: i32, all: bool) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.signal_process(id, signal, all))
    }

    pub fn wait_process(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<ExitStatus, ClientError> {
        self.runtime.block_on(self.inner.wait_process(id, timeout))
    }

    pub fn resize_terminal(&self, id: &str, rows: u32, cols: u32) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.resize_terminal(id, rows, cols))
    }

    pub fn close_stdin(&self, id: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.close_stdin(id))
    }

    pub fn remove_process(&self, id: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.remove_process(id))
    }

    pub fn create_container(&self, req: &api::CreateContainerRequest) -> Result<i32, ClientError> {
        self.runtime.block_on(self.inner.create_container(req))
    }

    pub fn start_container(&self, id: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.start_container(id))
    }

    pub fn list_processes(&self, id: &str) -> Result<Vec<i32>, ClientError> {
        self.runtime.block_on(self.inner.list_processes(id))
    }

    pub fn pause_container(&self, id: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.pause_container(id))
    }

    pub fn resume_container(&self, id: &str) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.resume_container(id))
    }

    pub fn update_container(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.update_container(id, resources_json))
    }

    pub fn stats(&self, id: &str) -> Result<api::StatsResponse, ClientError> {
        self.runtime.block_on(self.inner.stats(id))
    }

    pub fn remove_container(&self, id: &str, force: bool) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.inner.remove_container(id, force))
    }

    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.shutdown())
    }

    pub fn refresh(&self, entropy: Vec<u8>, now: std::time::SystemTime) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.refresh(entropy, now))
    }

    pub fn configure_network(&self, req: &api::ConfigureNetworkRequest) -> Result<(), ClientError> {
        self.runtime.block_on(self.inner.configure_network(req))
    }

    /// Opens a stdio stream like [`super::Client::open_stream`], as a blocking std socket.
    pub fn open_stream(&self, id: &str, kind: StreamKind) -> Result<UnixStream, ClientError> {
        let stream = self.runtime.block_on(self.inner.open_stream(id, kind))?;
        // Deregistering from the reactor wants the runtime's context.
        let _context = self.runtime.enter();
        let stream = stream.into_std().map_err(ClientError::Io)?;
        stream.set_nonblocking(false).map_err(ClientError::Io)?;
        Ok(stream)
    }
}

//! The shim's own lifecycle, as containerd drives it: `start` (spawn the serving shim and
//! print its socket), serving the task API until the last container is deleted, and `delete`
//! (clean up after a shim that died).

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::util::{read_options, write_str_to_file};
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};
use log::warn;

use crate::exits::Exits;
use crate::process::timestamp;
use crate::rootfs;
use crate::runtime::{args, Runtime};
use crate::table::TaskService;

pub struct Service {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::default(),
        }
    }

    /// One shim per container for now (its id is the grouping): a pod's containers will
    /// share the sandbox's shim and VM once the agent serves several containers.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // The serving shim removes its socket at exit by this file (in the bundle).
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// The shim serving this container died: the container must not outlive it. Run in the
    /// bundle, which holds the runtime options `create` saved.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        let opts = read_options(&bundle).await.unwrap_or_default();
        let runtime = Runtime::new(&opts, &bundle, &self.namespace);
        let exits = Exits::start().await?;
        if let Err(e) = runtime
            .call(&exits, &args(["delete", "--force", self.id.as_str()]), None)
            .await
        {
            warn!("delete of {} after its shim ended: {e}", self.id);
        }
        rootfs::unmount(&bundle);
        Ok(DeleteResponse {
            // SIGKILL's status, as runc's shim reports a task whose shim is gone.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let exits = match Exits::start().await {
            Ok(e) => e,
            // Only a poisoned subscription table could fail; the shim cannot work without it.
            Err(e) => {
                eprintln!("containerd-shim-bulkhead-v2: cannot follow exits: {e}");
                std::process::exit(1);
            }
        };
        TaskService::new(
            self.namespace.clone(),
            publisher,
            exits,
            Arc::clone(&self.exit),
        )
    }
}

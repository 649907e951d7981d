//! The virtio-fs device as the transport sees it: two queues (hiprio, one request queue), the
//! `tag` + `num_request_queues` configuration space, activation and reset.
//!
//! The device does no I/O itself. It is shared as `Arc<Mutex<FsDevice>>` with its transport
//! (vCPU threads) and hands the queues to its queue thread at activation; see
//! [`super::worker`], which starts the share's server process ([`super::server`]).

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::FsMetrics;
use super::worker::{self, Activation, Command, WorkerHandle, WorkerSetup};
use super::{FsConfig, FsError, FsServer, NUM_QUEUES, QUEUE_SIZE, TAG_MAX_LEN};
use crate::control::Controller;
use crate::devices::virtio::{
    ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX,
    FEATURE_INDIRECT_DESC, FEATURE_VERSION_1,
};

/// `struct virtio_fs_config`: `u8 tag[36]; le32 num_request_queues;`.
const CONFIG_SIZE: usize = TAG_MAX_LEN + 4;

/// The device.
pub struct FsDevice {
    tag: String,
    config: [u8; CONFIG_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    queue_events: Vec<EventFd>,
    worker: WorkerHandle,
    active: bool,
    metrics: Arc<FsMetrics>,
}

impl std::fmt::Debug for FsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsDevice")
            .field("tag", &self.tag)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl FsDevice {
    /// Checks `config`, starts the queue thread and the share's server, and waits until the
    /// server is confined to the share. Fails if it cannot be (the VMM needs CAP_SYS_ADMIN for
    /// that). If the server dies later, `control` stops the VM.
    pub fn new(config: &FsConfig, control: Arc<Controller>) -> Result<Self, FsError> {
        config.validate()?;
        let share = config.canonical_dir()?;
        if config.server == FsServer::InProcess {
            raise_fd_limit();
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        let queue_events = vec![evt()?, evt()?];
        let worker_events = queue_events
            .iter()
            .map(|e| e.try_clone().map_err(FsError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = Arc::new(FsMetrics::default());
        let worker = worker::spawn(WorkerSetup {
            config: config.clone(),
            share,
            queue_events: worker_events,
            metrics: metrics.clone(),
            control,
        })?;

        let mut space = [0u8; CONFIG_SIZE];
        space[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        space[TAG_MAX_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            tag: config.tag.clone(),
            config: space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_events,
            worker,
            active: false,
            metrics,
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<FsMetrics> {
        self.metrics.clone()
    }

    /// The mount tag the guest sees.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Whether a driver is running the device.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        // No INDIRECT_DESC (see vsock): the guest would allocate a table for every request.
        FEATURE_VERSION_1 | FEATURE_EVENT_IDX
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        use virtio_queue::QueueT;
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        self.active = true;
        self.worker.send(Command::Activate(Box::new(Activation {
            mem,
            queues,
            interrupt,
            indirect: features & FEATURE_INDIRECT_DESC != 0,
        })));
        Ok(())
    }

    fn reset(&mut self) {
        if std::mem::take(&mut self.active) {
            self.worker.send(Command::Reset);
        }
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit when it serves a share itself
/// ([`FsServer::InProcess`]; a server process sets its own): every inode the guest keeps
/// looked up is an `O_PATH` fd of the server, and a guest with a day-long entry cache walking a
/// rootfs of a few thousand files would otherwise exhaust a 1024 soft limit (virtiofsd raises it
/// too). The limit is per process, so the VM's other fds share it.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("virtio-fs: cannot raise the open file limit to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("virtio-fs: cannot read the open file limit: {e}"),
    }
}

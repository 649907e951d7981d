//! The thread that serves one share: confined at birth, it owns the queues while a driver runs
//! the device and answers every request.
//!
//! The device (on vCPU threads) talks to it only through a channel and a wake-up eventfd:
//! activation hands over guest memory, the queues and the interrupt; reset takes them back and
//! forgets every inode and handle the old driver had. The worker waits on its own epoll set (the
//! wake-up eventfd and one eventfd per queue), never on the VMM's event loop, which keeps the
//! host's view of the file system.
//!
//! Start-up order: open what the server needs from the host (`/proc/self/fd`), confine the
//! thread ([`sandbox::confine`]), set up epoll, install the seccomp filter, report ready. Any
//! failure is reported to [`spawn`]'s caller and the thread ends; it never serves unconfined.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::filesystem::{ShareFs, ShareOptions};
use super::metrics::{add, FsMetrics};
use super::request::Handler;
use super::shadow::ShadowQueue;
use super::{sandbox, seccomp, FsError, NUM_QUEUES};
use crate::devices::virtio::{
    chain, drain_event, needs_interrupt, pop_avail, GuestMemoryMmap, Interrupt, QueueError,
};

/// epoll data of the wake-up eventfd; queues use their index.
const WAKE: u64 = u64::MAX;

/// What the device asks of its worker.
pub(super) enum Command {
    /// A driver set DRIVER_OK: serve these queues.
    Activate(Box<Activation>),
    /// The driver reset the device: drop the queues and all guest-visible state.
    Reset,
    /// The device is going away.
    Stop,
}

/// Everything a running driver shares with the device.
pub(super) struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
    pub indirect: bool,
}

/// The device's end of a running worker.
pub(super) struct WorkerHandle {
    commands: Sender<Command>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends `cmd` and wakes the worker. Never blocks.
    pub fn send(&self, cmd: Command) {
        if self.commands.send(cmd).is_err() {
            tracing::warn!("virtio-fs: worker is gone");
            return;
        }
        if let Err(e) = self.wake.write(1) {
            tracing::warn!("virtio-fs: cannot wake the worker: {e}");
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("virtio-fs: worker panicked");
            }
        }
    }
}

/// What the worker needs to start.
pub(super) struct WorkerSetup {
    pub tag: String,
    pub share: PathBuf,
    pub options: ShareOptions,
    pub queue_events: Vec<EventFd>,
    pub metrics: Arc<FsMetrics>,
}

/// Starts the worker and waits until it is confined and ready (or has failed).
pub(super) fn spawn(setup: WorkerSetup) -> Result<WorkerHandle, FsError> {
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?;
    let worker_wake = wake.try_clone().map_err(FsError::EventFd)?;
    let (commands, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("fs-{}", setup.tag))
        .spawn(move || match Worker::start(setup, worker_wake, rx) {
            Ok(worker) => {
                let _ = ready_tx.send(Ok(()));
                worker.run();
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(FsError::Spawn)?;
    let handle = WorkerHandle {
        commands,
        wake,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FsError::WorkerGone),
    }
}

/// State that exists only while a driver runs the device.
struct Running {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    broken: [bool; NUM_QUEUES],
    used: [bool; NUM_QUEUES],
    interrupt: Arc<Interrupt>,
    indirect: bool,
    shadow: ShadowQueue,
}

struct Worker {
    fs: Arc<ShareFs>,
    server: Server<Arc<ShareFs>>,
    epoll: Epoll,
    wake: EventFd,
    queue_events: Vec<EventFd>,
    commands: Receiver<Command>,
    metrics: Arc<FsMetrics>,
    running: Option<Running>,
}

impl Worker {
    fn start(
        setup: WorkerSetup,
        wake: EventFd,
        commands: Receiver<Command>,
    ) -> Result<Self, FsError> {
        block_signals();
        let filter = seccomp::worker_filter().map_err(FsError::Seccomp)?;
        let read_only = setup.options.read_only;
        // The server's root is "/" as this thread will see it once confined: the share.
        let fs = Arc::new(ShareFs::new("/", setup.options).map_err(FsError::Server)?);
        sandbox::confine(&setup.share, read_only).map_err(FsError::Sandbox)?;

        let epoll = Epoll::new().map_err(FsError::Epoll)?;
        let watch = |fd: i32, data: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(FsError::Epoll)
        };
        watch(wake.as_raw_fd(), WAKE)?;
        for (i, evt) in setup.queue_events.iter().enumerate() {
            watch(evt.as_raw_fd(), i as u64)?;
        }
        seccomp::install(&filter).map_err(FsError::Seccomp)?;
        Ok(Self {
            server: Server::new(fs.clone()),
            fs,
            epoll,
            wake,
            queue_events: setup.queue_events,
            commands,
            metrics: setup.metrics,
            running: None,
        })
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); NUM_QUEUES + 1];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-fs: epoll failed, worker stops: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    WAKE => {
                        drain_event(&self.wake);
                        if !self.handle_commands() {
                            return;
                        }
                    }
                    q => {
                        let q = q as usize;
                        if let Some(evt) = self.queue_events.get(q) {
                            add(&self.metrics.notifications, drain_event(evt));
                            self.process_queue(q);
                        }
                    }
                }
            }
            self.signal_used();
        }
    }

    /// Applies pending commands; false when the worker must stop.
    fn handle_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Activate(a) => self.activate(*a),
                Command::Reset => {
                    if self.running.take().is_some() {
                        // The next driver starts from a clean slate: no inodes, no handles.
                        self.fs.destroy();
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn activate(&mut self, a: Activation) {
        let shadow = match ShadowQueue::new(&a.mem) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("virtio-fs: cannot activate: {e}");
                a.interrupt.set_needs_reset();
                return;
            }
        };
        self.running = Some(Running {
            mem: a.mem,
            queues: a.queues,
            broken: [false; NUM_QUEUES],
            used: [false; NUM_QUEUES],
            interrupt: a.interrupt,
            indirect: a.indirect,
            shadow,
        });
        // Requests may have been queued before DRIVER_OK reached us.
        for q in 0..NUM_QUEUES {
            self.process_queue(q);
        }
    }

    fn process_queue(&mut self, index: usize) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        if run.broken.get(index).copied().unwrap_or(true) {
            return;
        }
        loop {
            loop {
                let head = match pop_avail(&mut run.queues[index], &run.mem) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return run.break_queue(index, &e, &self.metrics),
                };
                let q = &run.queues[index];
                let chain = match chain::parse(
                    &run.mem,
                    GuestAddress(q.desc_table()),
                    q.size(),
                    head,
                    run.indirect,
                ) {
                    Ok(c) => c,
                    Err(e) => return run.break_queue(index, &QueueError::Chain(e), &self.metrics),
                };
                let used = Handler {
                    server: &self.server,
                    mem: &run.mem,
                    shadow: &mut run.shadow,
                    metrics: &self.metrics,
                }
                .handle(&chain);
                if let Err(e) = run.queues[index].add_used(&run.mem, head, used) {
                    return run.break_queue(index, &QueueError::Ring(e), &self.metrics);
                }
                run.used[index] = true;
            }
            match run.queues[index].enable_notification(&run.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return run.break_queue(index, &QueueError::Ring(e), &self.metrics),
            }
        }
    }

    /// Raises one interrupt for everything used since the last call, if the driver wants it.
    fn signal_used(&mut self) {
        let Some(run) = self.running.as_mut() else {
            return;
        };
        let mut raise = false;
        for i in 0..NUM_QUEUES {
            if !std::mem::take(&mut run.used[i]) || run.broken[i] {
                continue;
            }
            match needs_interrupt(&mut run.queues[i], &run.mem) {
                Ok(n) => raise |= n,
                Err(e) => run.break_queue(i, &e, &self.metrics),
            }
        }
        if raise {
            add(&self.metrics.interrupts, 1);
            if let Err(e) = run.interrupt.signal_used() {
                tracing::warn!("virtio-fs: cannot raise interrupt: {e}");
            }
        }
    }
}

impl Running {
    fn break_queue(&mut self, index: usize, err: &QueueError, metrics: &FsMetrics) {
        tracing::warn!("virtio-fs: queue {index} is broken: {err}");
        self.broken[index] = true;
        add(&metrics.queue_errors, 1);
        self.interrupt.set_needs_reset();
    }
}

/// Blocks every signal on this thread, so process-directed signals go to other threads and the
/// worker never runs a handler (handlers are not in its seccomp filter's world).
fn block_signals() {
    let all = nix::sys::signal::SigSet::all();
    if let Err(e) = all.thread_block() {
        tracing::warn!("virtio-fs: cannot block signals: {e}");
    }
}

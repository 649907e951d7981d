//! The monitor's thread for one share (the queue thread): it owns the queues while a driver
//! runs the device, hands every request to the share's server ([`ServerLink`]) and puts the
//! replies in the used ring.
//!
//! The device (on vCPU threads) talks to it only through a channel and a wake-up eventfd:
//! activation hands over guest memory, the queues and the interrupt; reset takes them back and
//! has the server forget every inode and handle the old driver had (the same server process
//! serves the next driver). The thread waits on its own epoll set: the wake-up eventfd, one
//! eventfd per queue, and the server's socket, which becomes readable only when the server is
//! gone (or talks out of turn).
//!
//! Start-up order: start the server and wait until it is confined ([`ServerLink::start`]; on
//! this thread, because a server process dies with the thread that started it), set up epoll,
//! drop every capability of this thread and install its seccomp list, report ready. Any
//! failure is reported to [`spawn`]'s caller and the thread ends.
//!
//! When the server dies (or breaks the protocol) the VM stops: the thread logs one line
//! naming the share, how the server ended and its last words (a seccomp report, a panic
//! message), and asks the VM's [`Controller`] to stop with [`ExitReason::DeviceFailed`]. A
//! guest without its root file system cannot go on, and a server that misbehaves may be
//! compromised.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::link::{LinkError, ServerLink};
use super::metrics::{add, FsMetrics};
use super::request::Handler;
use super::{seccomp, FsConfig, FsError, NUM_QUEUES};
use crate::control::{Controller, ExitReason};
use crate::devices::virtio::{
    chain, drain_event, needs_interrupt, pop_avail, GuestMemoryMmap, Interrupt, QueueError,
};

/// epoll data of the wake-up eventfd; queues use their index.
const WAKE: u64 = u64::MAX;
/// epoll data of the server's socket.
const SERVER: u64 = u64::MAX - 1;

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
    /// Disconnected when the worker's thread ends.
    done: Receiver<()>,
    /// A second fd of the monitor's end of the server's socket: shut down to wake a worker
    /// blocked on a server that does not answer.
    unblock: OwnedFd,
}

/// How long a worker has to take its `Stop` before its server's socket is shut down under it
/// (a request in flight to a server that never answers would otherwise hold the VM's end, and
/// with it a host SIGKILL, for good).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.done.recv_timeout(STOP_WAIT) {
            tracing::warn!("virtio-fs: the worker is waiting on its server: shutting it down");
            let _ = nix::sys::socket::shutdown(
                self.unblock.as_raw_fd(),
                nix::sys::socket::Shutdown::Both,
            );
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("virtio-fs: worker panicked");
            }
        }
    }
}

/// What the worker needs to start.
pub(super) struct WorkerSetup {
    pub config: FsConfig,
    pub share: PathBuf,
    pub queue_events: Vec<EventFd>,
    pub metrics: Arc<FsMetrics>,
    pub control: Arc<Controller>,
}

/// Starts the worker and waits until it is confined and ready (or has failed).
pub(super) fn spawn(setup: WorkerSetup) -> Result<WorkerHandle, FsError> {
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?;
    let worker_wake = wake.try_clone().map_err(FsError::EventFd)?;
    let (commands, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let (done_tx, done) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("fs-{}", setup.config.tag))
        .spawn(move || {
            let _done = done_tx;
            match Worker::start(setup, worker_wake, rx) {
                Ok((worker, unblock)) => {
                    let _ = ready_tx.send(Ok(unblock));
                    worker.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(FsError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(unblock)) => Ok(WorkerHandle {
            commands,
            wake,
            thread: Some(thread),
            done,
            unblock,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
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
}

struct Worker {
    tag: String,
    /// The share's server; `None` once it is gone (the VM is stopping then).
    link: Option<ServerLink>,
    control: Arc<Controller>,
    epoll: Epoll,
    wake: EventFd,
    queue_events: Vec<EventFd>,
    commands: Receiver<Command>,
    metrics: Arc<FsMetrics>,
    running: Option<Running>,
}

impl Worker {
    /// Starts the server and confines this thread; the worker and a second fd of its end of the
    /// server's socket (see [`WorkerHandle::unblock`]).
    fn start(
        setup: WorkerSetup,
        wake: EventFd,
        commands: Receiver<Command>,
    ) -> Result<(Self, OwnedFd), FsError> {
        // Process-directed signals go to the monitor's other threads.
        super::server::block_signals();
        let link = ServerLink::start(&setup.config, &setup.share).map_err(FsError::Server)?;
        let filter = seccomp::queue_filter(link.server_pid()).map_err(FsError::Seccomp)?;

        let epoll = Epoll::new().map_err(FsError::Epoll)?;
        let watch = |fd: i32, data: u64, events: EventSet| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
                .map_err(FsError::Epoll)
        };
        watch(wake.as_raw_fd(), WAKE, EventSet::IN)?;
        for (i, evt) in setup.queue_events.iter().enumerate() {
            watch(evt.as_raw_fd(), i as u64, EventSet::IN)?;
        }
        let server = link.fd().map_err(|e| FsError::Server(e.into()))?;
        let unblock = server.try_clone_to_owned().map_err(FsError::EventFd)?;
        let server_fd = server.as_raw_fd();
        watch(
            server_fd,
            SERVER,
            EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP,
        )?;
        seccomp::confine_queue_thread(&filter).map_err(FsError::Seccomp)?;
        let worker = Self {
            tag: setup.config.tag,
            link: Some(link),
            control: setup.control,
            epoll,
            wake,
            queue_events: setup.queue_events,
            commands,
            metrics: setup.metrics,
            running: None,
        };
        Ok((worker, unblock))
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); NUM_QUEUES + 2];
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
                    SERVER => {
                        // Readable while no request is under way: it is gone, or talks out
                        // of turn. Either way it serves no more.
                        self.server_failed(&LinkError::Wire(super::wire::WireError::Closed));
                    }
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
                        if let Some(Err(e)) = self.link.as_mut().map(ServerLink::reset) {
                            self.server_failed(&e);
                        }
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn activate(&mut self, a: Activation) {
        self.running = Some(Running {
            mem: a.mem,
            queues: a.queues,
            broken: [false; NUM_QUEUES],
            used: [false; NUM_QUEUES],
            interrupt: a.interrupt,
            indirect: a.indirect,
        });
        // Requests may have been queued before DRIVER_OK reached us.
        for q in 0..NUM_QUEUES {
            self.process_queue(q);
        }
    }

    fn process_queue(&mut self, index: usize) {
        let (Some(run), Some(link)) = (self.running.as_mut(), self.link.as_mut()) else {
            return;
        };
        if run.broken.get(index).copied().unwrap_or(true) {
            return;
        }
        let lost = 'serve: loop {
            loop {
                let head = match pop_avail(&mut run.queues[index], &run.mem) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        run.break_queue(index, &e, &self.metrics);
                        break 'serve None;
                    }
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
                    Err(e) => {
                        run.break_queue(index, &QueueError::Chain(e), &self.metrics);
                        break 'serve None;
                    }
                };
                let handled = Handler {
                    link: &mut *link,
                    mem: &run.mem,
                    metrics: &self.metrics,
                }
                .handle(&chain);
                let used = match handled {
                    Ok(n) => n,
                    Err(e) => break 'serve Some(e),
                };
                if let Err(e) = run.queues[index].add_used(&run.mem, head, used) {
                    run.break_queue(index, &QueueError::Ring(e), &self.metrics);
                    break 'serve None;
                }
                run.used[index] = true;
            }
            match run.queues[index].enable_notification(&run.mem) {
                Ok(true) => continue,
                Ok(false) => break None,
                Err(e) => {
                    run.break_queue(index, &QueueError::Ring(e), &self.metrics);
                    break None;
                }
            }
        };
        if let Some(e) = lost {
            self.server_failed(&e);
        }
    }

    /// The server is gone or broke the protocol: end it, say so in one line, stop the VM.
    fn server_failed(&mut self, err: &LinkError) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let end = link.finish();
        drop(link);
        let line = format!(
            "virtio-fs server of share {:?} failed ({}): {end}",
            self.tag,
            super::server::error_chain(err)
        );
        // One line, said once: the VM's end carries it (the embedder logs that).
        tracing::debug!("{line}");
        add(&self.metrics.queue_errors, 1);
        if let Some(run) = &self.running {
            run.interrupt.set_needs_reset();
        }
        self.control.request(ExitReason::DeviceFailed(line));
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

//! The device event loop: one thread running rust-vmm's `event-manager` over every fd the
//! devices care about (virtio queue eventfds, vsock sockets, console input).
//!
//! Devices register a subscriber while the VM is built; [`EventLoop::start`] moves the manager to
//! its own thread, and [`RunningEventLoop::stop`] ends it through an internal eventfd.
//! [`LoopPause`] holds the thread between two events (for a snapshot: no device runs while the
//! VM's state is read).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use seccompiler::BpfProgram;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use event_manager::SubscriberId;

/// A device's event handler, shared between the device (vCPU side) and the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors from the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// Creating the epoll instance or the stop eventfd failed.
    #[error("cannot create the event loop")]
    Create(#[source] std::io::Error),
    /// The event manager failed.
    #[error("event manager failed")]
    Manager(#[from] event_manager::Error),
    /// The thread could not be started.
    #[error("cannot start the event loop thread")]
    Spawn(#[source] std::io::Error),
    /// The thread could not install its seccomp allow-list.
    #[error(transparent)]
    Seccomp(crate::seccomp::SeccompError),
    /// The loop did not reach its pause point in time (or is not running).
    #[error("the device event loop did not pause within {0:?}")]
    PauseTimeout(Duration),
}

#[derive(Default)]
struct PauseFlags {
    requested: bool,
    parked: bool,
    shut_down: bool,
}

/// Holds the event loop thread between two events while a pause is requested.
///
/// The loop parks inside its own subscriber (woken by an eventfd), so no other subscriber's
/// `process` runs and no device lock is held while it is parked.
pub struct LoopPause {
    evt: EventFd,
    flags: Mutex<PauseFlags>,
    changed: Condvar,
}

impl LoopPause {
    fn new() -> Result<Self, EventLoopError> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?,
            flags: Mutex::new(PauseFlags::default()),
            changed: Condvar::new(),
        })
    }

    fn flags(&self) -> MutexGuard<'_, PauseFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the loop to park and waits until it has. On failure the request is withdrawn.
    pub fn pause(&self, timeout: Duration) -> Result<(), EventLoopError> {
        let mut flags = self.flags();
        flags.requested = true;
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("event loop: cannot signal a pause: {e}");
        }
        let deadline = Instant::now() + timeout;
        while !flags.parked {
            let now = Instant::now();
            if flags.shut_down || now >= deadline {
                flags.requested = false;
                return Err(EventLoopError::PauseTimeout(timeout));
            }
            flags = self
                .changed
                .wait_timeout(flags, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets a parked loop go on.
    pub fn resume(&self) {
        self.flags().requested = false;
        self.changed.notify_all();
    }

    /// Releases the loop for good (it is being stopped).
    fn shut_down(&self) {
        let mut flags = self.flags();
        flags.shut_down = true;
        flags.requested = false;
        drop(flags);
        self.changed.notify_all();
    }

    /// Runs on the loop thread: parks while a pause is requested.
    fn park_if_requested(&self) {
        let _ = self.evt.read();
        let mut flags = self.flags();
        if !flags.requested {
            return;
        }
        flags.parked = true;
        self.changed.notify_all();
        while flags.requested && !flags.shut_down {
            flags = self.changed.wait(flags).unwrap_or_else(|p| p.into_inner());
        }
        flags.parked = false;
    }
}

/// The loop's own subscriber for [`LoopPause`].
struct PauseSubscriber(Arc<LoopPause>);

impl MutEventSubscriber for PauseSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.park_if_requested();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0.evt, EventSet::IN)) {
            tracing::error!("event loop: cannot watch the pause eventfd: {e}");
        }
    }
}

/// Ends the loop when its eventfd is written.
struct StopSubscriber {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Failing to register means stop() cannot wake the loop; the run loop also polls the
        // flag with a timeout, so this is not fatal.
        let _ = ops.add(Events::new(&self.evt, EventSet::IN));
    }
}

/// An event loop being assembled; not yet running.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    stop: EventFd,
    stopped: Arc<AtomicBool>,
    pause: Arc<LoopPause>,
}

impl EventLoop {
    /// A new, empty loop.
    pub fn new() -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new()?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let stop_sub = StopSubscriber {
            evt: stop.try_clone().map_err(EventLoopError::Create)?,
            stopped: stopped.clone(),
        };
        manager.add_subscriber(Arc::new(Mutex::new(stop_sub)));
        let pause = Arc::new(LoopPause::new()?);
        manager.add_subscriber(Arc::new(Mutex::new(PauseSubscriber(pause.clone()))));
        Ok(Self {
            manager,
            stop,
            stopped,
            pause,
        })
    }

    /// The loop's pause switch (usable once the loop runs).
    pub fn pause_switch(&self) -> Arc<LoopPause> {
        self.pause.clone()
    }

    /// Adds a subscriber; its `init` runs now and registers its fds.
    pub fn add_subscriber(&mut self, subscriber: Subscriber) -> SubscriberId {
        self.manager.add_subscriber(subscriber)
    }

    /// Starts the loop on its own thread, which first installs `seccomp` if given (and the
    /// start fails if it cannot: the loop never handles guest input unconfined).
    pub fn start(self, seccomp: Option<BpfProgram>) -> Result<RunningEventLoop, EventLoopError> {
        let EventLoop {
            mut manager,
            stop,
            stopped,
            pause,
        } = self;
        let flag = stopped.clone();
        let (confined_tx, confined) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let installed = seccomp.as_ref().map_or(Ok(()), |f| {
                    crate::seccomp::confine_thread(f, "device event loop")
                });
                let ok = installed.is_ok();
                let _ = confined_tx.send(installed);
                if !ok {
                    return;
                }
                while !flag.load(Ordering::Acquire) {
                    // A failed wait (other than EINTR, which the manager absorbs) would spin;
                    // back off instead of burning a CPU.
                    if manager.run_with_timeout(1000).is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        match confined.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(EventLoopError::Seccomp(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(EventLoopError::Spawn(std::io::Error::other(
                    "the event loop thread ended before it ran",
                )));
            }
        }
        Ok(RunningEventLoop {
            stop,
            stopped,
            pause,
            thread: Some(thread),
        })
    }
}

/// The loop's thread; stopped (and joined) on [`RunningEventLoop::stop`] or drop.
pub struct RunningEventLoop {
    stop: EventFd,
    stopped: Arc<AtomicBool>,
    pause: Arc<LoopPause>,
    thread: Option<JoinHandle<()>>,
}

impl RunningEventLoop {
    /// Stops the loop and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.pause.shut_down();
        self.stopped.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningEventLoop {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Echo {
        evt: EventFd,
        tx: mpsc::Sender<u64>,
    }

    impl MutEventSubscriber for Echo {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            if let Ok(v) = self.evt.read() {
                let _ = self.tx.send(v);
            }
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn delivers_events_on_its_thread_and_stops() {
        let mut el = EventLoop::new().unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        el.add_subscriber(Arc::new(Mutex::new(Echo {
            evt: evt.try_clone().unwrap(),
            tx,
        })));
        let running = el.start(None).unwrap();
        evt.write(7).unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, 7);
        let t = std::time::Instant::now();
        running.stop();
        assert!(
            t.elapsed() < std::time::Duration::from_millis(900),
            "stop woke the loop"
        );
    }

    #[test]
    fn a_paused_loop_runs_no_subscriber_until_resumed_or_stopped() {
        let mut el = EventLoop::new().unwrap();
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let (tx, rx) = mpsc::channel();
        el.add_subscriber(Arc::new(Mutex::new(Echo {
            evt: evt.try_clone().unwrap(),
            tx,
        })));
        let pause = el.pause_switch();
        assert!(
            pause.pause(Duration::from_millis(50)).is_err(),
            "not running"
        );
        let running = el.start(None).unwrap();
        pause.pause(Duration::from_secs(5)).unwrap();
        evt.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        pause.resume();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        pause.pause(Duration::from_secs(5)).unwrap();
        running.stop(); // releases the parked loop
    }
}

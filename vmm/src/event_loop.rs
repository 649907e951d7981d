//! The device event loop: one thread running rust-vmm's `event-manager` over every fd the
//! devices care about (virtio queue eventfds, vsock sockets, console input).
//!
//! Devices register a subscriber while the VM is built; [`EventLoop::start`] moves the manager to
//! its own thread, and [`RunningEventLoop::stop`] ends it through an internal eventfd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
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
        Ok(Self {
            manager,
            stop,
            stopped,
        })
    }

    /// Adds a subscriber; its `init` runs now and registers its fds.
    pub fn add_subscriber(&mut self, subscriber: Subscriber) -> SubscriberId {
        self.manager.add_subscriber(subscriber)
    }

    /// Starts the loop on its own thread.
    pub fn start(self) -> Result<RunningEventLoop, EventLoopError> {
        let EventLoop {
            mut manager,
            stop,
            stopped,
        } = self;
        let flag = stopped.clone();
        let thread = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    // A failed wait (other than EINTR, which the manager absorbs) would spin;
                    // back off instead of burning a CPU.
                    if manager.run_with_timeout(1000).is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(RunningEventLoop {
            stop,
            stopped,
            thread: Some(thread),
        })
    }
}

/// The loop's thread; stopped (and joined) on [`RunningEventLoop::stop`] or drop.
pub struct RunningEventLoop {
    stop: EventFd,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RunningEventLoop {
    /// Stops the loop and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
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
        let running = el.start().unwrap();
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
}

//! The agent's service: one thread, one epoll, everything non-blocking.
//!
//! Sources: the control listener (ttrpc calls), the stream listener (stdio connections), an
//! eventfd the reaper pokes when children exit, control connections, stream connections waiting
//! for their header, and the fds of every process's relay. A call that cannot be answered yet
//! (WaitProcess before the exit, StartProcess before the streams) is parked on its process and
//! answered later on the same connection, so no thread ever blocks on a guest process.
//!
//! Tokens: the top four bits say what an epoll event is about, the rest is a slab index (for
//! process fds: index << 3 | relay slot).

mod calls;
mod conn;
mod containers;
pub mod listen;
mod slab;
mod streams;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_protocol::{CONTROL_PORT, STREAM_PORT};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use self::conn::{ControlConn, Input};
use self::listen::Transport;
use self::slab::Slab;
use self::streams::{Header, PendingStream};
use crate::process::relay::Io;
use crate::process::spawn::Spawner;
use crate::process::Process;
use crate::reaper::Reaper;

const KIND_SHIFT: u32 = 60;
const T_CONTROL_LISTENER: u64 = 1;
const T_STREAM_LISTENER: u64 = 2;
const T_WAKE: u64 = 3;
const T_CONN: u64 = 4;
const T_PENDING: u64 = 5;
const T_PROC: u64 = 6;

/// Bytes moved per read: large, so a busy stream costs few syscalls.
const SCRATCH: usize = 1 << 20;
/// Stream connections allowed to sit without a complete header, and for how long.
const MAX_PENDING_STREAMS: usize = 64;
const PENDING_STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long StartProcess waits for the declared streams before failing.
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn token(kind: u64, index: usize) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("create epoll")]
    Epoll(#[source] Errno),
    #[error("create eventfd")]
    EventFd(#[source] Errno),
    #[error("listen")]
    Listen(#[from] listen::ListenError),
    #[error("open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("wait for events")]
    Wait(#[source] Errno),
}

/// A call parked until it can be answered.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    conn: usize,
    serial: u64,
    stream_id: u32,
}

/// What the server does when asked to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Sync and reboot the guest (the agent is PID 1).
    Reboot,
    /// Just return from [`Server::run`] (test mode on the host).
    Exit,
}

/// A process plus the calls parked on it.
#[derive(Debug)]
struct Entry {
    process: Process,
    /// What starting it does; `None` once started (or after a failed start).
    launch: Option<Launch>,
    /// Parked WaitProcess calls.
    waiters: Vec<Waiter>,
    /// A parked StartProcess and when it gives up.
    start: Option<(Waiter, Instant)>,
}

/// What StartProcess / StartContainer does for a process.
#[derive(Debug)]
enum Launch {
    /// Run a program in the guest itself.
    Plain(crate::process::spawn::Command),
    /// Exec into a running container.
    Exec {
        container: String,
        process: Box<oci_spec::runtime::Process>,
    },
    /// Release a created container's init.
    Init { container: String },
}

pub struct Server {
    epoll: Epoll,
    transport: Transport,
    control: OwnedFd,
    streams: OwnedFd,
    /// The reaper's doorbell (registered in `epoll`; the notifier holds the other handle).
    _wake: Arc<EventFd>,
    reaper: Reaper,
    conns: Slab<ControlConn>,
    next_serial: u64,
    pending: Slab<PendingStream>,
    procs: Slab<Entry>,
    by_id: HashMap<String, usize>,
    containers: HashMap<String, containers::Entry>,
    spawner: Spawner,
    devnull: OwnedFd,
    scratch: Vec<u8>,
    on_shutdown: OnShutdown,
    shutdown: bool,
    kernel_release: String,
}

impl Server {
    /// Listens on the control and stream ports and hooks into the reaper.
    pub fn new(
        transport: Transport,
        reaper: Reaper,
        on_shutdown: OnShutdown,
    ) -> Result<Server, ServerError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(ServerError::Epoll)?;
        let control = listen::listener(&transport, CONTROL_PORT, None)?;
        let streams = listen::listener(&transport, STREAM_PORT, Some(listen::STREAM_BUFFER_SIZE))?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(ServerError::EventFd)?,
        );
        // The eventfd is a doorbell: edge-triggered, every write makes one event, and it is
        // never read (one syscall less per exit; its counter cannot overflow in practice).
        let edge = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        for (fd, kind, flags) in [
            (control.as_fd(), T_CONTROL_LISTENER, EpollFlags::EPOLLIN),
            (streams.as_fd(), T_STREAM_LISTENER, EpollFlags::EPOLLIN),
            (wake.as_fd(), T_WAKE, edge),
        ] {
            epoll
                .add(fd, EpollEvent::new(flags, token(kind, 0)))
                .map_err(ServerError::Epoll)?;
        }
        let poke = wake.clone();
        reaper.set_notifier(Arc::new(move || {
            let _ = poke.write(1);
        }));
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(ServerError::DevNull)?
            .into();
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Server {
            epoll,
            transport,
            control,
            streams,
            _wake: wake,
            reaper,
            conns: Slab::default(),
            next_serial: 0,
            pending: Slab::default(),
            procs: Slab::default(),
            by_id: HashMap::new(),
            containers: HashMap::new(),
            spawner: Spawner::default(),
            devnull,
            scratch: vec![0; SCRATCH],
            on_shutdown,
            shutdown: false,
            kernel_release,
        })
    }

    /// Serves until a Shutdown call has been answered; returns what to do next.
    pub fn run(mut self) -> Result<OnShutdown, ServerError> {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let timeout = self.next_timeout();
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ServerError::Wait(e)),
            };
            for event in &events[..n] {
                self.dispatch(event.data(), event.events());
            }
            self.expire(Instant::now());
            if self.shutdown && self.conns.keys().iter().all(|&c| !self.conn_has_output(c)) {
                if self.on_shutdown == OnShutdown::Exit {
                    // On the host nothing ends with us as it does with a VM: take the
                    // containers down first, so none outlives the agent.
                    self.remove_all_containers();
                }
                listen::cleanup(&self.transport, &[CONTROL_PORT, STREAM_PORT]);
                return Ok(self.on_shutdown);
            }
        }
    }

    fn conn_has_output(&self, c: usize) -> bool {
        self.conns.get(c).is_some_and(ControlConn::has_output)
    }

    fn dispatch(&mut self, data: u64, events: EpollFlags) {
        let index = (data & ((1 << KIND_SHIFT) - 1)) as usize;
        match data >> KIND_SHIFT {
            T_CONTROL_LISTENER => self.accept_control(),
            T_STREAM_LISTENER => self.accept_streams(),
            T_WAKE => self.reap(),
            T_CONN => self.on_conn(index, events),
            T_PENDING => self.on_pending(index),
            T_PROC => self.on_proc(index >> 3, index & 7, events),
            _ => {}
        }
    }

    /// Accepts one connection per event: the listener is level-triggered, so a second waiting
    /// connection is reported again, and the usual lone one costs no extra `accept4` that
    /// would only say EAGAIN.
    fn accept_control(&mut self) {
        if let Ok(Some(fd)) = listen::accept(&self.control) {
            self.next_serial += 1;
            let i = self.conns.insert(ControlConn::new(fd, self.next_serial));
            if let Some(c) = self.conns.get_mut(i) {
                c.sync(&self.epoll, token(T_CONN, i));
            }
        }
    }

    fn accept_streams(&mut self) {
        if let Ok(Some(fd)) = listen::accept(&self.streams) {
            if self.pending.len() >= MAX_PENDING_STREAMS {
                // Whoever floods the port loses its oldest half-open connection.
                if let Some(oldest) = self
                    .pending
                    .keys()
                    .into_iter()
                    .min_by_key(|&i| self.pending.get(i).map(|p| p.since))
                {
                    if let Some(p) = self.pending.remove(oldest) {
                        p.close(&self.epoll);
                    }
                }
            }
            let i = self.pending.insert(PendingStream::new(fd));
            if let Some(p) = self.pending.get_mut(i) {
                if p.arm(&self.epoll, token(T_PENDING, i), true).is_err() {
                    self.pending.remove(i);
                }
            }
        }
    }

    fn on_conn(&mut self, i: usize, events: EpollFlags) {
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        let mut alive = true;
        if events.contains(EpollFlags::EPOLLOUT) {
            alive = conn.flush();
        }
        if alive
            && events.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR)
        {
            match conn.read(&mut self.scratch) {
                Input::Frames(frames) => {
                    let serial = conn.serial;
                    for frame in frames {
                        self.handle_frame(i, serial, &frame);
                    }
                }
                Input::Closed => alive = false,
                Input::Broken(e) => {
                    crate::log(&format!("control connection dropped: {e}"));
                    alive = false;
                }
            }
        }
        let Some(conn) = self.conns.get_mut(i) else {
            return;
        };
        if alive && conn.flush() {
            conn.sync(&self.epoll, token(T_CONN, i));
        } else if let Some(conn) = self.conns.remove(i) {
            conn.close(&self.epoll);
        }
    }

    /// Queues an encoded response on a connection (if it is still the same one) and writes it.
    fn respond(&mut self, w: Waiter, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(w.conn) else {
            return;
        };
        if conn.serial != w.serial {
            return;
        }
        conn.queue(bytes);
        if conn.flush() {
            conn.sync(&self.epoll, token(T_CONN, w.conn));
        } else if let Some(conn) = self.conns.remove(w.conn) {
            conn.close(&self.epoll);
        }
    }

    fn on_pending(&mut self, i: usize) {
        let Some(p) = self.pending.get_mut(i) else {
            return;
        };
        // Registered one-shot: the event that brought us here disarmed it.
        p.armed = false;
        match p.read() {
            Header::Incomplete => {
                if p.arm(&self.epoll, token(T_PENDING, i), false).is_err() {
                    self.pending.remove(i);
                }
            }
            Header::Bad(why) => {
                if let Some(why) = why {
                    crate::log(&format!("stream connection refused: {why}"));
                }
                if let Some(p) = self.pending.remove(i) {
                    p.close(&self.epoll);
                }
            }
            Header::Done(header, rest) => {
                if let Some(p) = self.pending.remove(i) {
                    // Stays in the epoll set, disarmed, until its relay needs it.
                    self.attach_stream(header, p.fd, &rest);
                }
            }
        }
    }

    fn on_proc(&mut self, i: usize, slot: usize, events: EpollFlags) {
        let Some(entry) = self.procs.get_mut(i) else {
            return;
        };
        let mut io = Io {
            epoll: &self.epoll,
            scratch: &mut self.scratch,
        };
        entry.process.relay.on_event(slot, events, &mut io);
        entry.process.relay.sync(&self.epoll, token(T_PROC, i << 3));
        self.report_exit(i);
    }

    /// Collects exits from the reaper for every running process.
    fn reap(&mut self) {
        for i in self.procs.keys() {
            let Some(entry) = self.procs.get_mut(i) else {
                continue;
            };
            let pid = match entry.process.state {
                crate::process::State::Running(pid) => pid,
                crate::process::State::Created(Some(pid)) => pid,
                _ => continue,
            };
            let Some(status) = self.reaper.try_wait(pid) else {
                continue;
            };
            entry.process.state = crate::process::State::Exited(pid, status);
            let mut io = Io {
                epoll: &self.epoll,
                scratch: &mut self.scratch,
            };
            entry.process.relay.begin_drain(&mut io);
            entry.process.relay.sync(&self.epoll, token(T_PROC, i << 3));
            self.report_exit(i);
        }
    }

    /// Earliest deadline of a parked start, a half-open stream or a batched output pipe.
    fn next_timeout(&self) -> EpollTimeout {
        let now = Instant::now();
        let starts = self.procs.keys().into_iter().filter_map(|i| {
            let e = self.procs.get(i)?;
            let start = e.start.map(|s| s.1);
            match (start, e.process.relay.deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        });
        let streams = self.pending.keys().into_iter().filter_map(|i| {
            self.pending
                .get(i)
                .map(|p| p.since + PENDING_STREAM_TIMEOUT)
        });
        match starts.chain(streams).min() {
            None => EpollTimeout::NONE,
            Some(t) => {
                // Rounded up: waking before the deadline would only wait again.
                let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
                EpollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(EpollTimeout::NONE)
            }
        }
    }

    /// Reads batched output pipes that are due, fails parked starts and drops half-open
    /// streams that waited too long.
    fn expire(&mut self, now: Instant) {
        for i in self.procs.keys() {
            let Some(entry) = self.procs.get_mut(i) else {
                continue;
            };
            if entry.process.relay.deadline().is_some_and(|t| t <= now) {
                let mut io = Io {
                    epoll: &self.epoll,
                    scratch: &mut self.scratch,
                };
                entry.process.relay.on_timer(now, &mut io);
                entry.process.relay.sync(&self.epoll, token(T_PROC, i << 3));
                self.report_exit(i);
            }
        }
        for i in self.pending.keys() {
            let old = self
                .pending
                .get(i)
                .is_some_and(|p| now >= p.since + PENDING_STREAM_TIMEOUT);
            if old {
                if let Some(p) = self.pending.remove(i) {
                    p.close(&self.epoll);
                }
            }
        }
        for i in self.procs.keys() {
            let expired = self
                .procs
                .get(i)
                .and_then(|e| e.start)
                .filter(|(_, deadline)| now >= *deadline);
            if let Some((w, _)) = expired {
                if let Some(e) = self.procs.get_mut(i) {
                    e.start = None;
                }
                self.fail(
                    w,
                    bulkhead_protocol::rpc::Code::DeadlineExceeded,
                    format!(
                        "stdio streams not attached within {}s",
                        START_TIMEOUT.as_secs()
                    ),
                );
            }
        }
    }
}

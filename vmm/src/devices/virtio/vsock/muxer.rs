//! The vsock backend: routes guest packets to connections and host events to the guest.
//!
//! It owns the host listener, the connections (keyed by host port and guest port), host
//! streams still sending their `CONNECT` line, and connections whose guest side is gone but
//! whose host reader has not taken everything yet. Everything runs on the event loop thread;
//! host streams are registered edge-triggered, and each connection keeps its own "maybe
//! readable" flag, so a stream the guest has no credit for simply stays unread.
//!
//! Packets for the guest are produced lazily: [`Muxer::fill_rx`] is called with an RX buffer
//! in hand and picks the next connection from a round-robin ready queue, so nothing is ever
//! queued on our side except one flag set per connection and a bounded list of RSTs.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events};
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::connection::{rst_reply, ConnKey, Connection, Verdict};
use super::metrics::{add, VsockMetrics};
use super::packet::{
    Header, RxBuffer, TxPacket, HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RST, TYPE_STREAM,
};
use super::unix::{self, Listener, UnixError};
use super::VsockConfig;

/// First host port handed to host-initiated connections (Firecracker's range, far from the
/// ports guests listen on).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// RSTs we hold for the guest when it gives us no RX buffers; more are dropped.
const MAX_PENDING_RSTS: usize = 256;
/// How long the host listener rests after an accept error (out of fds, out of memory): the
/// pending connection keeps the listener readable, so without a rest the loop would wake at
/// once, again and again, for as long as the error lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

/// What a registered fd belongs to.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Handshake,
    Conn(ConnKey),
    Draining,
}

/// The backend.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    buf_alloc: u32,
    max_conns: usize,
    listener: Listener,
    /// Whether the listener is watched (not resting after an accept error).
    listening: bool,
    /// Ends a rest of the listener ([`ACCEPT_BACKOFF`]).
    accept_rest: TimerFd,
    owners: HashMap<RawFd, Owner>,
    handshakes: HashMap<RawFd, UnixStream>,
    conns: HashMap<ConnKey, Connection>,
    draining: HashMap<RawFd, Connection>,
    ready: VecDeque<ConnKey>,
    rsts: VecDeque<Header>,
    next_local_port: u32,
    metrics: Arc<VsockMetrics>,
}

impl Muxer {
    /// Binds the host socket.
    pub fn new(config: &VsockConfig, metrics: Arc<VsockMetrics>) -> Result<Self, UnixError> {
        Ok(Self {
            guest_cid: config.guest_cid,
            buf_alloc: config.buf_alloc,
            max_conns: config.max_connections,
            listener: Listener::bind(&config.uds_path)?,
            listening: false,
            accept_rest: TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map_err(|e| UnixError::Io(e.into()))?,
            owners: HashMap::new(),
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            draining: HashMap::new(),
            ready: VecDeque::new(),
            rsts: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            metrics,
        })
    }

    /// Registers the listener and its rest timer with the event loop.
    pub fn init(&mut self, ops: &mut EventOps) {
        let timer = Events::new_raw(self.accept_rest.as_fd().as_raw_fd(), EventSet::IN);
        if let Err(e) = ops.add(timer) {
            tracing::error!("vsock: cannot watch the accept timer: {e}");
        }
        self.listen(ops);
    }

    /// Watches the listener again (after a rest, or for the first time).
    fn listen(&mut self, ops: &mut EventOps) {
        if self.listening {
            return;
        }
        match ops.add(Events::new(&self.listener, EventSet::IN)) {
            Ok(()) => self.listening = true,
            Err(e) => {
                tracing::error!("vsock: cannot watch the host socket: {e}");
                self.rest_timer();
            }
        }
    }

    /// Stops watching the listener for [`ACCEPT_BACKOFF`].
    fn rest(&mut self, ops: &mut EventOps) {
        if self.listening
            && ops
                .remove(Events::new(&self.listener, EventSet::IN))
                .is_ok()
        {
            self.listening = false;
        }
        self.rest_timer();
    }

    fn rest_timer(&self) {
        let rest = Expiration::OneShot(ACCEPT_BACKOFF.into());
        if let Err(e) = self.accept_rest.set(rest, TimerSetTimeFlags::empty()) {
            tracing::warn!("vsock: cannot arm the accept timer: {e}");
        }
    }

    /// Connections of every kind, for the cap.
    fn count(&self) -> usize {
        self.conns.len() + self.handshakes.len() + self.draining.len()
    }

    /// Open connections (established or connecting).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether nothing is left to say to the guest: no connection of any kind (open,
    /// handshaking, draining) and no RST owed.
    pub fn is_idle(&self) -> bool {
        self.count() == 0 && self.rsts.is_empty()
    }

    /// Guest → host bytes buffered because host readers are slow, over all connections.
    pub fn buffered(&self) -> usize {
        self.conns
            .values()
            .chain(self.draining.values())
            .map(Connection::buffered)
            .sum()
    }

    /// Handles an event on one of our fds; returns false if the fd is not ours.
    pub fn on_event(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) -> bool {
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return true;
        }
        if fd == self.accept_rest.as_fd().as_raw_fd() {
            // Non-blocking: a timer re-armed after it fired just reads EAGAIN.
            let _ = self.accept_rest.wait();
            self.listen(ops);
            self.accept(ops);
            return true;
        }
        match self.owners.get(&fd).copied() {
            Some(Owner::Handshake) => self.handshake(fd, ops),
            Some(Owner::Conn(key)) => {
                let verdict = match self.conns.get_mut(&key) {
                    // READ_HANG_UP: the host shut down its writing side (we read EOF);
                    // HANG_UP: it closed both ways.
                    Some(c) => c.on_host_event(
                        set.intersects(EventSet::IN | EventSet::READ_HANG_UP),
                        set.contains(EventSet::OUT),
                        set.contains(EventSet::HANG_UP),
                        set.contains(EventSet::ERROR),
                    ),
                    None => return true,
                };
                self.apply(key, verdict, ops);
            }
            Some(Owner::Draining) => {
                let done = set.intersects(EventSet::ERROR | EventSet::HANG_UP)
                    || self.draining.get_mut(&fd).is_none_or(Connection::drain);
                if done {
                    if let Some(c) = self.draining.remove(&fd) {
                        self.forget(c.stream(), ops);
                    }
                }
            }
            None => return false,
        }
        true
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(
                        "vsock: accept failed: {e}; the host socket rests for {}ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.rest(ops);
                    return;
                }
            };
            if self.count() >= self.max_conns {
                tracing::warn!("vsock: connection limit reached, refusing a host connection");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = ops.add(Events::new(&stream, stream_events())) {
                tracing::warn!("vsock: cannot watch a host connection: {e}");
                continue;
            }
            self.owners.insert(fd, Owner::Handshake);
            self.handshakes.insert(fd, stream);
            // The line may already be there; an edge-triggered watch would not tell us again.
            self.handshake(fd, ops);
        }
    }

    fn handshake(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(stream) = self.handshakes.get(&fd) else {
            return;
        };
        let port = match unix::read_connect_line(stream) {
            Ok(None) => return,
            Ok(Some(port)) => Some(port),
            Err(e) => {
                tracing::debug!("vsock: dropping host connection: {e}");
                None
            }
        };
        let Some(stream) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port else {
            self.forget(&stream, ops);
            return;
        };
        let key = ConnKey {
            local_port: self.alloc_local_port(peer_port),
            peer_port,
        };
        self.owners.insert(fd, Owner::Conn(key));
        self.conns
            .insert(key, Connection::host_initiated(key, stream, self.buf_alloc));
        add(&self.metrics.conns_opened, 1);
        self.enqueue(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most `conns.len()` ports are taken, so this ends.
            if !self.conns.contains_key(&ConnKey {
                local_port: port,
                peer_port,
            }) {
                return port;
            }
        }
    }

    /// Handles one packet from the guest's TX queue.
    pub fn on_guest_packet(&mut self, pkt: &mut TxPacket<'_>, ops: &mut EventOps) {
        let hdr = pkt.hdr;
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!("vsock: dropping packet {}->{}", hdr.src_cid, hdr.dst_cid);
            add(&self.metrics.dropped_packets, 1);
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.reply_rst(&hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op == OP_REQUEST {
                self.guest_connect(key, &hdr, ops);
            } else {
                self.reply_rst(&hdr);
            }
            return;
        };
        let verdict = if hdr.op == OP_REQUEST {
            // A second REQUEST for a live key: the guest lost track; start over cleanly.
            Verdict::Reset
        } else {
            conn.on_guest_packet(&hdr, &mut pkt.data)
        };
        self.apply(key, verdict, ops);
    }

    fn guest_connect(&mut self, key: ConnKey, req: &Header, ops: &mut EventOps) {
        if self.count() >= self.max_conns {
            tracing::warn!(
                "vsock: connection limit reached, refusing guest port {}",
                key.peer_port
            );
            self.reply_rst(req);
            return;
        }
        let stream = match unix::connect_port(self.listener.path(), key.local_port) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    "vsock: guest connect to port {} refused: {e}",
                    key.local_port
                );
                self.reply_rst(req);
                return;
            }
        };
        if let Err(e) = ops.add(Events::new(&stream, stream_events())) {
            tracing::warn!("vsock: cannot watch a host connection: {e}");
            self.reply_rst(req);
            return;
        }
        self.owners.insert(stream.as_raw_fd(), Owner::Conn(key));
        self.conns.insert(
            key,
            Connection::guest_initiated(key, stream, self.buf_alloc, req),
        );
        add(&self.metrics.conns_opened, 1);
        self.enqueue(key);
    }

    fn reply_rst(&mut self, hdr: &Header) {
        if hdr.op != OP_RST {
            self.push_rst(rst_reply(hdr));
        }
    }

    fn push_rst(&mut self, rst: Header) {
        if self.rsts.len() < MAX_PENDING_RSTS {
            self.rsts.push_back(rst);
        } else {
            tracing::debug!("vsock: RST queue full, dropping one");
        }
    }

    fn enqueue(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued && c.has_work() {
                c.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict, ops: &mut EventOps) {
        match verdict {
            Verdict::Keep => self.enqueue(key),
            Verdict::Close | Verdict::Reset | Verdict::Drain => {
                let Some(conn) = self.conns.remove(&key) else {
                    return;
                };
                add(&self.metrics.conns_closed, 1);
                if verdict == Verdict::Reset {
                    self.push_rst(conn.rst_header(self.guest_cid));
                }
                if verdict == Verdict::Drain {
                    let fd = conn.stream().as_raw_fd();
                    self.owners.insert(fd, Owner::Draining);
                    self.draining.insert(fd, conn);
                } else {
                    self.forget(conn.stream(), ops);
                }
            }
        }
    }

    /// Stops watching a host stream; the caller drops (closes) it afterwards.
    fn forget(&mut self, stream: &UnixStream, ops: &mut EventOps) {
        let fd = stream.as_raw_fd();
        self.owners.remove(&fd);
        if let Err(e) = ops.remove(Events::empty(stream)) {
            tracing::warn!("vsock: cannot unwatch a host stream: {e}");
        }
    }

    /// True if a packet for the guest may be ready.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.ready.is_empty()
    }

    /// Writes the next packet for the guest into `buf`; returns its header, or `None` if there
    /// was nothing to send after all.
    pub fn fill_rx(&mut self, buf: &RxBuffer<'_>, ops: &mut EventOps) -> Option<Header> {
        // Each queued connection gets one chance per call, so a connection that turns out to
        // have nothing cannot spin here.
        let mut rounds = self.ready.len() + 1;
        loop {
            if let Some(rst) = self.rsts.pop_front() {
                buf.finish(&rst).ok()?;
                add(&self.metrics.resets_sent, 1);
                return Some(rst);
            }
            if rounds == 0 {
                return None;
            }
            rounds -= 1;
            let key = self.ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let fill = conn.fill(buf, self.guest_cid);
            self.apply(key, fill.verdict, ops);
            if let Some(hdr) = fill.sent {
                add(&self.metrics.rx_bytes, u64::from(hdr.len));
                if hdr.op == OP_CREDIT_UPDATE {
                    add(&self.metrics.credit_updates, 1);
                }
                return Some(hdr);
            }
        }
    }

    /// Drops every connection (the driver reset the device, so the guest's sockets are gone).
    pub fn reset(&mut self, ops: &mut EventOps) {
        let streams: Vec<UnixStream> = self.handshakes.drain().map(|(_, s)| s).collect();
        for s in &streams {
            self.forget(s, ops);
        }
        let conns: Vec<Connection> = self
            .conns
            .drain()
            .map(|(_, c)| c)
            .chain(self.draining.drain().map(|(_, c)| c))
            .collect();
        add(&self.metrics.conns_closed, conns.len() as u64);
        for c in &conns {
            self.forget(c.stream(), ops);
        }
        self.ready.clear();
        self.rsts.clear();
    }
}

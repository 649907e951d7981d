//! The virtio-vsock device: three queues (RX, TX, event), driven from the event loop.
//!
//! The device is shared as `Arc<Mutex<VsockDevice>>` between its transport (vCPU threads:
//! config reads, activation, reset) and the event manager (everything else). Activation and
//! reset only flip state and write `ctl_event`; all fd (de)registration happens on the event
//! loop thread, where `EventOps` is available.
//!
//! Per wake-up the device drains every available TX chain and fills as many RX buffers as it
//! has packets for, then raises at most one interrupt. With EVENT_IDX it asks for TX kicks only
//! after it caught up, and for RX kicks only when it ran out of buffers while holding data, so
//! a busy stream costs few exits.
//!
//! TX chains are consumed at once but *returned* lazily: the driver needs them back only to
//! free memory, and an interrupt is the most expensive thing we can do to a guest whose kernel
//! is emulated. Consumed heads are held until an interrupt is raised anyway (an RX packet,
//! e.g. the credit update a sending guest soon needs), until a quarter of the ring is held, or
//! until [`TX_RETURN_DELAY`] passes. Holding buffers longer is always allowed to a device; the
//! spec's interrupt rules apply from the moment they are returned.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::{add, VsockMetrics};
use super::muxer::Muxer;
use super::packet::{used_len, RxBuffer, TxPacket};
use super::unix::UnixError;
use super::{VsockConfig, QUEUE_SIZE};
use crate::devices::virtio::mmio::QueuePosition;
use crate::devices::virtio::{
    chain, drain_event, needs_interrupt, pop_avail, unpop_avail, ActivateError, GuestMemoryMmap,
    Interrupt, QueueError, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_INDIRECT_DESC,
    FEATURE_VERSION_1,
};

const RX: usize = 0;
const TX: usize = 1;
const EVQ: usize = 2;
const NUM_QUEUES: usize = 3;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest must reset its connections and re-read
/// the CID (virtio 1.2, 5.10.6.7).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Longest we hold consumed TX chains before returning them (see the module docs). Long on
/// purpose: on a PVM host a guest sends one 64 KiB packet every few hundred ms, and any shorter
/// delay would return each packet with an interrupt of its own. Linux only frees memory when
/// it gets them back, and at most a quarter of the ring is ever held.
pub const TX_RETURN_DELAY: Duration = Duration::from_secs(5);

/// Longest we hold packets for the guest after sending a transport-reset event. Linux handles
/// the event (resetting every connected socket, the new ones too) and then refills the event
/// queue and kicks it; until that kick, a connection request we deliver could be accepted and
/// then reset by the event, leaving the host peer waiting for an answer that never comes. The
/// kick normally arrives within milliseconds; this bounds the wait for a driver that never
/// kicks.
pub const RESET_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The TX completion timer could not be created.
    #[error("cannot create a timerfd")]
    Timer(#[source] nix::Error),
    /// The host socket could not be set up.
    #[error(transparent)]
    Unix(#[from] UnixError),
    /// The CID is reserved (0-2 and `u32::MAX` are not guest CIDs).
    #[error("invalid guest cid {0}")]
    InvalidCid(u64),
    /// Saved device state that does not fit (or is corrupt).
    #[error("saved vsock state does not fit the device: {0}")]
    BadState(&'static str),
}

/// The device's own state in a snapshot (its transport saves the rest). Connections are not
/// carried over: a restored device tells the guest with a transport-reset event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// Per queue (RX, TX, event), where the device stood; empty if no driver ran it.
    pub queues: Vec<QueuePosition>,
    /// Consumed TX chains not yet returned to the driver.
    pub held_tx: Vec<u16>,
    /// Queues the driver had broken.
    pub broken: Vec<bool>,
}

/// State that exists only while a driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    broken: [bool; NUM_QUEUES],
    used: [bool; NUM_QUEUES],
    /// Consumed TX heads not yet returned to the driver.
    held_tx: Vec<u16>,
    interrupt: Arc<Interrupt>,
    indirect: bool,
}

impl Active {
    /// Returns every held TX chain to the driver.
    fn return_tx(&mut self, metrics: &VsockMetrics) {
        for i in 0..self.held_tx.len() {
            let head = self.held_tx[i];
            if let Err(e) = self.queues[TX].add_used(&self.mem, head, 0) {
                self.held_tx.clear();
                return self.break_queue(TX, &QueueError::Ring(e), metrics);
            }
            self.used[TX] = true;
        }
        self.held_tx.clear();
    }

    fn break_queue(&mut self, index: usize, err: &QueueError, metrics: &VsockMetrics) {
        tracing::warn!("vsock: queue {index} is broken: {err}");
        self.broken[index] = true;
        add(&metrics.queue_errors, 1);
        self.interrupt.set_needs_reset();
    }

    fn parse_chain(&self, index: usize, head: u16) -> Result<chain::Chain, QueueError> {
        let q = &self.queues[index];
        Ok(chain::parse(
            &self.mem,
            GuestAddress(q.desc_table()),
            q.size(),
            head,
            self.indirect,
        )?)
    }
}

/// The device.
pub struct VsockDevice {
    guest_cid: u64,
    queue_sizes: [u16; NUM_QUEUES],
    queue_events: Vec<EventFd>,
    ctl_event: EventFd,
    tx_timer: TimerFd,
    muxer: Muxer,
    active: Option<Active>,
    reset_pending: bool,
    /// A transport-reset event to send once the guest offers an event buffer (after a restore).
    transport_reset_pending: bool,
    /// The reset event is out but the guest has not handled it yet: packets for the guest wait,
    /// or a host connection accepted now would be reset by it (see [`RESET_ACK_TIMEOUT`]).
    awaiting_reset_ack: bool,
    metrics: Arc<VsockMetrics>,
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("guest_cid", &self.guest_cid)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl VsockDevice {
    /// Creates the device and binds its host socket.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid <= 2 || config.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::EventFd);
        let queue_events = vec![evt()?, evt()?, evt()?];
        let metrics = Arc::new(VsockMetrics::default());
        Ok(Self {
            guest_cid: config.guest_cid,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_events,
            ctl_event: evt()?,
            tx_timer: TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map_err(VsockError::Timer)?,
            muxer: Muxer::new(config, metrics.clone())?,
            active: None,
            reset_pending: false,
            transport_reset_pending: false,
            awaiting_reset_ack: false,
            metrics,
        })
    }

    /// The device's state for a snapshot; called with the event loop paused.
    pub fn save_state(&self) -> VsockState {
        match &self.active {
            None => VsockState::default(),
            Some(a) => VsockState {
                queues: a.queues.iter().map(QueuePosition::of).collect(),
                held_tx: a.held_tx.clone(),
                broken: a.broken.to_vec(),
            },
        }
    }

    /// Finishes a restore after the transport re-activated the device at its saved queue
    /// positions: takes back the TX chains held at snapshot time (returned with the next
    /// interrupt) and queues a transport-reset event, so the guest resets the connections it
    /// had (their host ends are gone) and re-reads its CID; its listening sockets stay.
    pub fn resume_from_snapshot(&mut self, state: &VsockState) -> Result<(), VsockError> {
        if let Some(active) = self.active.as_mut() {
            let tx_size = active.queues[TX].size();
            if state.held_tx.len() > usize::from(tx_size)
                || state.held_tx.iter().any(|&h| h >= tx_size)
            {
                return Err(VsockError::BadState("held tx chains"));
            }
            if state.broken.len() != NUM_QUEUES {
                return Err(VsockError::BadState("queue flags"));
            }
            active.held_tx = state.held_tx.clone();
            for (b, saved) in active.broken.iter_mut().zip(&state.broken) {
                *b = *saved;
            }
            self.transport_reset_pending = true;
            // The held chains go back on the TX timer, as they would have in the template: a
            // new packet arms it only when nothing is held, so without this they (and every
            // chain after them) would wait for a quarter of the queue to fill.
            if !active.held_tx.is_empty() {
                let delay = Expiration::OneShot(TimeSpec::from_duration(TX_RETURN_DELAY));
                self.tx_timer
                    .set(delay, TimerSetTimeFlags::empty())
                    .map_err(|e| VsockError::EventFd(e.into()))?;
            }
        } else if !state.held_tx.is_empty() || !state.queues.is_empty() {
            return Err(VsockError::BadState("queue state for an inactive device"));
        }
        if self.active.is_some() {
            // TX as if kicked: a kick is an eventfd count, not state, so one the guest made
            // after the device loop paused for the snapshot is in no snapshot. With EVENT_IDX
            // the guest then never kicks TX again (its later packets are past the index it
            // was asked to kick at): every clone of that template stayed silent, its answers
            // to the host's connection requests unread.
            self.queue_events[TX]
                .write(1)
                .map_err(VsockError::EventFd)?;
        }
        self.ctl_event.write(1).map_err(VsockError::EventFd)
    }

    /// Sends a pending transport-reset event if the guest has an event buffer for it.
    fn send_transport_reset(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !self.transport_reset_pending || active.broken[EVQ] {
            return;
        }
        let head = match pop_avail(&mut active.queues[EVQ], &active.mem) {
            Ok(Some(h)) => h,
            // No buffer yet: the guest's next event-queue notification brings us back.
            Ok(None) => return,
            Err(e) => return active.break_queue(EVQ, &e, &self.metrics),
        };
        let chain = match active.parse_chain(EVQ, head) {
            Ok(c) => c,
            Err(e) => return active.break_queue(EVQ, &e, &self.metrics),
        };
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let used = match chain.writable().write_at(&active.mem, 0, &event) {
            Ok(()) => event.len() as u32,
            Err(e) => {
                tracing::debug!("vsock: event buffer too small: {e}");
                0
            }
        };
        if let Err(e) = active.queues[EVQ].add_used(&active.mem, head, used) {
            return active.break_queue(EVQ, &QueueError::Ring(e), &self.metrics);
        }
        active.used[EVQ] = true;
        // A guest that offers no room for 4 bytes does not get the event at all.
        self.transport_reset_pending = false;
        if used > 0 && ask_for_refill_kick(&active.queues[EVQ], &active.mem) {
            self.awaiting_reset_ack = true;
            let delay = Expiration::OneShot(TimeSpec::from_duration(RESET_ACK_TIMEOUT));
            if let Err(e) = self.tx_timer.set(delay, TimerSetTimeFlags::empty()) {
                tracing::warn!("vsock: cannot arm the reset timer: {e}");
                self.awaiting_reset_ack = false;
            }
        }
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Whether a driver is running the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    /// Whether the device has no connection of any kind and owes the guest nothing: after the
    /// host closed its connections, this turns true once the guest has answered the closes.
    pub fn is_idle(&self) -> bool {
        self.muxer.is_idle()
    }

    /// Guest → host bytes waiting for slow host readers (bounded by `buf_alloc` each).
    pub fn buffered_bytes(&self) -> usize {
        self.muxer.buffered()
    }

    fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken[TX] {
            return;
        }
        loop {
            loop {
                let head = match pop_avail(&mut active.queues[TX], &active.mem) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return active.break_queue(TX, &e, &self.metrics),
                };
                let chain = match active.parse_chain(TX, head) {
                    Ok(c) => c,
                    Err(e) => return active.break_queue(TX, &e, &self.metrics),
                };
                match TxPacket::parse(&active.mem, &chain) {
                    Ok(mut pkt) => {
                        add(&self.metrics.tx_packets, 1);
                        add(&self.metrics.tx_bytes, u64::from(pkt.hdr.len));
                        self.muxer.on_guest_packet(&mut pkt, ops);
                    }
                    Err(e) => {
                        tracing::debug!("vsock: dropping TX packet: {e}");
                        add(&self.metrics.dropped_packets, 1);
                    }
                }
                // While the reset's acknowledgement is awaited the timer is set for that,
                // sooner; when it fires it returns the held chains too.
                if active.held_tx.is_empty() && !self.awaiting_reset_ack {
                    let delay = Expiration::OneShot(TimeSpec::from_duration(TX_RETURN_DELAY));
                    if let Err(e) = self.tx_timer.set(delay, TimerSetTimeFlags::empty()) {
                        tracing::warn!("vsock: cannot arm the TX timer: {e}");
                    }
                }
                active.held_tx.push(head);
                if active.held_tx.len() >= usize::from(active.queues[TX].size() / 4).max(1) {
                    active.return_tx(&self.metrics);
                }
            }
            match active.queues[TX].enable_notification(&active.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return active.break_queue(TX, &QueueError::Ring(e), &self.metrics),
            }
        }
    }

    fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken[RX] || self.awaiting_reset_ack || !self.muxer.has_rx_work() {
            return;
        }
        if let Err(e) = active.queues[RX].disable_notification(&active.mem) {
            return active.break_queue(RX, &QueueError::Ring(e), &self.metrics);
        }
        while self.muxer.has_rx_work() {
            let head = match pop_avail(&mut active.queues[RX], &active.mem) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    // Out of buffers while holding packets: ask for a kick on the next one.
                    match active.queues[RX].enable_notification(&active.mem) {
                        Ok(true) => continue,
                        Ok(false) => return,
                        Err(e) => {
                            return active.break_queue(RX, &QueueError::Ring(e), &self.metrics)
                        }
                    }
                }
                Err(e) => return active.break_queue(RX, &e, &self.metrics),
            };
            let chain = match active.parse_chain(RX, head) {
                Ok(c) => c,
                Err(e) => return active.break_queue(RX, &e, &self.metrics),
            };
            let used = match RxBuffer::new(&active.mem, &chain) {
                Ok(buf) => match self.muxer.fill_rx(&buf, ops) {
                    Some(hdr) => {
                        add(&self.metrics.rx_packets, 1);
                        used_len(&hdr)
                    }
                    None => {
                        unpop_avail(&mut active.queues[RX]);
                        return;
                    }
                },
                Err(e) => {
                    tracing::debug!("vsock: dropping RX buffer: {e}");
                    add(&self.metrics.dropped_packets, 1);
                    0
                }
            };
            if let Err(e) = active.queues[RX].add_used(&active.mem, head, used) {
                return active.break_queue(RX, &QueueError::Ring(e), &self.metrics);
            }
            active.used[RX] = true;
        }
    }

    /// Raises one interrupt for everything used since the last call, if the driver wants it.
    /// When RX needs an interrupt anyway, held TX chains are returned with it.
    fn signal_used(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut raise = false;
        for i in [RX, TX, EVQ] {
            if i == TX && raise && !active.held_tx.is_empty() {
                active.return_tx(&self.metrics);
            }
            if !std::mem::take(&mut active.used[i]) || active.broken[i] {
                continue;
            }
            match needs_interrupt(&mut active.queues[i], &active.mem) {
                Ok(n) => raise |= n,
                Err(e) => active.break_queue(i, &e, &self.metrics),
            }
        }
        if raise {
            add(&self.metrics.interrupts, 1);
            if let Err(e) = active.interrupt.signal_used() {
                tracing::warn!("vsock: cannot raise interrupt: {e}");
            }
        }
    }

    /// Applies a reset the transport requested, before anything else touches the muxer, so a
    /// driver that comes back quickly never sees connections of its previous life.
    fn finish_reset(&mut self, ops: &mut EventOps) {
        if std::mem::take(&mut self.reset_pending) {
            self.muxer.reset(ops);
        }
    }
}

/// Asks the driver to kick `queue` when it next adds a buffer (its acknowledgement of the
/// event just used): with EVENT_IDX, `avail_event` must name the available index the driver
/// will publish next. virtio-queue's `enable_notification` names the next one the device will
/// read, which on an event queue the driver keeps full lies far behind, so no kick would come.
/// Returns false if the kick cannot be asked for (then the caller does not wait for it).
fn ask_for_refill_kick(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    use std::sync::atomic::Ordering;
    use vm_memory::Bytes;
    if !queue.event_idx_enabled() {
        return true;
    }
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
        return false;
    };
    // struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[size]; le16 avail_event; }
    let at = queue
        .used_ring()
        .checked_add(4 + 8 * u64::from(queue.size()));
    at.is_some_and(|at| mem.write_obj(avail.0.to_le(), GuestAddress(at)).is_ok())
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        tracing::info!(metrics = ?self.metrics.snapshot(), "vsock: device closed");
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        // No INDIRECT_DESC: Linux would then allocate an indirect table for every two-buffer
        // packet, which is pure guest-kernel work.
        FEATURE_VERSION_1 | FEATURE_EVENT_IDX
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        crate::devices::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        self.active = Some(Active {
            mem,
            queues,
            broken: [false; NUM_QUEUES],
            used: [false; NUM_QUEUES],
            held_tx: Vec::new(),
            interrupt,
            indirect: features & FEATURE_INDIRECT_DESC != 0,
        });
        // Host connections may have queued packets before the driver came up.
        self.ctl_event.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        self.transport_reset_pending = false;
        self.awaiting_reset_ack = false;
        if self.active.take().is_some() {
            // The guest's sockets are gone; close the host ends on the event loop.
            self.reset_pending = true;
            if let Err(e) = self.ctl_event.write(1) {
                tracing::warn!("vsock: cannot signal reset: {e}");
            }
        }
    }
}

impl MutEventSubscriber for VsockDevice {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![
            Events::new(&self.ctl_event, EventSet::IN),
            Events::new_raw(self.tx_timer.as_fd().as_raw_fd(), EventSet::IN),
        ];
        fds.extend(
            self.queue_events
                .iter()
                .map(|e| Events::new(e, EventSet::IN)),
        );
        for events in fds {
            if let Err(e) = ops.add(events) {
                tracing::error!("vsock: cannot watch an eventfd: {e}");
            }
        }
        self.muxer.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        self.finish_reset(ops);
        self.send_transport_reset();
        if fd == self.ctl_event.as_raw_fd() {
            drain_event(&self.ctl_event);
        } else if fd == self.tx_timer.as_fd().as_raw_fd() {
            // Non-blocking: a timer re-armed after it fired just reads EAGAIN.
            let _ = self.tx_timer.wait();
            self.awaiting_reset_ack = false;
            if let Some(active) = self.active.as_mut() {
                active.return_tx(&self.metrics);
            }
        } else if let Some(q) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            add(
                &self.metrics.notifications,
                drain_event(&self.queue_events[q]),
            );
            if q == TX {
                self.process_tx(ops);
            }
            if q == EVQ {
                // The guest refilled the event queue: it has handled the reset.
                self.awaiting_reset_ack = false;
            }
            // RX: new buffers, used below. EVQ: the driver refilled event buffers, which only a
            // pending transport reset (sent above) needs.
        } else if !self.muxer.on_event(fd, set, ops) {
            tracing::warn!("vsock: event on unknown fd {fd}");
            let _ = ops.remove(events);
            return;
        }
        // Any event may have produced packets for the guest (TX replies, host data, credit).
        self.process_rx(ops);
        self.signal_used();
    }
}

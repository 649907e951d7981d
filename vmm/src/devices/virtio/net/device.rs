//! The virtio-net device: RX queue 0, TX queue 1, no control queue, one queue pair.
//!
//! A device starts without a backend in a pre-wired slot: its transport then shows DeviceID 0,
//! so the guest's boot-time probe ends silently. [`NetDevice::attach`] installs a tap (from
//! the monitor's thread, while the VM runs); the transport then shows a net device and the
//! guest probes it when told to (a bind through sysfs). Everything after that runs on the
//! event loop: the tap fd is registered there (the attach only writes `ctl_event`), frames are
//! moved there, and the tap's offloads are set there once the driver negotiated its features.
//!
//! Frames go through one bounce buffer each way ([`frame::MAX_PACKET_LEN`] bytes, allocated at
//! attach): a tap takes and gives whole frames only, and a copy of at most 64 KiB is nothing
//! next to what the emulated guest kernel spends per frame. TX chains are returned at once;
//! EVENT_IDX lets the driver batch interrupts. A frame the tap refuses (EAGAIN: its queue is
//! full; EINVAL: a header the host kernel rejects) is dropped and counted, as a NIC would: TCP
//! retransmits, and holding chains for a stalled tap would need a writable watch for a case
//! a tap with an unlimited send buffer hardly ever has. RX reads the tap (edge-triggered, with
//! a "maybe readable" flag) only while the guest has buffers: a frame without room waits in
//! the bounce buffer and the device asks for an RX kick; so a guest that stops taking frames
//! costs nothing but the frames the host drops at the tap.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::{self, RxFill, TxRules, MAX_PACKET_LEN};
use super::metrics::{add, NetCounters, NetMetrics};
use super::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, VNET_HDR_LEN};
use super::{NetBackend, NetError, QUEUE_SIZE};
use crate::devices::virtio::mmio::TransportMetrics;
use crate::devices::virtio::{
    chain, drain_event, needs_interrupt, pop_avail, unpop_avail, ActivateError, GuestMemoryMmap,
    Interrupt, QueueError, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_INDIRECT_DESC,
    FEATURE_VERSION_1,
};

const RX: usize = 0;
const TX: usize = 1;
const NUM_QUEUES: usize = 2;

const fn bit(b: u32) -> u64 {
    1 << b
}
/// Partial checksums from the guest.
pub const FEATURE_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM);
/// Partial checksums to the guest.
pub const FEATURE_GUEST_CSUM: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM);
/// The MTU in config space.
pub const FEATURE_MTU: u64 = bit(virtio_net::VIRTIO_NET_F_MTU);
/// The MAC in config space.
pub const FEATURE_MAC: u64 = bit(virtio_net::VIRTIO_NET_F_MAC);
/// TCPv4 GSO frames to the guest.
pub const FEATURE_GUEST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4);
/// TCPv4 GSO frames from the guest.
pub const FEATURE_HOST_TSO4: u64 = bit(virtio_net::VIRTIO_NET_F_HOST_TSO4);
/// Frames spread over several RX buffers.
pub const FEATURE_MRG_RXBUF: u64 = bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF);
/// The link status in config space.
pub const FEATURE_STATUS: u64 = bit(virtio_net::VIRTIO_NET_F_STATUS);
/// What every attached device offers.
pub const BASE_FEATURES: u64 = FEATURE_VERSION_1
    | FEATURE_EVENT_IDX
    | FEATURE_MAC
    | FEATURE_MTU
    | FEATURE_STATUS
    | FEATURE_MRG_RXBUF;
/// The checksum and TSO offloads (offered unless the backend turns them off).
pub const OFFLOAD_FEATURES: u64 =
    FEATURE_CSUM | FEATURE_GUEST_CSUM | FEATURE_HOST_TSO4 | FEATURE_GUEST_TSO4;

/// At most one warning per this interval per device: the guest controls how often they fire.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A tap and what the guest sees of it.
struct Backend {
    tap: Tap,
    mac: [u8; 6],
    mtu: u16,
    offloads: bool,
    /// The tap fd is registered with the event loop.
    watched: bool,
    /// The tap may have frames queued (edge-triggered: set on an event, cleared at EAGAIN).
    readable: bool,
    /// The `TUN_F_*` flags the tap has now.
    tap_offload: u32,
    /// A frame read from the tap, waiting for RX buffers (`rx_len` bytes; 0: none).
    rx: Vec<u8>,
    rx_len: usize,
    tx: Vec<u8>,
}

/// State that exists only while a driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    broken: [bool; NUM_QUEUES],
    used: [bool; NUM_QUEUES],
    interrupt: Arc<Interrupt>,
    features: u64,
    /// RX used index when we last decided about an interrupt (EVENT_IDX's "old").
    rx_checked: u16,
}

impl Active {
    fn break_queue(&mut self, index: usize, err: &QueueError, metrics: &NetMetrics) {
        tracing::warn!("virtio-net: queue {index} is broken: {err}");
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
            self.features & FEATURE_INDIRECT_DESC != 0,
        )?)
    }

    fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// The `TUN_F_*` flags that match the GUEST_* features the driver took.
    fn tap_offload(&self) -> u32 {
        if !self.has(FEATURE_GUEST_CSUM) {
            return 0;
        }
        if self.has(FEATURE_GUEST_TSO4) {
            TUN_F_CSUM | TUN_F_TSO4
        } else {
            TUN_F_CSUM
        }
    }
}

/// What became of a frame offered to the guest.
enum Delivery {
    Done {
        buffers: usize,
    },
    /// No (or not enough) RX buffers yet: keep the frame and wait for a kick.
    Wait,
    /// Larger than the buffers the guest can ever offer: drop it.
    TooBig,
    /// The queue broke.
    Broken,
}

/// A pre-wired NIC slot and, once attached, its tap.
pub struct NetDevice {
    index: u8,
    queue_sizes: [u16; NUM_QUEUES],
    queue_events: Vec<EventFd>,
    ctl_event: EventFd,
    backend: Option<Backend>,
    active: Option<Active>,
    metrics: Arc<NetMetrics>,
    last_warning: Option<Instant>,
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("index", &self.index)
            .field("attached", &self.backend.is_some())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl NetDevice {
    /// An empty slot, number `index` among the VM's NIC slots.
    pub fn new(index: u8) -> Result<Self, NetError> {
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        Ok(Self {
            index,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_events: vec![evt()?, evt()?],
            ctl_event: evt()?,
            backend: None,
            active: None,
            metrics: Arc::new(NetMetrics::default()),
            last_warning: None,
        })
    }

    /// The slot's number among the VM's NIC slots.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Whether a tap is attached.
    pub fn is_attached(&self) -> bool {
        self.backend.is_some()
    }

    /// Whether a driver runs the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The counters with the transport's, for a benchmark.
    pub fn counters(&self, transport: Arc<TransportMetrics>) -> NetCounters {
        NetCounters {
            device: self.metrics.clone(),
            transport,
        }
    }

    /// Installs `backend`. Call with the transport reset and locked, then let the transport
    /// re-read the device type and features (see [`super::attach`]).
    pub fn attach(&mut self, backend: NetBackend) -> Result<(), NetError> {
        if self.backend.is_some() {
            return Err(NetError::InUse(self.index));
        }
        super::check_backend(&backend)?;
        self.backend = Some(Backend {
            tap: backend.tap,
            mac: backend.mac,
            mtu: backend.mtu,
            offloads: backend.offloads,
            watched: false,
            readable: true,
            tap_offload: 0,
            rx: vec![0; MAX_PACKET_LEN],
            rx_len: 0,
            tx: vec![0; MAX_PACKET_LEN],
        });
        // The event loop registers the tap.
        self.ctl_event.write(1).map_err(NetError::EventFd)
    }

    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL)
        {
            self.last_warning = Some(now);
            tracing::warn!(
                slot = self.index,
                "virtio-net: {what} (further warnings held back)"
            );
        } else {
            tracing::debug!(slot = self.index, "virtio-net: {what}");
        }
    }

    /// Registers the tap with the event loop once.
    fn watch_tap(&mut self, ops: &mut EventOps) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        if b.watched {
            return;
        }
        let events = Events::new_raw(b.tap.as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED);
        match ops.add(events) {
            Ok(()) => b.watched = true,
            Err(e) => tracing::error!("virtio-net: cannot watch tap {}: {e}", b.tap.name()),
        }
    }

    /// Gives the tap the offloads the driver accepts (none without a driver).
    fn sync_offloads(&mut self) {
        let Some(b) = self.backend.as_mut() else {
            return;
        };
        let wanted = self.active.as_ref().map_or(0, Active::tap_offload);
        if b.tap_offload == wanted {
            return;
        }
        match b.tap.set_offload(wanted) {
            Ok(()) => b.tap_offload = wanted,
            Err(e) => {
                let name = b.tap.name().to_owned();
                self.warn(format_args!("cannot set offloads on {name}: {e}"));
            }
        }
    }

    fn process_tx(&mut self) {
        let (Some(active), Some(b)) = (self.active.as_mut(), self.backend.as_mut()) else {
            return;
        };
        if active.broken[TX] {
            return;
        }
        let rules = TxRules {
            csum: active.has(FEATURE_CSUM),
            tso4: active.has(FEATURE_HOST_TSO4),
        };
        let metrics = &self.metrics;
        let mut tap_error = None;
        if let Err(e) = active.queues[TX].disable_notification(&active.mem) {
            return active.break_queue(TX, &QueueError::Ring(e), metrics);
        }
        // At most a ring's worth per event: a guest that keeps refilling TX must not keep the
        // event loop (every device of the VM) to itself. The rest waits for our own kick.
        let mut budget = usize::from(active.queues[TX].size()).max(1);
        let mut more = false;
        'ring: loop {
            loop {
                if budget == 0 {
                    more = true;
                    break 'ring;
                }
                budget -= 1;
                let head = match pop_avail(&mut active.queues[TX], &active.mem) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => return active.break_queue(TX, &e, metrics),
                };
                let chain = match active.parse_chain(TX, head) {
                    Ok(c) => c,
                    Err(e) => return active.break_queue(TX, &e, metrics),
                };
                match frame::read_tx(&active.mem, &chain, rules, &mut b.tx) {
                    Ok(len) => match b.tap.write_frame(&b.tx[..len]) {
                        Ok(_) => {
                            add(&metrics.tx_packets, 1);
                            add(&metrics.tx_bytes, (len - VNET_HDR_LEN) as u64);
                        }
                        Err(e) => {
                            add(&metrics.tx_tap_errors, 1);
                            tap_error = Some(e);
                        }
                    },
                    Err(e) => {
                        tracing::debug!("virtio-net: dropping a tx chain: {e}");
                        add(&metrics.tx_malformed, 1);
                    }
                }
                if let Err(e) = active.queues[TX].add_used(&active.mem, head, 0) {
                    return active.break_queue(TX, &QueueError::Ring(e), metrics);
                }
                active.used[TX] = true;
            }
            match active.queues[TX].enable_notification(&active.mem) {
                Ok(true) => {
                    // Notifications stay off while we drain what came in meanwhile.
                    if let Err(e) = active.queues[TX].disable_notification(&active.mem) {
                        return active.break_queue(TX, &QueueError::Ring(e), metrics);
                    }
                    continue;
                }
                Ok(false) => break,
                Err(e) => return active.break_queue(TX, &QueueError::Ring(e), metrics),
            }
        }
        if more {
            if let Err(e) = self.queue_events[TX].write(1) {
                tracing::warn!("virtio-net: cannot requeue tx: {e}");
            }
        }
        if let Some(e) = tap_error {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                self.warn(format_args!("the tap refused a frame: {e}"));
            }
        }
    }

    fn process_rx(&mut self) {
        let (Some(active), Some(b)) = (self.active.as_mut(), self.backend.as_mut()) else {
            return;
        };
        // Never hand the guest an offload it did not take (offloads change on the loop).
        if active.broken[RX] || b.tap_offload & !active.tap_offload() != 0 {
            return;
        }
        let metrics = &self.metrics;
        if let Err(e) = active.queues[RX].disable_notification(&active.mem) {
            return active.break_queue(RX, &QueueError::Ring(e), metrics);
        }
        let mut read_error = None;
        loop {
            if b.rx_len == 0 {
                if !b.readable {
                    break;
                }
                match b.tap.read_frame(&mut b.rx) {
                    Ok(n) if n >= VNET_HDR_LEN => b.rx_len = n,
                    Ok(0) => {
                        b.readable = false;
                        break;
                    }
                    Ok(_) => {
                        add(&metrics.rx_malformed, 1);
                        continue;
                    }
                    // Only EAGAIN means the tap is empty; after another error frames may
                    // still be queued, and the tap is watched edge-triggered: the next event
                    // of the device tries again.
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::WouldBlock {
                            b.readable = false;
                        } else {
                            read_error = Some(e);
                        }
                        break;
                    }
                }
            }
            match deliver(active, &mut b.rx[..b.rx_len], metrics) {
                Delivery::Done { buffers } => {
                    add(&metrics.rx_packets, 1);
                    add(&metrics.rx_bytes, (b.rx_len - VNET_HDR_LEN) as u64);
                    add(&metrics.rx_buffers, buffers as u64);
                    b.rx_len = 0;
                }
                Delivery::TooBig => {
                    add(&metrics.rx_too_big, 1);
                    b.rx_len = 0;
                }
                // Not enough room: wait for buffers the guest has not offered yet. (The ones
                // it has are still in the ring, so `enable_notification`'s own "anything
                // there?" test would say yes for ever: with MRG_RXBUF a frame that needs more
                // buffers than are posted would spin this loop.)
                Delivery::Wait => match wait_for_more_rx(&mut active.queues[RX], &active.mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return active.break_queue(RX, &e, metrics),
                },
                Delivery::Broken => return,
            }
        }
        if let Some(e) = read_error {
            self.warn(format_args!("cannot read the tap: {e}"));
        }
    }

    /// Raises one interrupt for everything used since the last call, if the driver wants it.
    fn signal_used(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut raise = false;
        if std::mem::take(&mut active.used[TX]) && !active.broken[TX] {
            match needs_interrupt(&mut active.queues[TX], &active.mem) {
                Ok(n) => raise |= n,
                Err(e) => active.break_queue(TX, &e, &self.metrics),
            }
        }
        if std::mem::take(&mut active.used[RX]) && !active.broken[RX] {
            match rx_needs_interrupt(active) {
                Ok(n) => raise |= n,
                Err(e) => active.break_queue(RX, &e, &self.metrics),
            }
        }
        if raise {
            add(&self.metrics.interrupts, 1);
            if let Err(e) = active.interrupt.signal_used() {
                tracing::warn!("virtio-net: cannot raise interrupt: {e}");
            }
        }
    }
}

/// Asks the driver to notify us when it adds an RX buffer past those it has posted now, and
/// says whether it already did (then the caller tries again at once). With EVENT_IDX that is
/// `avail_event` = the driver's current avail index (its next kick comes when it moves past);
/// without, notifications back on.
fn wait_for_more_rx(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
    use std::sync::atomic::{fence, Ordering};
    let ring = |e| QueueError::Ring(e);
    let posted = queue.avail_idx(mem, Ordering::Acquire).map_err(ring)?;
    if queue.event_idx_enabled() {
        // struct virtq_used { le16 flags; le16 idx; virtq_used_elem ring[size]; le16 avail_event; }
        let at = GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(queue.size()))
            .ok_or(QueueError::Ring(virtio_queue::Error::AddressOverflow))?;
        mem.store(posted.0.to_le(), at, Ordering::Release)
            .map_err(|e| QueueError::Ring(virtio_queue::Error::GuestMemory(e)))?;
    } else {
        queue.enable_notification(mem).map_err(ring)?;
    }
    // A buffer posted between our read and the request would not be notified: look again.
    fence(Ordering::SeqCst);
    let now = queue.avail_idx(mem, Ordering::Acquire).map_err(ring)?;
    Ok(now != posted)
}

/// Puts `packet` into as many RX chains as it needs (one without MRG_RXBUF), all published
/// in the used ring at once: Linux reads `num_buffers` from the first and takes the rest
/// right away, so they must all be there when it sees the first.
fn deliver(active: &mut Active, packet: &mut [u8], metrics: &NetMetrics) -> Delivery {
    let mrg = active.has(FEATURE_MRG_RXBUF);
    let size = usize::from(active.queues[RX].size());
    let mut chains = Vec::new();
    let mut room = 0;
    while room < packet.len() && chains.len() < size && (mrg || chains.is_empty()) {
        let head = match pop_avail(&mut active.queues[RX], &active.mem) {
            Ok(Some(h)) => h,
            Ok(None) => {
                for _ in 0..chains.len() {
                    unpop_avail(&mut active.queues[RX]);
                }
                return Delivery::Wait;
            }
            Err(e) => {
                active.break_queue(RX, &e, metrics);
                return Delivery::Broken;
            }
        };
        match active.parse_chain(RX, head) {
            Ok(c) => {
                room += c.writable().len();
                chains.push(c);
            }
            Err(e) => {
                active.break_queue(RX, &e, metrics);
                return Delivery::Broken;
            }
        }
    }
    let used = match frame::write_rx(&active.mem, &chains, packet) {
        Ok(used) => used,
        Err(RxFill::NeedMore) => {
            for _ in 0..chains.len() {
                unpop_avail(&mut active.queues[RX]);
            }
            return Delivery::TooBig;
        }
        Err(RxFill::Write) => {
            active.break_queue(
                RX,
                &QueueError::Ring(virtio_queue::Error::InvalidChain),
                metrics,
            );
            return Delivery::Broken;
        }
    };
    let elems: Vec<(u16, u32)> = chains.iter().map(|c| c.head()).zip(used).collect();
    if let Err(e) = publish_used(&mut active.queues[RX], &active.mem, &elems) {
        active.break_queue(RX, &e, metrics);
        return Delivery::Broken;
    }
    active.used[RX] = true;
    Delivery::Done {
        buffers: elems.len(),
    }
}

/// Writes used elements and then moves the used index past all of them at once.
fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    elems: &[(u16, u32)],
) -> Result<(), QueueError> {
    use std::sync::atomic::Ordering;
    let overflow = || QueueError::Ring(virtio_queue::Error::AddressOverflow);
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let mut next = queue.next_used();
    for &(head, len) in elems {
        let offset = 4 + 8 * u64::from(next % size);
        let at = ring.checked_add(offset).ok_or_else(overflow)?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, at)
            .map_err(|e| QueueError::Ring(virtio_queue::Error::GuestMemory(e)))?;
        next = next.wrapping_add(1);
    }
    let idx = ring.checked_add(2).ok_or_else(overflow)?;
    mem.store(next.to_le(), idx, Ordering::Release)
        .map_err(|e| QueueError::Ring(virtio_queue::Error::GuestMemory(e)))?;
    queue.set_next_used(next);
    Ok(())
}

/// EVENT_IDX's test for the RX queue, whose used ring we publish ourselves (virtio-queue's
/// `needs_notification` only counts what its own `add_used` added).
fn rx_needs_interrupt(active: &mut Active) -> Result<bool, QueueError> {
    use std::sync::atomic::{fence, Ordering};
    let q = &active.queues[RX];
    let new = q.next_used();
    let old = std::mem::replace(&mut active.rx_checked, new);
    if !q.event_idx_enabled() {
        return Ok(true);
    }
    fence(Ordering::SeqCst);
    // struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
    let at = GuestAddress(q.avail_ring())
        .checked_add(4 + 2 * u64::from(q.size()))
        .ok_or(QueueError::Ring(virtio_queue::Error::AddressOverflow))?;
    let used_event = u16::from_le(
        active
            .mem
            .read_obj::<u16>(at)
            .map_err(|e| QueueError::Ring(virtio_queue::Error::GuestMemory(e)))?,
    );
    Ok(need_event(used_event, new, old))
}

/// `vring_need_event`: whether moving the used index from `old` to `new` passed `event`
/// (the driver's `used_event`), in the ring's wrapping index space.
pub(super) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Drop for NetDevice {
    fn drop(&mut self) {
        if self.backend.is_some() {
            tracing::info!(slot = self.index, metrics = ?self.metrics.snapshot(), "virtio-net: device closed");
        }
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        // DeviceID 0 until attached: Linux's virtio-mmio probe then ends with -ENODEV, silently.
        if self.backend.is_some() {
            virtio_bindings::virtio_ids::VIRTIO_ID_NET
        } else {
            0
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        match &self.backend {
            // Nothing, not even VERSION_1: a driver that tries anyway cannot get FEATURES_OK.
            None => 0,
            Some(b) if b.offloads => BASE_FEATURES | OFFLOAD_FEATURES,
            Some(_) => BASE_FEATURES,
        }
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; le16 status; le16 max_virtqueue_pairs;
        // le16 mtu; }
        let mut config = [0u8; 12];
        if let Some(b) = &self.backend {
            config[..6].copy_from_slice(&b.mac);
            config[6..8].copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
            config[8..10].copy_from_slice(&1u16.to_le_bytes());
            config[10..12].copy_from_slice(&b.mtu.to_le_bytes());
        }
        crate::devices::virtio::read_config_bytes(&config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.backend.is_none() {
            return Err(ActivateError::NoBackend);
        }
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        if let Some(i) = queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        let rx_checked = queues[RX].next_used();
        self.active = Some(Active {
            mem,
            queues,
            broken: [false; NUM_QUEUES],
            used: [false; NUM_QUEUES],
            interrupt,
            features,
            rx_checked,
        });
        // The loop sets the tap's offloads and looks at both queues.
        self.ctl_event.write(1).map_err(ActivateError::Signal)
    }

    fn reset(&mut self) {
        if self.active.take().is_some() {
            if let Some(b) = self.backend.as_mut() {
                // A frame read for the old driver may carry offloads the next one refuses.
                b.rx_len = 0;
            }
            // The loop takes the tap's offloads back.
            if let Err(e) = self.ctl_event.write(1) {
                tracing::warn!("virtio-net: cannot signal reset: {e}");
            }
        }
    }
}

impl MutEventSubscriber for NetDevice {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![Events::new(&self.ctl_event, EventSet::IN)];
        fds.extend(
            self.queue_events
                .iter()
                .map(|e| Events::new(e, EventSet::IN)),
        );
        for events in fds {
            if let Err(e) = ops.add(events) {
                tracing::error!("virtio-net: cannot watch an eventfd: {e}");
            }
        }
        self.watch_tap(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.ctl_event.as_raw_fd() {
            drain_event(&self.ctl_event);
            self.watch_tap(ops);
        } else if let Some(q) = self.queue_events.iter().position(|e| e.as_raw_fd() == fd) {
            let kicks = drain_event(&self.queue_events[q]);
            add(&self.metrics.kicks, kicks);
            if q == RX {
                add(&self.metrics.rx_kicks, kicks);
            }
        } else if let Some(b) = self.backend.as_mut().filter(|b| b.tap.as_raw_fd() == fd) {
            b.readable = true;
        } else {
            tracing::warn!("virtio-net: event on unknown fd {fd}");
            let _ = ops.remove(events);
            return;
        }
        self.sync_offloads();
        // TX on every event: cheap when empty, and a kick may have been coalesced into
        // another event's wake-up.
        self.process_tx();
        self.process_rx();
        self.signal_used();
    }
}

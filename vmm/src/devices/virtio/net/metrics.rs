//! Per-device counters, shared lock-free with whoever reports them (benches, logs).
//!
//! As for vsock, exits and interrupts dominate the cost of moving bytes when the guest kernel
//! is emulated: watch packets, kicks and interrupts per MiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::devices::virtio::mmio::TransportMetrics;

/// The device's counters and its register window's, for one NIC.
#[derive(Debug, Clone)]
pub struct NetCounters {
    /// Frames, bytes, drops, kicks, interrupts.
    pub device: Arc<NetMetrics>,
    /// Register accesses that reached the VMM (each one an exit).
    pub transport: Arc<TransportMetrics>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames the guest sent that went to the tap.
    pub tx_packets: AtomicU64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Frames we delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: AtomicU64,
    /// RX buffers (chains) used, several per frame with MRG_RXBUF.
    pub rx_buffers: AtomicU64,
    /// Guest TX chains dropped: shorter than a header, longer than a frame can be, writable
    /// buffers, or GSO the guest had not negotiated.
    pub tx_malformed: AtomicU64,
    /// Guest frames the tap refused (full: EAGAIN) or rejected (bad header: EINVAL, ...).
    pub tx_tap_errors: AtomicU64,
    /// Host frames dropped because they do not fit the guest's RX buffers.
    pub rx_too_big: AtomicU64,
    /// Host frames dropped because they are shorter than a header.
    pub rx_malformed: AtomicU64,
    /// Guest queue notifications (kicks), both queues; one exit each.
    pub kicks: AtomicU64,
    /// Of those, on the RX queue (new buffers after we ran out).
    pub rx_kicks: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Queues declared broken (malformed chain or ring).
    pub queue_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetMetricsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_buffers: u64,
    pub tx_malformed: u64,
    pub tx_tap_errors: u64,
    pub rx_too_big: u64,
    pub rx_malformed: u64,
    pub kicks: u64,
    pub rx_kicks: u64,
    pub interrupts: u64,
    pub queue_errors: u64,
}

impl NetMetrics {
    /// Reads all counters.
    pub fn snapshot(&self) -> NetMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetMetricsSnapshot {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_buffers: get(&self.rx_buffers),
            tx_malformed: get(&self.tx_malformed),
            tx_tap_errors: get(&self.tx_tap_errors),
            rx_too_big: get(&self.rx_too_big),
            rx_malformed: get(&self.rx_malformed),
            kicks: get(&self.kicks),
            rx_kicks: get(&self.rx_kicks),
            interrupts: get(&self.interrupts),
            queue_errors: get(&self.queue_errors),
        }
    }
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

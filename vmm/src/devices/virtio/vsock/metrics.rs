//! Per-device counters, shared lock-free with whoever reports them (benches, logs).
//!
//! On a host where every guest-kernel instruction is emulated, exits and interrupts dominate
//! the cost of moving bytes, so these are the figures to watch: packets, notifications (each
//! one guest exit) and interrupts (each one at least three exits) per MiB moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::devices::virtio::mmio::TransportMetrics;

/// Everything a benchmark needs to count what moving bytes costs the guest: the device's
/// counters and its register window's (interrupt status reads and acknowledgements).
#[derive(Debug, Clone)]
pub struct VsockCounters {
    /// Packets, notifications, interrupts, connections.
    pub device: Arc<VsockMetrics>,
    /// Register accesses that reached the VMM (each one an exit).
    pub transport: Arc<TransportMetrics>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets the guest sent (TX queue), any op.
    pub tx_packets: AtomicU64,
    /// Payload bytes the guest sent.
    pub tx_bytes: AtomicU64,
    /// Packets we delivered to the guest (RX queue), any op.
    pub rx_packets: AtomicU64,
    /// Payload bytes we delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Guest queue notifications (kicks), all queues; one exit each.
    pub notifications: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Well-formed chains whose packet we dropped (bad header, wrong direction, bad address).
    pub dropped_packets: AtomicU64,
    /// Queues declared broken (malformed chain or ring).
    pub queue_errors: AtomicU64,
    /// Connections established or requested.
    pub conns_opened: AtomicU64,
    /// Connections removed.
    pub conns_closed: AtomicU64,
    /// RST packets sent.
    pub resets_sent: AtomicU64,
    /// Credit updates sent on their own (not piggybacked on data).
    pub credit_updates: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockMetricsSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub notifications: u64,
    pub interrupts: u64,
    pub dropped_packets: u64,
    pub queue_errors: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
    pub resets_sent: u64,
    pub credit_updates: u64,
}

impl VsockMetrics {
    /// Reads all counters.
    pub fn snapshot(&self) -> VsockMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockMetricsSnapshot {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            notifications: get(&self.notifications),
            interrupts: get(&self.interrupts),
            dropped_packets: get(&self.dropped_packets),
            queue_errors: get(&self.queue_errors),
            conns_opened: get(&self.conns_opened),
            conns_closed: get(&self.conns_closed),
            resets_sent: get(&self.resets_sent),
            credit_updates: get(&self.credit_updates),
        }
    }
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

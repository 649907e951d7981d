//! virtio-vsock (device id 19) with a Unix-socket host side compatible with Firecracker's
//! hybrid vsock (see [`unix`] for the convention).
//!
//! - [`device`]: the virtio device: queues, notifications, interrupts, event-loop glue;
//! - [`packet`]: the wire header and views of TX/RX packets in guest memory;
//! - [`muxer`]: routing between guest packets, connections and host sockets;
//! - [`connection`]: one stream's state machine and credit flow control;
//! - [`txbuf`]: the bounded buffer for guest data the host has not read yet;
//! - [`unix`]: the host-side sockets and the `CONNECT`/`OK` handshake;
//! - [`metrics`]: packet, exit and interrupt counters.

pub mod connection;
pub mod device;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod txbuf;
pub mod unix;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::{VsockDevice, VsockError};
pub use metrics::{VsockCounters, VsockMetrics, VsockMetricsSnapshot};

/// The CID a guest gets unless told otherwise (the first one free for guests).
pub const DEFAULT_GUEST_CID: u64 = 3;
/// Receive window we advertise per connection, and so the most we ever buffer for one
/// connection whose host reader is slow. The guest uses the smaller of this and its own
/// window (256 KiB unless the guest raises `SO_VM_SOCKETS_BUFFER_SIZE`).
pub const DEFAULT_BUF_ALLOC: u32 = 1024 * 1024;
/// Connections (of all kinds) one device serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// How to build a vsock device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (>= 3).
    pub guest_cid: u64,
    /// Host socket path; guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Per-connection receive window (and buffer bound), bytes.
    pub buf_alloc: u32,
    /// Most connections at once.
    pub max_connections: usize,
}

impl VsockConfig {
    /// The defaults for a socket at `uds_path`.
    pub fn new(uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid: DEFAULT_GUEST_CID,
            uds_path: uds_path.into(),
            buf_alloc: DEFAULT_BUF_ALLOC,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

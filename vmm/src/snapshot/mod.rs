//! Snapshots: a paused VM written to a directory, and restored from it in another process.
//!
//! A snapshot directory holds two files:
//! - `state`: everything but guest memory ([`state::VmSnapshot`]: vCPUs, clock, irqchip, PIT,
//!   serial port, virtio-mmio transports and devices, and what the snapshot is tied to: VMM
//!   version, host profile, CPU model and CPUID, TSC rate, kernel + initrd), framed and
//!   checksummed by [`format`];
//! - `memory`: guest RAM, sparse ([`memory`]), which restored VMs map copy-on-write so clones of
//!   one snapshot share its pages.
//!
//! Taking one: [`crate::VmHandle::snapshot`] (see [`save`]). Restoring: [`crate::Vm::restore`]
//! (the recipe is [`crate::restore`]).

pub mod format;
pub mod identity;
pub mod memory;
pub(crate) mod save;
pub mod state;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use identity::ImageId;
pub use save::SnapshotError;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// What taking a snapshot cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// From the moment everything was paused to the state file being synced: how long the
    /// guest was frozen by the snapshot itself.
    pub paused: Duration,
    /// The whole call, hashing the image included.
    pub total: Duration,
    /// The memory file's (apparent) size: all of guest RAM.
    pub memory_file_size: u64,
    /// Bytes of it actually written (non-zero pages): about its size on disk.
    pub memory_data_bytes: u64,
    /// The state file's size.
    pub state_bytes: u64,
}

/// Waits until a guest program accepts connections on vsock `port`, through the hybrid-vsock
/// socket `uds` (`CONNECT <port>` → `OK …`), then closes the connection. Returns how long it
/// took. A template maker calls this (or its own readiness check), then snapshots: the guest's
/// listening socket survives into clones, the probe connection does not.
pub fn wait_for_guest_port(uds: &Path, port: u32, timeout: Duration) -> std::io::Result<Duration> {
    let start = Instant::now();
    loop {
        if probe_port(uds, port).unwrap_or(false) {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("guest vsock port {port} did not answer within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `CONNECT` attempt: true once the guest accepted.
fn probe_port(uds: &Path, port: u32) -> std::io::Result<bool> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' && line.len() < 64 {
        line.push(b[0]);
    }
    Ok(line.starts_with(b"OK "))
}

#[cfg(test)]
mod kvm_tests;

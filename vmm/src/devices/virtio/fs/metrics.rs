//! Per-device counters, shared lock-free with whoever reports them (benches, logs, tests).
//!
//! Every FUSE round trip costs the guest a request, a notification and an interrupt, which on a
//! PVM host are emulated guest-kernel work, so the figure to watch is requests per operation:
//! [`FsMetricsSnapshot::requests`] counts them by opcode.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Opcodes we count individually (FUSE opcodes are 1..=49 today); anything else lands in 0.
const SLOTS: usize = 64;

/// Live counters.
#[derive(Debug)]
pub struct FsMetrics {
    /// Requests by opcode (index = opcode; 0 = unknown or out of range).
    requests: [AtomicU64; SLOTS],
    /// Guest queue notifications (kicks), both queues; one exit each.
    pub notifications: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Requests the server failed to decode or answer (we answered EINVAL for it if we could).
    pub server_errors: AtomicU64,
    /// Requests we answered ourselves without the server (unknown opcode, DAX without a window).
    pub refused: AtomicU64,
    /// Well-formed chains whose content was unusable (no room for a header, no header).
    pub dropped: AtomicU64,
    /// Queues declared broken (malformed chain or ring).
    pub queue_errors: AtomicU64,
}

impl Default for FsMetrics {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            notifications: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue_errors: AtomicU64::new(0),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsMetricsSnapshot {
    /// Requests by opcode name (`"LOOKUP"`, `"READ"`, …); only opcodes seen at least once.
    pub requests: BTreeMap<&'static str, u64>,
    pub notifications: u64,
    pub interrupts: u64,
    pub server_errors: u64,
    pub refused: u64,
    pub dropped: u64,
    pub queue_errors: u64,
}

impl FsMetricsSnapshot {
    /// All requests, any opcode.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// Requests of one opcode (by name, e.g. `"LOOKUP"`).
    pub fn count(&self, opcode: &str) -> u64 {
        self.requests.get(opcode).copied().unwrap_or(0)
    }

    /// What happened between `earlier` and `self`, request counts only.
    pub fn requests_since(&self, earlier: &FsMetricsSnapshot) -> BTreeMap<&'static str, u64> {
        self.requests
            .iter()
            .filter_map(|(&name, &n)| {
                let d = n.saturating_sub(earlier.count(name));
                (d > 0).then_some((name, d))
            })
            .collect()
    }
}

impl FsMetrics {
    /// Counts one request with this opcode.
    pub fn count_request(&self, opcode: u32) {
        let slot = usize::try_from(opcode)
            .ok()
            .filter(|&o| o < SLOTS)
            .unwrap_or(0);
        add(&self.requests[slot], 1);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> FsMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut requests = BTreeMap::new();
        for (op, c) in self.requests.iter().enumerate() {
            let n = get(c);
            if n > 0 {
                *requests.entry(opcode_name(op as u32)).or_default() += n;
            }
        }
        FsMetricsSnapshot {
            requests,
            notifications: get(&self.notifications),
            interrupts: get(&self.interrupts),
            server_errors: get(&self.server_errors),
            refused: get(&self.refused),
            dropped: get(&self.dropped),
            queue_errors: get(&self.queue_errors),
        }
    }
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The FUSE name of an opcode (`include/uapi/linux/fuse.h`), `"UNKNOWN"` for anything else.
pub fn opcode_name(opcode: u32) -> &'static str {
    const NAMES: [&str; 50] = [
        "UNKNOWN",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "UNKNOWN",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "UNKNOWN",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
    ];
    usize::try_from(opcode)
        .ok()
        .and_then(|o| NAMES.get(o))
        .copied()
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_name_and_folds_unknown_opcodes() {
        let m = FsMetrics::default();
        m.count_request(1);
        m.count_request(1);
        m.count_request(15);
        m.count_request(7);
        m.count_request(u32::MAX);
        let before = m.snapshot();
        assert_eq!(before.count("LOOKUP"), 2);
        assert_eq!(before.count("READ"), 1);
        assert_eq!(before.count("UNKNOWN"), 2);
        assert_eq!(before.total_requests(), 5);
        m.count_request(15);
        let after = m.snapshot();
        assert_eq!(after.requests_since(&before), BTreeMap::from([("READ", 1)]));
    }
}

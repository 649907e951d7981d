//! Container statistics in the shape `runc events --stats` prints (`data` of a `stats` event):
//! the host cgroup's numbers (the whole VM) and, under `guest`, the container's own cgroup
//! inside the guest.

use serde::{Deserialize, Serialize};

/// One `stats` event's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub memory: Memory,
    pub pids: Pids,
    /// The container's cgroup in the guest, when the guest answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub usage: CpuUsage,
}

/// Nanoseconds, as runc reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub usage: MemoryUsage,
}

/// Bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    pub usage: u64,
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pids {
    pub current: u64,
}

/// What the agent reads from the container's cgroup in the guest (cgroup v2 names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<GuestCpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<GuestMemory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<GuestPids>,
}

/// Microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCpu {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub throttled_usec: u64,
}

/// Bytes; a limit of 2^64-1 means none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemory {
    pub usage: u64,
    pub limit: u64,
    pub max_usage: u64,
    /// Processes the guest's OOM killer killed in the container's cgroup.
    pub oom_kill_events: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPids {
    pub current: u64,
    pub limit: u64,
}

impl From<&bulkhead_protocol::api::StatsResponse> for GuestStats {
    fn from(s: &bulkhead_protocol::api::StatsResponse) -> GuestStats {
        GuestStats {
            cpu: s.cpu.as_ref().map(|c| GuestCpu {
                usage_usec: c.usage_usec,
                user_usec: c.user_usec,
                system_usec: c.system_usec,
                throttled_usec: c.throttled_usec,
            }),
            memory: s.memory.as_ref().map(|m| GuestMemory {
                usage: m.usage_bytes,
                limit: m.limit_bytes,
                max_usage: m.max_usage_bytes,
                oom_kill_events: m.oom_kill_events,
            }),
            pids: s.pids.as_ref().map(|p| GuestPids {
                current: p.current,
                limit: p.limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_shape() {
        let s = Stats {
            cpu: Cpu {
                usage: CpuUsage { total: 5 },
            },
            ..Stats::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cpu"]["usage"]["total"], 5);
        assert_eq!(v["memory"]["usage"]["limit"], 0);
        assert_eq!(v["pids"]["current"], 0);
        assert!(v.get("guest").is_none());
    }
}

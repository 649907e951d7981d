//! `bulkhead events --stats` (runc's shape) as containerd's cgroup metrics
//! (`io.containerd.cgroups.v1.Metrics`, what `ctr task metrics` and the CRI plugin decode).
//!
//! The container's own cgroup in the guest is what a user of runc sees for a container, so its
//! numbers are taken where the guest answered; the host's (the whole VM) otherwise.

use bulkhead_shim::stats::Stats;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Event {
    data: Stats,
}

#[derive(Debug, thiserror::Error)]
#[error("bulkhead events --stats printed no statistics: {0}")]
pub struct Error(#[from] serde_json::Error);

pub fn metrics(out: &[u8]) -> Result<Metrics, Error> {
    let s = serde_json::from_slice::<Event>(out)?.data;
    let guest = s.guest.unwrap_or_default();
    let mut m = Metrics::new();
    let (total, user, kernel) = match guest.cpu {
        Some(c) => (
            // The guest's numbers: a hostile one must not overflow them.
            c.usage_usec.saturating_mul(1000),
            c.user_usec.saturating_mul(1000),
            c.system_usec.saturating_mul(1000),
        ),
        None => (s.cpu.usage.total, 0, 0),
    };
    m.cpu = Some(CPUStat {
        usage: Some(CPUUsage {
            total,
            user,
            kernel,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    let (usage, limit, max) = match guest.memory {
        Some(g) => (g.usage, g.limit, g.max_usage),
        None => (s.memory.usage.usage, s.memory.usage.limit, 0),
    };
    m.memory = Some(MemoryStat {
        usage: Some(MemoryEntry {
            usage,
            limit,
            max,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    })
    .into();
    let (current, limit) = match guest.pids {
        Some(p) => (p.current, p.limit),
        None => (s.pids.current, 0),
    };
    m.pids = Some(PidsStat {
        current,
        limit,
        ..Default::default()
    })
    .into();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_numbers_win() {
        let out = br#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":9}},
            "memory":{"usage":{"usage":100,"limit":200}},"pids":{"current":7},
            "guest":{"cpu":{"usage_usec":3,"user_usec":2,"system_usec":1,"throttled_usec":0},
            "memory":{"usage":10,"limit":20,"max_usage":15,"oom_kill_events":0},
            "pids":{"current":2,"limit":64}}}}"#;
        let m = metrics(out).unwrap();
        assert_eq!(m.cpu.usage.total, 3000);
        assert_eq!(
            (
                m.memory.usage.usage,
                m.memory.usage.limit,
                m.memory.usage.max
            ),
            (10, 20, 15)
        );
        assert_eq!((m.pids.current, m.pids.limit), (2, 64));
    }

    #[test]
    fn the_host_numbers_without_the_guest() {
        let out = br#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":9}},
            "memory":{"usage":{"usage":100,"limit":200}},"pids":{"current":7}}}"#;
        let m = metrics(out).unwrap();
        assert_eq!(
            (m.cpu.usage.total, m.memory.usage.usage, m.pids.current),
            (9, 100, 7)
        );
        assert!(metrics(b"not json").is_err());
        let huge = br#"{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":0}},
            "memory":{"usage":{"usage":0,"limit":0}},"pids":{"current":0},
            "guest":{"cpu":{"usage_usec":18446744073709551615,"user_usec":0,"system_usec":0,
            "throttled_usec":0}}}}"#;
        assert_eq!(metrics(huge).unwrap().cpu.usage.total, u64::MAX);
    }
}

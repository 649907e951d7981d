//! Capabilities: the spec's five sets as bit masks, applied with raw `capset` and `prctl`.
//!
//! Order matters and follows runc: the bounding set is reduced first (needs `CAP_SETPCAP`),
//! then — after the uid change, which keeps the permitted set thanks to `PR_SET_KEEPCAPS` —
//! effective, permitted and inheritable are set in one `capset`, and ambient capabilities are
//! raised last, because each must already be permitted and inheritable.

use std::sync::OnceLock;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::error::{AtStep, ChildResult, Step};
use super::sys;

/// The kernel's capability number of `cap`.
pub fn number(cap: Capability) -> u32 {
    match cap {
        Capability::Chown => 0,
        Capability::DacOverride => 1,
        Capability::DacReadSearch => 2,
        Capability::Fowner => 3,
        Capability::Fsetid => 4,
        Capability::Kill => 5,
        Capability::Setgid => 6,
        Capability::Setuid => 7,
        Capability::Setpcap => 8,
        Capability::LinuxImmutable => 9,
        Capability::NetBindService => 10,
        Capability::NetBroadcast => 11,
        Capability::NetAdmin => 12,
        Capability::NetRaw => 13,
        Capability::IpcLock => 14,
        Capability::IpcOwner => 15,
        Capability::SysModule => 16,
        Capability::SysRawio => 17,
        Capability::SysChroot => 18,
        Capability::SysPtrace => 19,
        Capability::SysPacct => 20,
        Capability::SysAdmin => 21,
        Capability::SysBoot => 22,
        Capability::SysNice => 23,
        Capability::SysResource => 24,
        Capability::SysTime => 25,
        Capability::SysTtyConfig => 26,
        Capability::Mknod => 27,
        Capability::Lease => 28,
        Capability::AuditWrite => 29,
        Capability::AuditControl => 30,
        Capability::Setfcap => 31,
        Capability::MacOverride => 32,
        Capability::MacAdmin => 33,
        Capability::Syslog => 34,
        Capability::WakeAlarm => 35,
        Capability::BlockSuspend => 36,
        Capability::AuditRead => 37,
        Capability::Perfmon => 38,
        Capability::Bpf => 39,
        Capability::CheckpointRestore => 40,
    }
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`), read once.
pub fn last_cap() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n < 64)
            .unwrap_or(40)
    })
}

/// The five capability sets as masks; capabilities the kernel does not know are dropped from
/// them, as runc does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    /// `cap_last_cap` at planning time.
    pub last: u32,
}

fn mask(set: &Option<Capabilities>, known: u64) -> u64 {
    set.iter()
        .flatten()
        .fold(0u64, |m, c| m | (1u64 << number(*c)))
        & known
}

impl CapSets {
    /// From the process's `capabilities`; a missing object means no capabilities at all.
    pub fn new(caps: Option<&LinuxCapabilities>) -> CapSets {
        let last = last_cap();
        let known = if last >= 63 {
            u64::MAX
        } else {
            (1u64 << (last + 1)) - 1
        };
        let Some(c) = caps else {
            return CapSets {
                last,
                ..CapSets::default()
            };
        };
        CapSets {
            bounding: mask(c.bounding(), known),
            effective: mask(c.effective(), known),
            permitted: mask(c.permitted(), known),
            inheritable: mask(c.inheritable(), known),
            ambient: mask(c.ambient(), known),
            last,
        }
    }

    /// Drops every capability outside the bounding set (child side).
    pub fn apply_bounding(&self) -> ChildResult<()> {
        for cap in 0..=self.last {
            if self.bounding & (1u64 << cap) == 0 {
                sys::prctl(libc::PR_CAPBSET_DROP, cap.into(), 0)
                    .step_at(Step::Bounding, cap as usize)?;
            }
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable, then raises the ambient ones (child side).
    pub fn apply_sets(&self) -> ChildResult<()> {
        sys::capset(self.effective, self.permitted, self.inheritable).step(Step::Capset)?;
        for cap in 0..=self.last {
            if self.ambient & (1u64 << cap) != 0 {
                sys::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap.into(),
                )
                .step_at(Step::Ambient, cap as usize)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_become_masks() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],
                "effective":["CAP_CHOWN","CAP_KILL"],"permitted":["CAP_CHOWN","CAP_KILL"],
                "inheritable":[],"ambient":["CAP_KILL"]}"#,
        )
        .unwrap();
        let sets = CapSets::new(Some(&caps));
        assert_eq!(sets.bounding, 1 | 1 << 5 | 1 << 10);
        assert_eq!(sets.effective, 1 | 1 << 5);
        assert_eq!(sets.permitted, 1 | 1 << 5);
        assert_eq!(sets.inheritable, 0);
        assert_eq!(sets.ambient, 1 << 5);
        let none = CapSets::new(None);
        assert_eq!((none.bounding, none.effective), (0, 0));
        assert_eq!(number(Capability::CheckpointRestore), 40);
    }
}

//! The spec's block I/O limits (`blockIO`) as the host group of a VM gets them: the VM's
//! host-side I/O (virtio-fs reads and writes, the console) is what they can limit there.

/// The spec's `blockIO` for the host group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoLimits {
    /// cgroup v1 `blkio.weight` (10-1000).
    pub weight: Option<u16>,
    pub throttles: Vec<Throttle>,
}

/// One `major:minor` rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub kind: ThrottleKind,
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKind {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl ThrottleKind {
    /// The cgroup v1 file.
    pub(super) fn v1_file(self) -> &'static str {
        match self {
            ThrottleKind::ReadBps => "blkio.throttle.read_bps_device",
            ThrottleKind::WriteBps => "blkio.throttle.write_bps_device",
            ThrottleKind::ReadIops => "blkio.throttle.read_iops_device",
            ThrottleKind::WriteIops => "blkio.throttle.write_iops_device",
        }
    }

    /// The cgroup v2 `io.max` key.
    pub(super) fn v2_key(self) -> &'static str {
        match self {
            ThrottleKind::ReadBps => "rbps",
            ThrottleKind::WriteBps => "wbps",
            ThrottleKind::ReadIops => "riops",
            ThrottleKind::WriteIops => "wiops",
        }
    }
}

impl IoLimits {
    pub(super) fn from_spec(b: &oci_spec::runtime::LinuxBlockIo) -> IoLimits {
        let kinds = [
            (ThrottleKind::ReadBps, b.throttle_read_bps_device()),
            (ThrottleKind::WriteBps, b.throttle_write_bps_device()),
            (ThrottleKind::ReadIops, b.throttle_read_iops_device()),
            (ThrottleKind::WriteIops, b.throttle_write_iops_device()),
        ];
        let throttles = kinds
            .into_iter()
            .flat_map(|(kind, devices)| {
                devices.iter().flatten().map(move |d| Throttle {
                    kind,
                    major: d.major(),
                    minor: d.minor(),
                    rate: d.rate(),
                })
            })
            .collect();
        IoLimits {
            weight: b.weight().filter(|w| *w > 0),
            throttles,
        }
    }
}

//! The snapshot's contents (`dir/state`): everything but guest memory, which is `dir/memory`.
//!
//! This is read from a file, so nothing in it is trusted: [`VmSnapshot::validate`] checks
//! every count, size and address against the VMM's own layout before restore uses a field,
//! and the per-device restore functions check their parts again against the device.

use serde::{Deserialize, Serialize};

use super::identity::{HostIdentity, ImageId};
use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::fs::TAG_MAX_LEN;
use crate::devices::virtio::mmio::TransportState;
use crate::devices::virtio::vsock::device::VsockState;
use crate::kvm::state::{VcpuState, VmState};
use crate::layout::{virtio_mmio_slot, CMDLINE_MAX_SIZE, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SLOTS};
use crate::memory;

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionFile {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// A virtio device's own part of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// virtio-vsock: its CID and queue state; connections are not carried over.
    Vsock {
        /// The guest's CID.
        guest_cid: u64,
        /// Queue positions and held chains.
        state: VsockState,
    },
    /// virtio-fs before the guest mounted it: only the tag (the share is the restorer's).
    Fs {
        /// The mount tag.
        tag: String,
    },
    /// An empty NIC slot (a slot with a tap cannot be saved): its number among the NIC slots,
    /// which fixes the guest's name for it (`virtio-mmio.<32 + index>`).
    Net {
        /// The slot's number among the NIC slots.
        index: u8,
    },
}

/// One virtio-mmio slot: where it is, its transport's registers, its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioSlotState {
    /// Slot number (the MMIO address and IRQ follow from it; both are checked).
    pub index: u64,
    /// Guest-physical base of the register window.
    pub addr: u64,
    /// IRQ (GSI).
    pub irq: u32,
    /// The transport.
    pub transport: TransportState,
    /// The device.
    pub device: DeviceState,
}

/// A whole VM but its memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// `CARGO_PKG_VERSION` of the VMM that wrote it.
    pub vmm_version: String,
    /// The host it was taken on.
    pub host: HostIdentity,
    /// The kernel + initrd the guest booted.
    pub image: ImageId,
    /// The kernel command line the guest booted with.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Guest RAM regions and their place in the memory file.
    pub memory: Vec<RegionFile>,
    /// Exact size of the memory file.
    pub memory_file_size: u64,
    /// Clock, irqchip, PIT.
    pub vm: VmState,
    /// One per vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// virtio-mmio slots in slot order.
    pub virtio: Vec<VirtioSlotState>,
}

/// What is wrong with a snapshot's contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid snapshot: {0}")]
pub struct Invalid(pub &'static str);

impl VmSnapshot {
    /// Checks everything that does not need KVM or devices: sizes, counts, the memory map
    /// against the VMM's layout for `mem_mib`, slot addresses and IRQs.
    pub fn validate(&self, max_vcpus: usize) -> Result<(), Invalid> {
        let bytes = memory::check_size(self.mem_mib).map_err(|_| Invalid("memory size"))?;
        let expected = memory::ram_regions(bytes);
        if self.memory.len() != expected.len() {
            return Err(Invalid("memory regions"));
        }
        let mut offset = 0u64;
        for (saved, (addr, size)) in self.memory.iter().zip(&expected) {
            if saved.guest_addr != addr.0 || saved.size != *size as u64 {
                return Err(Invalid("memory region layout"));
            }
            if saved.file_offset != offset {
                return Err(Invalid("memory file offsets"));
            }
            offset = offset
                .checked_add(saved.size)
                .ok_or(Invalid("memory file offsets"))?;
        }
        if self.memory_file_size != offset {
            return Err(Invalid("memory file size"));
        }
        if self.vcpus.is_empty() || self.vcpus.len() > max_vcpus {
            return Err(Invalid("vcpu count"));
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(Invalid("command line length"));
        }
        if self.virtio.len() as u64 > VIRTIO_MMIO_SLOTS {
            return Err(Invalid("virtio slot count"));
        }
        for (i, slot) in self.virtio.iter().enumerate() {
            let i = i as u64;
            if slot.index != i
                || slot.addr != virtio_mmio_slot(i)
                || slot.irq != VIRTIO_IRQ_BASE + i as u32
            {
                return Err(Invalid("virtio slot address or irq"));
            }
            if let DeviceState::Fs { tag } = &slot.device {
                if tag.is_empty() || tag.len() > TAG_MAX_LEN {
                    return Err(Invalid("virtio-fs tag"));
                }
            }
        }
        let nets = self.virtio.iter().filter_map(|s| match s.device {
            DeviceState::Net { index } => Some(index),
            _ => None,
        });
        if nets.enumerate().any(|(i, index)| usize::from(index) != i) {
            return Err(Invalid("nic slot numbers"));
        }
        let vsocks = self
            .virtio
            .iter()
            .filter(|s| matches!(s.device, DeviceState::Vsock { .. }))
            .count();
        if vsocks > 1 {
            return Err(Invalid("more than one vsock device"));
        }
        Ok(())
    }

    /// The vsock device's CID, if the VM has one.
    pub fn vsock_cid(&self) -> Option<u64> {
        self.virtio.iter().find_map(|s| match s.device {
            DeviceState::Vsock { guest_cid, .. } => Some(guest_cid),
            DeviceState::Fs { .. } | DeviceState::Net { .. } => None,
        })
    }

    /// The virtio-fs tags, in slot order.
    pub fn fs_tags(&self) -> impl Iterator<Item = &str> {
        self.virtio.iter().filter_map(|s| match &s.device {
            DeviceState::Fs { tag } => Some(tag.as_str()),
            DeviceState::Vsock { .. } | DeviceState::Net { .. } => None,
        })
    }
}

impl VmSnapshot {
    /// A small, valid snapshot (1 vCPU, 32 MiB, a vsock and a virtio-fs slot) for unit tests
    /// and the fuzz target's seed; not a VM anyone can run.
    #[doc(hidden)]
    pub fn sample() -> Self {
        use super::identity::CpuModel;
        use crate::devices::virtio::mmio::{QueuePosition, QueueRegsState};
        use crate::kvm::pod::Pod;
        use crate::kvm::state::CpuidEntry;
        let transport = |device_type| TransportState {
            device_type,
            status: 0xf,
            device_features_sel: 1,
            driver_features_sel: 1,
            driver_features: 1 << 32,
            queue_sel: 0,
            queues: vec![
                QueueRegsState {
                    size: 256,
                    ready: true,
                    desc: 0x10_0000,
                    driver: 0x10_1000,
                    device: 0x10_2000,
                };
                3
            ],
            interrupt_status: 1,
            needs_reset: false,
        };
        let vcpu = VcpuState {
            cpuid: vec![CpuidEntry {
                function: 0,
                index: 0,
                flags: 0,
                eax: 0xd,
                ebx: 1,
                ecx: 2,
                edx: 3,
            }],
            mp_state: Pod(Default::default()),
            regs: Pod(kvm_bindings::kvm_regs {
                rip: 0x1000,
                ..Default::default()
            }),
            sregs: Pod(Default::default()),
            xsave: Pod(Default::default()),
            xcrs: Some(Pod(Default::default())),
            debugregs: Pod(Default::default()),
            lapic: Pod(Default::default()),
            msrs: vec![(0x10, 12345), (0x6e0, 99)],
            events: Pod(Default::default()),
        };
        Self {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            host: HostIdentity {
                profile: "pvm".into(),
                cpu: CpuModel {
                    vendor: "GenuineIntel".into(),
                    family: 6,
                    model: 0x55,
                    stepping: 7,
                },
                tsc_khz: Some(2_000_000),
            },
            image: ImageId([7; 32]),
            cmdline: "console=ttyS0".into(),
            mem_mib: 32,
            memory: vec![RegionFile {
                guest_addr: 0,
                size: 32 << 20,
                file_offset: 0,
            }],
            memory_file_size: 32 << 20,
            vm: VmState {
                clock: Pod(Default::default()),
                pic_master: Pod(Default::default()),
                pic_slave: Pod(Default::default()),
                ioapic: Pod(Default::default()),
                pit: Pod(Default::default()),
            },
            vcpus: vec![vcpu],
            serial: SerialSnapshot {
                registers: [1, 2, 3, 4, 5, 6, 7, 8, 9],
                input: b"in".to_vec(),
            },
            virtio: vec![
                VirtioSlotState {
                    index: 0,
                    addr: virtio_mmio_slot(0),
                    irq: VIRTIO_IRQ_BASE,
                    transport: transport(19),
                    device: DeviceState::Vsock {
                        guest_cid: 3,
                        state: VsockState {
                            queues: vec![QueuePosition::default(); 3],
                            held_tx: vec![4, 5],
                            broken: vec![false; 3],
                        },
                    },
                },
                VirtioSlotState {
                    index: 1,
                    addr: virtio_mmio_slot(1),
                    irq: VIRTIO_IRQ_BASE + 1,
                    transport: transport(26),
                    device: DeviceState::Fs {
                        tag: "share".into(),
                    },
                },
            ],
        }
    }
}

//! Taking a snapshot of a running VM: pause the device thread, then every vCPU (each reads its
//! own state at a point where no I/O is half done), read the VM-wide state and each device's,
//! write guest memory, then the state file. The VM stays paused afterwards.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress};

use super::format::{self, FormatError};
use super::identity::{HostIdentity, ImageId};
use super::memory::{self as memfile, MemoryFileError};
use super::state::{DeviceState, VirtioSlotState, VmSnapshot};
use super::{SnapshotInfo, MEMORY_FILE, STATE_FILE};
use crate::control::{Controller, PauseError};
use crate::devices::manager::MmioSlot;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::fs::{FsMetrics, FsMetricsSnapshot};
use crate::devices::virtio::mmio::{MmioTransport, QueueRegsState};
use crate::devices::virtio::net::{
    self, NetBackend, NetCounters, NetDevice, NetError, NetSlot, NetSlotInfo,
};
use crate::devices::virtio::vsock::VsockDevice;
use crate::event_loop::{EventLoopError, LoopPause};
use crate::kvm::state::{self as kvm_state, StateError};
use crate::memory::GuestMemoryMmap;

/// How long vCPUs and the device thread get to reach their pause points. Both only finish the
/// exit or event at hand, so this is generous.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM is not running (not started yet, or stopped).
    #[error("the vm is not running")]
    NotRunning,
    /// The vCPUs could not be paused.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The device thread could not be paused.
    #[error(transparent)]
    PauseDevices(#[from] EventLoopError),
    /// `dir` already holds a snapshot; snapshots are written once, never over another.
    #[error("{} already holds a snapshot", .0.display())]
    Exists(PathBuf),
    /// The directory could not be created or synced, or the state file written.
    #[error("cannot write the snapshot to {}", .path.display())]
    Write {
        /// What we were writing.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel or initrd could not be hashed for the image id.
    #[error("cannot hash the kernel and initrd")]
    Image(#[source] std::io::Error),
    /// A vCPU's state could not be read.
    #[error("cannot save vcpu {index}")]
    Vcpu {
        /// The vCPU.
        index: usize,
        /// Why.
        #[source]
        source: StateError,
    },
    /// The VM-wide state could not be read.
    #[error("cannot save the vm state")]
    Vm(#[source] StateError),
    /// The guest already started a FUSE session on a share; the server's inode table cannot be
    /// carried into another process.
    #[error(
        "virtio-fs share {0:?} is in use by the guest (FUSE session started): \
         snapshot before the guest mounts it"
    )]
    FsInUse(String),
    /// A NIC slot has a tap: a tap cannot be carried into another process, and a template
    /// is taken before anything container-specific.
    #[error("nic slot {0} has a tap attached: snapshot before attaching nics")]
    NetAttached(u8),
    /// Guest memory could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// The state could not be encoded.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A virtio-mmio slot as the snapshot sees it.
pub(crate) struct VirtioHandle {
    pub slot: MmioSlot,
    pub transport: Arc<Mutex<MmioTransport>>,
    pub device: VirtioKind,
}

/// The device behind a slot.
pub(crate) enum VirtioKind {
    Vsock(Arc<Mutex<VsockDevice>>),
    Fs {
        tag: String,
        metrics: Arc<FsMetrics>,
    },
    Net(Arc<Mutex<NetDevice>>),
}

/// Where the image id of a snapshot comes from.
pub(crate) enum ImageSource {
    /// Given by the VM's owner (or read from the snapshot it was restored from).
    Known(ImageId),
    /// Hashed from these files when a snapshot is taken.
    Files {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
    },
}

/// Everything a snapshot of one VM reads; shared by the running VM and its handles.
pub(crate) struct SnapshotSource {
    pub vm_fd: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub control: Arc<Controller>,
    pub loop_pause: Arc<LoopPause>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub virtio: Vec<VirtioHandle>,
    pub host: HostIdentity,
    pub image: ImageSource,
    pub cmdline: String,
    pub mem_mib: u64,
    /// One snapshot at a time.
    pub busy: Mutex<()>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotSource {
    /// Takes a snapshot into `dir` (see the module docs). The VM is left paused, also when
    /// writing fails; only a failure to pause resumes it.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let _one = lock(&self.busy);
        let started = Instant::now();
        if self.control.is_stopping() {
            return Err(SnapshotError::NotRunning);
        }
        self.check_no_nic()?;
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(SnapshotError::Exists(dir.to_owned()));
        }
        let image = match &self.image {
            ImageSource::Known(id) => *id,
            ImageSource::Files { kernel, initrd } => {
                ImageId::of_files(kernel, initrd.as_deref()).map_err(SnapshotError::Image)?
            }
        };
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Write {
            path: dir.to_owned(),
            source,
        })?;

        self.loop_pause.pause(PAUSE_TIMEOUT)?;
        let vcpus = match self.control.pause(PAUSE_TIMEOUT) {
            Ok(v) => v,
            Err(e) => {
                self.loop_pause.resume();
                return Err(e.into());
            }
        };
        let paused = Instant::now();
        let vcpus = vcpus
            .into_iter()
            .enumerate()
            .map(|(index, s)| s.map_err(|source| SnapshotError::Vcpu { index, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let vm = kvm_state::save_vm(&self.vm_fd).map_err(SnapshotError::Vm)?;
        let serial = lock(&self.serial).snapshot();
        let virtio = self
            .virtio
            .iter()
            .map(|h| self.save_slot(h))
            .collect::<Result<Vec<_>, _>>()?;

        let written = memfile::write(&self.mem, &dir.join(MEMORY_FILE))?;
        let snapshot = VmSnapshot {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            host: self.host.clone(),
            image,
            cmdline: self.cmdline.clone(),
            mem_mib: self.mem_mib,
            memory: written.regions,
            memory_file_size: written.file_size,
            vm,
            vcpus,
            serial,
            virtio,
        };
        let bytes = format::encode(&snapshot)?;
        write_state(dir, &bytes)?;
        let info = SnapshotInfo {
            paused: paused.elapsed(),
            total: started.elapsed(),
            memory_file_size: written.file_size,
            memory_data_bytes: written.data_bytes,
            state_bytes: bytes.len() as u64,
        };
        tracing::info!(?info, dir = %dir.display(), "snapshot written");
        Ok(info)
    }

    /// Whether every vsock device is idle (see [`VsockDevice::is_idle`]).
    pub fn vsock_idle(&self) -> bool {
        self.virtio.iter().all(|h| match &h.device {
            VirtioKind::Vsock(dev) => lock(dev).is_idle(),
            VirtioKind::Fs { .. } | VirtioKind::Net(_) => true,
        })
    }

    /// The NIC slots, in slot order.
    fn net_slots(&self) -> Vec<NetSlot> {
        self.virtio
            .iter()
            .filter_map(|h| match &h.device {
                VirtioKind::Net(device) => Some(NetSlot {
                    transport: h.transport.clone(),
                    device: device.clone(),
                    mmio_addr: h.slot.addr,
                    irq: h.slot.irq,
                }),
                _ => None,
            })
            .collect()
    }

    /// Attaches a tap to the next free NIC slot (see [`net::attach`]); never during a
    /// snapshot.
    pub fn attach_net(&self, backend: NetBackend) -> Result<NetSlotInfo, NetError> {
        let _one = lock(&self.busy);
        if self.control.is_stopping() {
            return Err(NetError::NotRunning);
        }
        net::attach(&self.net_slots(), backend)
    }

    /// The counters of NIC slot `index`.
    pub fn net_counters(&self, index: u8) -> Option<NetCounters> {
        net::counters(&self.net_slots(), index)
    }

    /// Refuses a snapshot while a NIC slot has a tap (checked before anything is paused).
    fn check_no_nic(&self) -> Result<(), SnapshotError> {
        for h in &self.virtio {
            if let VirtioKind::Net(device) = &h.device {
                net_slot_state(&lock(device))?;
            }
        }
        Ok(())
    }

    fn save_slot(&self, h: &VirtioHandle) -> Result<VirtioSlotState, SnapshotError> {
        let transport = lock(&h.transport);
        let device = match &h.device {
            VirtioKind::Vsock(dev) => {
                let dev = lock(dev);
                if dev.connections() > 0 {
                    tracing::info!(
                        connections = dev.connections(),
                        "snapshot: vsock connections will be reset in restored vms"
                    );
                }
                DeviceState::Vsock {
                    guest_cid: dev.guest_cid(),
                    state: dev.save_state(),
                }
            }
            VirtioKind::Fs { tag, metrics } => {
                self.check_fs_unused(tag, metrics, &transport)?;
                DeviceState::Fs { tag: tag.clone() }
            }
            VirtioKind::Net(device) => net_slot_state(&lock(device))?,
        };
        Ok(VirtioSlotState {
            index: h.slot.index,
            addr: h.slot.addr,
            irq: h.slot.irq,
            transport: transport.save_state(),
            device,
        })
    }

    fn check_fs_unused(
        &self,
        tag: &str,
        metrics: &FsMetrics,
        transport: &MmioTransport,
    ) -> Result<(), SnapshotError> {
        let queues = (0..).map_while(|i| transport.queue_regs(i));
        if share_untouched(&metrics.snapshot(), queues, &self.mem) {
            Ok(())
        } else {
            Err(SnapshotError::FsInUse(tag.to_owned()))
        }
    }
}

/// A NIC slot is saved empty or not at all: a tap cannot be carried into another process.
fn net_slot_state(device: &NetDevice) -> Result<DeviceState, SnapshotError> {
    if device.is_attached() {
        return Err(SnapshotError::NetAttached(device.index()));
    }
    Ok(DeviceState::Net {
        index: device.index(),
    })
}

/// A share may be snapshotted only if the guest never sent it a request: FUSE_INIT is always
/// the first, so no request means no session (and nothing in flight). Checked on the device's
/// counters and on each ready queue's available ring `idx`, which the driver bumps for every
/// request it posts (the device may not have seen a notification yet).
fn share_untouched(
    metrics: &FsMetricsSnapshot,
    queues: impl Iterator<Item = QueueRegsState>,
    mem: &GuestMemoryMmap,
) -> bool {
    if metrics.total_requests() > 0 || metrics.notifications > 0 {
        return false;
    }
    queues.filter(|q| q.ready).all(|q| {
        mem.read_obj::<u16>(GuestAddress(q.driver.wrapping_add(2)))
            .is_ok_and(|idx| idx == 0)
    })
}

/// Writes the state file under a temporary name, syncs it, renames it into place and syncs
/// the directory: a directory with a `state` file holds a complete snapshot.
fn write_state(dir: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Write { path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(err(&tmp))?;
    f.write_all(bytes).map_err(err(&tmp))?;
    f.sync_all().map_err(err(&tmp))?;
    let state = dir.join(STATE_FILE);
    std::fs::rename(&tmp, &state).map_err(err(&state))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_slot_with_a_tap_cannot_be_saved() {
        let empty = NetDevice::new(2).unwrap();
        assert_eq!(
            net_slot_state(&empty).unwrap(),
            DeviceState::Net { index: 2 }
        );
        // A tap in a namespace of this test's own (needs root).
        std::thread::spawn(|| {
            // SAFETY: unshare with CLONE_NEWNET changes only this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let mut device = NetDevice::new(1).unwrap();
            let tap = crate::devices::virtio::net::Tap::open("bhnet-s0").unwrap();
            device
                .attach(NetBackend::new(tap, [2, 0, 0, 0, 0, 1]))
                .unwrap();
            let e = net_slot_state(&device).unwrap_err();
            assert!(matches!(e, SnapshotError::NetAttached(1)), "{e}");
            assert_eq!(
                e.to_string(),
                "nic slot 1 has a tap attached: snapshot before attaching nics"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_share_is_untouched_until_the_guest_posts_or_sends_a_request() {
        let mem = crate::memory::create(32).unwrap();
        let queue = QueueRegsState {
            size: 16,
            ready: true,
            desc: 0x1000,
            driver: 0x2000,
            device: 0x3000,
        };
        let fresh = FsMetrics::default().snapshot();
        assert!(share_untouched(&fresh, [queue].into_iter(), &mem));
        // The driver posted a request (avail idx 1) the device has not seen.
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        assert!(!share_untouched(&fresh, [queue].into_iter(), &mem));
        let idle = QueueRegsState {
            ready: false,
            ..queue
        };
        assert!(share_untouched(&fresh, [idle].into_iter(), &mem));
        // A request was served (FUSE_INIT is opcode 26).
        let served = FsMetrics::default();
        served.count_request(26);
        assert!(!share_untouched(
            &served.snapshot(),
            std::iter::empty(),
            &mem
        ));
    }
}

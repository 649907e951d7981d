//! The restore recipe, top-down, mirroring the boot recipe in [`crate::builder`]: read and check
//! the snapshot → map guest memory from its file → create the VM and vCPUs → check the host →
//! attach the devices in their saved slots with their saved state → restore the clock, irqchip
//! and PIT → restore each vCPU. Running it is [`crate::Vm::run`], which resumes the guest
//! where the snapshot paused it.
//!
//! The snapshot is untrusted input: its checksum and size are checked before any field is
//! read, every field is checked against this VMM's layout and this host before it is used,
//! and any failure returns an error with nothing left running (the caller can cold-boot).

use std::path::PathBuf;
use std::time::Instant;

use crate::builder::{self, BuildError};
use crate::compat::HostProfile;
use crate::config::RestoreConfig;
use crate::control::Controller;
use crate::devices::manager::DeviceManager;
use crate::devices::virtio::mmio::{MmioError, QueuePosition};
use crate::devices::virtio::vsock::VsockError;
use crate::devices::virtio::ActivateError;
use crate::event_loop::EventLoop;
use crate::kvm::state::{self as kvm_state, StateError};
use crate::kvm::vcpu::Vcpu;
use crate::kvm::{self, KvmError};
use crate::snapshot::format::{self, FormatError};
use crate::snapshot::identity::{self, HostIdentity, Mismatch};
use crate::snapshot::memory::{self as memfile, MemoryFileError};
use crate::snapshot::save::{ImageSource, VirtioHandle, VirtioKind};
use crate::snapshot::state::{DeviceState, Invalid, VirtioSlotState, VmSnapshot};
use crate::snapshot::{MEMORY_FILE, STATE_FILE};
use crate::vm::{Assembly, Vm};

/// Why a snapshot could not be restored. The caller's fallback is a cold boot.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state file is missing, corrupt, truncated or of another format.
    #[error("snapshot {}", .dir.display())]
    State {
        /// The snapshot directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: FormatError,
    },
    /// The snapshot is for another VMM, host, CPU or image.
    #[error("snapshot does not fit")]
    Mismatch(#[from] Mismatch),
    /// The snapshot's contents do not fit this VMM's layout.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The restore configuration does not match the snapshot's devices.
    #[error("{0}")]
    Devices(String),
    /// The memory file.
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    /// KVM setup.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// VM-wide KVM state.
    #[error(transparent)]
    State2(#[from] StateError),
    /// A vCPU's state.
    #[error("cannot restore vcpu {index}")]
    Vcpu {
        /// The vCPU.
        index: usize,
        /// Why.
        #[source]
        source: StateError,
    },
    /// A device, as the boot recipe builds it.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A virtio-mmio transport's saved registers.
    #[error("cannot restore virtio-mmio slot {slot}")]
    Transport {
        /// The slot.
        slot: u64,
        /// Why.
        #[source]
        source: MmioError,
    },
    /// The vsock device's saved state.
    #[error("cannot restore the vsock device")]
    Vsock(#[from] VsockError),
}

impl From<crate::event_loop::EventLoopError> for RestoreError {
    fn from(e: crate::event_loop::EventLoopError) -> Self {
        RestoreError::Build(e.into())
    }
}

/// Restores the VM in `config.dir` (see the module docs).
pub fn restore_vm(config: &RestoreConfig) -> Result<Vm, RestoreError> {
    let started = Instant::now();
    let snap =
        format::read(&config.dir.join(STATE_FILE)).map_err(|source| RestoreError::State {
            dir: config.dir.clone(),
            source,
        })?;
    check_caller(&snap, config)?;
    let kvm = kvm::open(&config.kvm_device)?;
    kvm_state::check_caps(&kvm)?;
    snap.validate(kvm::max_vcpus(&kvm))?;
    let profile = config.profile.unwrap_or_else(HostProfile::probe);
    let base_cpuid = builder::host_cpuid(&kvm, profile)?;

    let mem = memfile::map(
        &config.dir.join(MEMORY_FILE),
        &snap.memory,
        snap.memory_file_size,
    )?;
    let vm = kvm::create_vm(&kvm, &mem)?;
    let fds = kvm::create_vcpus(&kvm, &vm, snap.vcpus.len())?;
    let host = HostIdentity::probe(&kvm, profile, &base_cpuid, &fds[0]);
    identity::check_host(&snap.host, &host)?;
    let save = builder::save_spec(&kvm, &base_cpuid, fds.len() as u8)?;
    check_cpuid(&snap, &save.cpuid)?;
    let control = Controller::new(fds.len());

    let mut devices = DeviceManager::new(EventLoop::new()?);
    let serial = builder::attach_serial(
        &mut devices,
        &vm,
        &control,
        &config.console,
        config.console_max_bytes,
        config.console_input,
        Some(&snap.serial),
    )?;
    builder::attach_i8042(&mut devices, &control)?;
    builder::attach_io_delay_sink(&mut devices, &vm)?;
    let mut virtio = Vec::new();
    for saved in &snap.virtio {
        let handle = match &saved.device {
            DeviceState::Vsock { .. } => {
                let vsock = config.vsock.as_ref().ok_or_else(no_vsock)?;
                builder::attach_vsock_device(&mut devices, &vm, &mem, vsock)?
            }
            DeviceState::Fs { tag } => {
                let share = config.fs.iter().find(|s| &s.tag == tag);
                let share = share.ok_or_else(|| missing_share(tag))?;
                builder::attach_fs_device(&mut devices, &vm, &mem, share, &control)?
            }
            DeviceState::Net { index } => {
                builder::attach_net_slot(&mut devices, &vm, &mem, *index)?
            }
        };
        restore_slot(&handle, saved)?;
        virtio.push(handle);
    }

    kvm_state::restore_vm(&vm, &snap.vm)?;
    let vcpus = fds
        .into_iter()
        .zip(&snap.vcpus)
        .enumerate()
        .map(|(index, (fd, state))| {
            kvm_state::restore_vcpu(&fd, state)
                .map_err(|source| RestoreError::Vcpu { index, source })?;
            Ok(Vcpu::new(index as u8, fd))
        })
        .collect::<Result<Vec<_>, RestoreError>>()?;
    // Only now: setting the interrupt controller and the LAPICs would overwrite it.
    for handle in &virtio {
        let transport = handle.transport.lock().unwrap_or_else(|p| p.into_inner());
        transport
            .interrupt()
            .raise_if_pending()
            .map_err(|e| RestoreError::Transport {
                slot: handle.slot.index,
                source: MmioError::Activate(ActivateError::Signal(e)),
            })?;
    }

    builder::log_layout(&mem, profile, &snap.cmdline);
    tracing::info!(
        dir = %config.dir.display(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "snapshot restored"
    );
    Ok(Vm::assemble(Assembly {
        kvm,
        vm_fd: vm,
        mem,
        vcpus,
        devices,
        control,
        serial,
        virtio,
        host,
        image: ImageSource::Known(snap.image),
        cmdline: snap.cmdline,
        profile,
        mem_mib: snap.mem_mib,
        save,
    }))
}

/// What the caller decides: the VMM version, the image, and a device configuration matching
/// the snapshot's devices (checked before KVM is touched).
fn check_caller(snap: &VmSnapshot, config: &RestoreConfig) -> Result<(), RestoreError> {
    let ours = env!("CARGO_PKG_VERSION");
    if snap.vmm_version != ours {
        return Err(Mismatch::VmmVersion {
            found: snap.vmm_version.clone(),
            expected: ours.to_owned(),
        }
        .into());
    }
    if snap.image != config.expected_image {
        return Err(Mismatch::Image {
            found: snap.image,
            expected: config.expected_image,
        }
        .into());
    }
    if snap.vsock_cid().is_none() && config.vsock.is_some() {
        return Err(RestoreError::Devices(
            "the snapshot has no vsock device".into(),
        ));
    }
    let tags: Vec<&str> = snap.fs_tags().collect();
    for share in &config.fs {
        if !tags.contains(&share.tag.as_str()) {
            return Err(RestoreError::Devices(format!(
                "the snapshot has no virtio-fs tag {:?}",
                share.tag
            )));
        }
    }
    crate::devices::virtio::fs::FsConfig::validate_all(&config.fs).map_err(BuildError::from)?;
    Ok(())
}

fn no_vsock() -> RestoreError {
    RestoreError::Devices("the snapshot has a vsock device: give it a socket".into())
}

fn missing_share(tag: &str) -> RestoreError {
    RestoreError::Devices(format!(
        "the snapshot has virtio-fs tag {tag:?}: give it a directory"
    ))
}

/// Each vCPU must have been given exactly the CPUID table this host gives it now.
fn check_cpuid(snap: &VmSnapshot, ours: &[Vec<kvm_state::CpuidEntry>]) -> Result<(), RestoreError> {
    for (vcpu, (saved, now)) in snap.vcpus.iter().zip(ours).enumerate() {
        let mut saved_sorted = saved.cpuid.clone();
        saved_sorted.sort();
        if &saved_sorted != now {
            let leaf = saved_sorted
                .iter()
                .zip(now)
                .find(|(a, b)| a != b)
                .map_or(0, |(a, _)| a.function);
            return Err(Mismatch::Cpuid { vcpu, leaf }.into());
        }
    }
    Ok(())
}

/// Loads a slot's transport and device state into the freshly attached `handle`.
fn restore_slot(handle: &VirtioHandle, saved: &VirtioSlotState) -> Result<(), RestoreError> {
    let slot = handle.slot;
    if (slot.index, slot.addr, slot.irq) != (saved.index, saved.addr, saved.irq) {
        return Err(Invalid("virtio slot order").into());
    }
    let transport_err = |source| RestoreError::Transport {
        slot: slot.index,
        source,
    };
    let mut transport = handle.transport.lock().unwrap_or_else(|p| p.into_inner());
    match (&handle.device, &saved.device) {
        (VirtioKind::Vsock(device), DeviceState::Vsock { state, .. }) => {
            transport
                .restore_state(&saved.transport, &state.queues)
                .map_err(transport_err)?;
            drop(transport);
            device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .resume_from_snapshot(state)?;
        }
        (VirtioKind::Fs { .. }, DeviceState::Fs { .. })
        | (VirtioKind::Net(_), DeviceState::Net { .. }) => {
            // Never used by a driver (checked when saved; an empty NIC slot offers no
            // features, so no driver gets past FEATURES_OK): every queue at its start.
            let start = vec![QueuePosition::default(); saved.transport.queues.len()];
            transport
                .restore_state(&saved.transport, &start)
                .map_err(transport_err)?;
        }
        _ => return Err(Invalid("virtio device kind").into()),
    }
    Ok(())
}

//! The boot recipe, top-down: memory → VM → vCPUs → kernel and initrd → devices → command line
//! and boot structures → vCPU state. Each device is attached by one small function. Starting the
//! vCPUs is [`crate::Vm::run`].

use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

use crate::boot::{self, cmdline, loader, msr, SystemSetup, VcpuSetup};
use crate::compat::HostProfile;
use crate::config::VmConfig;
use crate::control::Controller;
use crate::devices::i8042::I8042;
use crate::devices::manager::{DeviceError, DeviceManager};
use crate::devices::serial::{
    ConsoleOut, ConsoleOutput, SerialDevice, SerialError, SerialSnapshot, StdinInput,
};
use crate::devices::virtio::fs::{FsConfig, FsDevice, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport};
use crate::devices::virtio::net::{NetDevice, NetError, PLATFORM_ID_BASE};
use crate::devices::virtio::vsock::{VsockConfig, VsockDevice, VsockError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::kvm::state::{self as kvm_state, cpuid_entries, SaveSpec, StateError};
use crate::kvm::vcpu::Vcpu;
use crate::kvm::{self, KvmError};
use crate::layout::{COM1_IRQ, COM1_PORT, I8042_PORT, I8042_PORT_LEN, IO_DELAY_PORT};
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::snapshot::identity::HostIdentity;
use crate::snapshot::save::{ImageSource, VirtioHandle, VirtioKind};
use crate::vm::{Assembly, Vm};

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Zero vCPUs.
    #[error("a vm needs at least one vcpu")]
    NoVcpus,
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM setup.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Kernel, initrd, command line, boot structures, vCPU state.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Device wiring.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The console.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// The event loop.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// The vsock device.
    #[error("cannot create the vsock device")]
    Vsock(#[from] VsockError),
    /// A virtio-fs device (or its share).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A NIC slot.
    #[error("cannot create a nic slot")]
    Net(#[from] NetError),
    /// A virtio-mmio transport.
    #[error("cannot create a virtio-mmio transport")]
    Transport(#[from] MmioError),
    /// KVM's CPUID or MSR lists could not be read.
    #[error("cannot read {what} from kvm")]
    HostQuery {
        /// Which list.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// What snapshots need from KVM could not be read.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<loader::LoaderError> for BuildError {
    fn from(e: loader::LoaderError) -> Self {
        BuildError::Boot(e.into())
    }
}

impl From<cmdline::CmdlineError> for BuildError {
    fn from(e: cmdline::CmdlineError) -> Self {
        BuildError::Boot(e.into())
    }
}

/// Builds a VM ready to run. Inputs are checked before anything is allocated, so a bad path or
/// size is reported first.
pub fn build_vm(config: &VmConfig) -> Result<Vm, BuildError> {
    if config.vcpus == 0 {
        return Err(BuildError::NoVcpus);
    }
    let mem_bytes = memory::check_size(config.mem_mib)?;
    let mut kernel = loader::KernelImage::open(&config.kernel)?;
    let mut initrd = match &config.initrd {
        Some(path) => Some(loader::InitrdImage::open(path)?),
        None => None,
    };
    let profile = config.profile.unwrap_or_else(HostProfile::probe);
    FsConfig::validate_all(&config.fs)?;
    for share in &config.fs {
        share.canonical_dir()?;
    }

    let kvm = kvm::open(&config.kvm_device)?;
    let mem = memory::create(config.mem_mib)?;
    // Copying the kernel and initrd is most of our start-up time, and creating the VM (memory
    // slots, irqchip, PIT, vCPUs) is most of the rest: do them at the same time.
    let (vm_and_vcpus, images) = std::thread::scope(|scope| {
        let loading = scope.spawn(|| load_images(&mem, &mut kernel, initrd.as_mut()));
        let vm = kvm::create_vm(&kvm, &mem).and_then(|vm| {
            let vcpus = kvm::create_vcpus(&kvm, &vm, usize::from(config.vcpus))?;
            Ok((vm, vcpus))
        });
        let images = loading
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (vm, images)
    });
    let (vm, vcpu_fds) = vm_and_vcpus?;
    let (loaded, initrd) = images?;
    let control = Controller::new(vcpu_fds.len());

    let mut devices = DeviceManager::new(EventLoop::new()?);
    let serial = attach_serial(
        &mut devices,
        &vm,
        &control,
        &config.console,
        config.console_max_bytes,
        config.console_input,
        None,
    )?;
    attach_i8042(&mut devices, &control)?;
    attach_io_delay_sink(&mut devices, &vm)?;
    let mut virtio = Vec::new();
    if let Some(vsock) = &config.vsock {
        virtio.push(attach_vsock_device(&mut devices, &vm, &mem, vsock)?);
    }
    for share in &config.fs {
        virtio.push(attach_fs_device(&mut devices, &vm, &mem, share, &control)?);
    }
    // Last, so the other devices keep their addresses, IRQs and guest ids.
    for index in 0..config.net_slots {
        virtio.push(attach_net_slot(&mut devices, &vm, &mem, index)?);
    }

    let cmdline = cmdline::build(
        profile.kernel_params(),
        config.cmdline.as_deref(),
        devices.virtio_devices(),
    )?;
    let cr3 = boot::configure_system(&SystemSetup {
        mem: &mem,
        kernel: &loaded,
        cmdline: &cmdline,
        initrd,
        mem_bytes,
        num_cpus: vcpu_fds.len(),
    })?;

    let base_cpuid = host_cpuid(&kvm, profile)?;
    let host = HostIdentity::probe(&kvm, profile, &base_cpuid, &vcpu_fds[0]);
    let (vcpus, save) = configure_vcpus(&kvm, vcpu_fds, &base_cpuid, cr3, loaded.entry)?;
    let cmdline = cmdline::render(&cmdline)?;
    log_layout(&mem, profile, &cmdline);
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
        image: match config.image_id {
            Some(id) => ImageSource::Known(id),
            None => ImageSource::Files {
                kernel: config.kernel.clone(),
                initrd: config.initrd.clone(),
            },
        },
        cmdline,
        profile,
        mem_mib: config.mem_mib,
        save,
    }))
}

/// Copies the kernel and the initrd (if any) into guest memory.
fn load_images(
    mem: &GuestMemoryMmap,
    kernel: &mut loader::KernelImage,
    initrd: Option<&mut loader::InitrdImage>,
) -> Result<(loader::LoadedKernel, Option<(u64, u32)>), BuildError> {
    let loaded = loader::load_kernel(mem, kernel)?;
    let initrd = match initrd {
        Some(image) => Some(loader::load_initrd(mem, image, &loaded)?),
        None => None,
    };
    Ok((loaded, initrd))
}

/// COM1, with its interrupt on an irqfd, its output capped at `console_max_bytes` (a file) and
/// watched for a guest panic (reported to `control`), and, if asked, our stdin as its input; in
/// the state `saved` when restoring.
pub(crate) fn attach_serial(
    devices: &mut DeviceManager,
    vm: &VmFd,
    control: &Arc<Controller>,
    console: &ConsoleOutput,
    console_max_bytes: Option<u64>,
    console_input: bool,
    saved: Option<&SerialSnapshot>,
) -> Result<Arc<Mutex<SerialDevice>>, BuildError> {
    let irq = devices.irqfd(vm, COM1_IRQ)?;
    let out = ConsoleOut::open(console, console_max_bytes)?.watch_for_panic(control.clone());
    let device = match saved {
        Some(state) => SerialDevice::from_snapshot(irq, out, state)?,
        None => SerialDevice::new(irq, out),
    };
    let serial = Arc::new(Mutex::new(device));
    devices.add_pio_device(serial.clone(), COM1_PORT, 8)?;
    if console_input {
        devices.add_subscriber(Arc::new(Mutex::new(StdinInput::new(serial.clone()))));
    }
    Ok(serial)
}

/// The i8042, whose reset command ends the VM. It has no other state (vm-superio's device
/// holds only the reset trigger), so a restore attaches a new one.
pub(crate) fn attach_i8042(
    devices: &mut DeviceManager,
    control: &Arc<Controller>,
) -> Result<(), BuildError> {
    let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
    Ok(devices.add_pio_device(i8042, I8042_PORT, I8042_PORT_LEN)?)
}

/// Port 0x80, which Linux writes for I/O delays, swallowed inside KVM.
pub(crate) fn attach_io_delay_sink(
    devices: &mut DeviceManager,
    vm: &VmFd,
) -> Result<(), BuildError> {
    Ok(devices.sink_pio_writes(vm, IO_DELAY_PORT)?)
}

/// A virtio-vsock device behind a virtio-mmio transport; the device itself handles its queue
/// eventfds and host sockets on the event loop.
pub(crate) fn attach_vsock_device(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VsockConfig,
) -> Result<VirtioHandle, BuildError> {
    let device = Arc::new(Mutex::new(VsockDevice::new(config)?));
    let (slot, irq) = devices.allocate_virtio_slot(vm)?;
    let transport = MmioTransport::new(mem.clone(), device.clone(), irq)?;
    let transport = Arc::new(Mutex::new(transport));
    devices.attach_virtio_mmio(vm, slot, transport.clone(), Some(device.clone()), None)?;
    Ok(VirtioHandle {
        slot,
        transport,
        device: VirtioKind::Vsock(device),
    })
}

/// A virtio-fs device behind a virtio-mmio transport. The device serves the share on its own
/// confined worker thread (not the event loop, which keeps the host's view of the file system),
/// so there is no event-loop subscriber. The handle carries the tag and the device's counters.
pub(crate) fn attach_fs_device(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &FsConfig,
    control: &Arc<Controller>,
) -> Result<VirtioHandle, BuildError> {
    let device = FsDevice::new(config, control.clone())?;
    let metrics = device.metrics();
    let (slot, irq) = devices.allocate_virtio_slot(vm)?;
    let transport = MmioTransport::new(mem.clone(), Arc::new(Mutex::new(device)), irq)?;
    let transport = Arc::new(Mutex::new(transport));
    devices.attach_virtio_mmio(vm, slot, transport.clone(), None, None)?;
    Ok(VirtioHandle {
        slot,
        transport,
        device: VirtioKind::Fs {
            tag: config.tag.clone(),
            metrics,
        },
    })
}

/// An empty NIC slot: a virtio-net device without a tap behind a virtio-mmio transport, with
/// the explicit guest platform-device id `virtio-mmio.<32 + index>`, so the host can tell the
/// guest which device to bind once a tap is attached ([`crate::devices::virtio::net`]).
pub(crate) fn attach_net_slot(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    index: u8,
) -> Result<VirtioHandle, BuildError> {
    let device = Arc::new(Mutex::new(NetDevice::new(index)?));
    let (slot, irq) = devices.allocate_virtio_slot(vm)?;
    let transport = MmioTransport::new(mem.clone(), device.clone(), irq)?;
    let transport = Arc::new(Mutex::new(transport));
    let id = PLATFORM_ID_BASE + u32::from(index);
    devices.attach_virtio_mmio(vm, slot, transport.clone(), Some(device.clone()), Some(id))?;
    Ok(VirtioHandle {
        slot,
        transport,
        device: VirtioKind::Net(device),
    })
}

/// KVM's supported CPUID table with the host profile's adjustments: the base every vCPU's
/// table is normalised from.
pub(crate) fn host_cpuid(kvm: &Kvm, profile: HostProfile) -> Result<CpuId, BuildError> {
    let mut cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| BuildError::HostQuery {
            what: "the supported cpuid",
            source,
        })?;
    profile.adjust_cpuid(&mut cpuid);
    Ok(cpuid)
}

/// What each vCPU needs to save its state for a snapshot: the MSRs to read, the CPUID table
/// each vCPU got (normalised from `base`), whether there are XCRs.
pub(crate) fn save_spec(kvm: &Kvm, base: &CpuId, vcpus: u8) -> Result<SaveSpec, BuildError> {
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    Ok(SaveSpec {
        msrs: kvm_state::msrs_to_save(kvm)?,
        cpuid: (0..vcpus)
            .map(|i| cpuid_entries(&boot::vcpu_cpuid(base, i, vcpus, tsc_deadline)))
            .collect(),
        xcrs: kvm.check_extension(Cap::Xcrs),
    })
}

/// CPUID, MSRs and registers for every vCPU; and how each will save its state.
fn configure_vcpus(
    kvm: &Kvm,
    fds: Vec<VcpuFd>,
    cpuid: &CpuId,
    cr3: u64,
    entry: u64,
) -> Result<(Vec<Vcpu>, SaveSpec), BuildError> {
    let supported_msrs = kvm
        .get_msr_index_list()
        .map_err(|source| BuildError::HostQuery {
            what: "the msr list",
            source,
        })?;
    let msrs = msr::boot_msrs(supported_msrs.as_slice());
    let save = save_spec(kvm, cpuid, fds.len() as u8)?;
    let setup = VcpuSetup {
        cpuid,
        msrs: &msrs,
        tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        cr3,
        entry,
        num_cpus: fds.len() as u8,
    };
    let vcpus = fds
        .into_iter()
        .enumerate()
        .map(|(i, fd)| {
            boot::configure_vcpu(&fd, i as u8, &setup)?;
            Ok(Vcpu::new(i as u8, fd))
        })
        .collect::<Result<_, BuildError>>()?;
    Ok((vcpus, save))
}

/// Logs where guest memory lives in this process (the boot benchmark reads it to separate guest
/// memory from the VMM's own) and what the guest is told.
pub(crate) fn log_layout(mem: &GuestMemoryMmap, profile: HostProfile, cmdline: &str) {
    use vm_memory::{GuestMemory, GuestMemoryRegion};
    for region in mem.iter() {
        tracing::debug!(
            host_addr = format_args!("{:#x}", region.as_ptr() as usize),
            guest_addr = format_args!("{:#x}", region.start_addr().0),
            size = region.len(),
            "guest memory"
        );
    }
    tracing::debug!(profile = profile.name(), cmdline, "boot");
}

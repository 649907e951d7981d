//! A built VM and how it runs: vCPU threads plus the device event loop, until the guest is
//! done, a vCPU dies, or someone stops it through a [`VmHandle`].

use std::sync::{Arc, Mutex};

use kvm_ioctls::{Kvm, VmFd};

use crate::builder::{build_vm, BuildError};
use crate::compat::HostProfile;
use crate::config::{RestoreConfig, VmConfig};
use crate::control::{Controller, ExitReason, VmHandle};
use crate::devices::manager::DeviceManager;
use crate::devices::manager::Devices;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::fs::FsMetrics;
use crate::devices::virtio::vsock::VsockCounters;
use crate::event_loop::EventLoopError;
use crate::kvm::kick;
use crate::kvm::state::SaveSpec;
use crate::kvm::vcpu::{Vcpu, VcpuContext};
use crate::memory::GuestMemoryMmap;
use crate::restore::{restore_vm, RestoreError};
use crate::snapshot::identity::HostIdentity;
use crate::snapshot::save::{ImageSource, SnapshotSource, VirtioHandle, VirtioKind};

/// Errors that keep a built VM from running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The vCPU kick signal handler could not be installed.
    #[error("cannot install the vcpu kick handler")]
    KickHandler(#[source] std::io::Error),
    /// The event loop did not start.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A vCPU thread did not start.
    #[error("cannot start a vcpu thread")]
    Spawn(#[source] std::io::Error),
    /// The threads' syscall allow-lists could not be built.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Everything the builder hands to a [`Vm`].
struct VmParts {
    pub kvm: Kvm,
    pub vm_fd: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub devices: Devices,
    pub control: Arc<Controller>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub cmdline: String,
    pub profile: HostProfile,
    /// Counters of each virtio-fs device, by tag.
    pub fs_metrics: Vec<(String, Arc<FsMetrics>)>,
    /// Counters of the vsock device, if there is one.
    pub vsock_counters: Option<VsockCounters>,
    /// How paused vCPUs save their state.
    pub save: Arc<SaveSpec>,
    /// What a snapshot reads; handles reach it while the VM runs.
    pub snapshot: Arc<SnapshotSource>,
}

/// What the boot recipe ([`crate::builder`]) and the restore recipe ([`crate::restore`]) both
/// end with; [`Vm::assemble`] wires it into a [`Vm`].
pub(crate) struct Assembly {
    pub kvm: Kvm,
    pub vm_fd: VmFd,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub devices: DeviceManager,
    pub control: Arc<Controller>,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The virtio-mmio slots, in slot order.
    pub virtio: Vec<VirtioHandle>,
    pub host: HostIdentity,
    pub image: ImageSource,
    pub cmdline: String,
    pub profile: HostProfile,
    pub mem_mib: u64,
    pub save: SaveSpec,
}

/// A VM, built and ready to run.
pub struct Vm {
    parts: VmParts,
    /// Whether the vCPU and event-loop threads install their seccomp allow-lists.
    seccomp: bool,
}

impl Vm {
    /// Builds a VM from `config` (see [`crate::builder`] for the recipe).
    pub fn build(config: &VmConfig) -> Result<Self, BuildError> {
        build_vm(config)
    }

    /// Builds a VM from the snapshot in `config.dir`, ready to [`Vm::run`] from where the
    /// snapshot was taken (see [`crate::restore`] for the recipe). Every check is made before
    /// the VM runs; on error nothing is left behind.
    pub fn restore(config: &RestoreConfig) -> Result<Self, RestoreError> {
        restore_vm(config)
    }

    /// Wires a built or restored VM: the snapshot source its handles reach, the devices'
    /// counters, the finished buses.
    pub(crate) fn assemble(a: Assembly) -> Self {
        let vm_fd = Arc::new(a.vm_fd);
        let fs_metrics = a
            .virtio
            .iter()
            .filter_map(|h| match &h.device {
                VirtioKind::Fs { tag, metrics } => Some((tag.clone(), metrics.clone())),
                VirtioKind::Vsock(_) | VirtioKind::Net(_) => None,
            })
            .collect();
        let vsock_counters = a.virtio.iter().find_map(|h| match &h.device {
            VirtioKind::Vsock(dev) => Some(VsockCounters {
                device: dev.lock().unwrap_or_else(|p| p.into_inner()).metrics(),
                transport: h
                    .transport
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .metrics(),
            }),
            VirtioKind::Fs { .. } | VirtioKind::Net(_) => None,
        });
        let snapshot = Arc::new(SnapshotSource {
            vm_fd: vm_fd.clone(),
            mem: a.mem.clone(),
            control: a.control.clone(),
            loop_pause: a.devices.loop_pause(),
            serial: a.serial.clone(),
            virtio: a.virtio,
            host: a.host,
            image: a.image,
            cmdline: a.cmdline.clone(),
            mem_mib: a.mem_mib,
            busy: Mutex::new(()),
        });
        Self {
            parts: VmParts {
                kvm: a.kvm,
                vm_fd,
                mem: a.mem,
                vcpus: a.vcpus,
                devices: a.devices.finish(),
                control: a.control,
                serial: a.serial,
                cmdline: a.cmdline,
                profile: a.profile,
                fs_metrics,
                vsock_counters,
                save: Arc::new(a.save),
                snapshot,
            },
            seccomp: true,
        }
    }

    /// Runs the VM's threads without their seccomp allow-lists (see [`crate::seccomp`]): a
    /// way out for an operator whose host needs a syscall a list lacks, never the default.
    pub fn without_seccomp(mut self) -> Self {
        self.seccomp = false;
        self
    }

    /// A handle that stops, snapshots and resumes the VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle::with_snapshots(
            self.parts.control.clone(),
            Arc::downgrade(&self.parts.snapshot),
        )
    }

    /// The kernel command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.parts.cmdline
    }

    /// The host profile in use.
    pub fn profile(&self) -> HostProfile {
        self.parts.profile
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.parts.mem
    }

    /// The request counters of the virtio-fs device exporting `tag` (they stay readable after
    /// the VM has run).
    pub fn fs_metrics(&self, tag: &str) -> Option<Arc<FsMetrics>> {
        self.parts
            .fs_metrics
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, m)| m.clone())
    }

    /// The vsock device's packet, notification and interrupt counters and its transport's
    /// register accesses, if the VM has one (they stay readable after the VM has run).
    pub fn vsock_counters(&self) -> Option<VsockCounters> {
        self.parts.vsock_counters.clone()
    }

    /// The VM fd, for devices attached after the build.
    pub fn vm_fd(&self) -> &VmFd {
        &self.parts.vm_fd
    }

    /// Runs the VM until it stops; returns why. Blocks the calling thread until every vCPU
    /// thread has ended. With seccomp (the default) each vCPU runs on a thread of its own that
    /// installs the vCPU list (so the caller's thread is never filtered) and the event loop
    /// installs its own; without, vCPU 0 runs on the calling thread (one thread fewer to
    /// start), which then takes the vCPU kick signal, `SIGRTMIN+1`, while it does.
    pub fn run(self) -> Result<ExitReason, RunError> {
        let Vm {
            parts:
                VmParts {
                    kvm,
                    vm_fd,
                    mem,
                    vcpus,
                    devices,
                    control,
                    serial,
                    save,
                    snapshot,
                    ..
                },
            seccomp,
        } = self;
        let (vcpu_filter, events_filter) = if seccomp {
            let vcpu = crate::seccomp::vcpu_filter(kick::kick_signal())?;
            (Some(Arc::new(vcpu)), Some(crate::seccomp::events_filter()?))
        } else {
            (None, None)
        };
        kick::install_handler().map_err(RunError::KickHandler)?;
        let events = devices.event_loop.start(events_filter)?;
        let ctx = VcpuContext {
            pio: devices.pio.clone(),
            mmio: devices.mmio.clone(),
            mem,
            control: control.clone(),
            save,
            seccomp: vcpu_filter,
        };
        let mut vcpus = vcpus.into_iter();
        let on_this_thread = if seccomp { None } else { vcpus.next() };
        let mut threads = Vec::with_capacity(vcpus.len());
        let mut spawn_error = None;
        for vcpu in vcpus {
            match vcpu.spawn(ctx.clone()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(e);
                    control.request(ExitReason::Stopped);
                    break;
                }
            }
        }
        if let Some(vcpu) = on_this_thread {
            vcpu.run(&ctx);
        }
        for t in threads {
            // A vCPU thread that panicked has already stopped the VM (its registration guard
            // records the fault), so the error here adds nothing.
            let _ = t.join();
        }
        events.stop();
        // Handles can no longer reach the VM's parts.
        drop(snapshot);
        serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_output();
        drop((vm_fd, kvm, devices.keep_alive));
        if let Some(e) = spawn_error {
            return Err(RunError::Spawn(e));
        }
        Ok(control.reason().unwrap_or(ExitReason::Stopped))
    }
}

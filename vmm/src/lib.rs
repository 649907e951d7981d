//! Bulkhead's micro-VM monitor.
//!
//! A library first: the `bulkhead` shim links it to run one container's VM inside its sandbox
//! monitor process, and the thin `bulkhead-vmm` binary runs a VM by hand. The VMM knows nothing
//! about containers or the agent's API; its vsock device only moves bytes.
//!
//! ```no_run
//! use bulkhead_vmm::{Vm, VmConfig};
//! let mut config = VmConfig::new("/usr/local/share/bulkhead/vmlinux");
//! config.initrd = Some("/usr/local/share/bulkhead/test-initramfs.cpio".into());
//! let vm = Vm::build(&config)?;
//! let handle = vm.handle(); // handle.stop() from any thread ends the VM
//! let reason = vm.run()?;   // blocks until the guest is done
//! assert!(reason.is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map (see `docs/DESIGN-NOTES.md`):
//! - [`config`]: what a VM is built from; [`builder`]: the boot recipe; [`vm`]: running it;
//!   [`control`]: exit reasons and the stop switch;
//! - [`kvm`]: the VM and vCPU fds, vCPU threads and exits, register dumps;
//! - [`memory`] and [`layout`]: guest RAM and the guest-physical memory map;
//! - [`boot`]: kernel/initrd loading, command line, zero page and e820, MP table, page tables,
//!   GDT, CPUID, MSRs, registers;
//! - [`devices`]: the `BusDevice` seam, buses, the device manager, serial, i8042, virtio;
//! - [`event_loop`]: the device event loop thread;
//! - [`compat`]: host KVM profiles (hardware vs PVM) — the only place that knows PVM.

pub mod boot;
pub mod builder;
pub mod compat;
pub mod config;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod restore;
pub mod snapshot;
pub mod vm;

pub use builder::BuildError;
pub use compat::HostProfile;
pub use config::{RestoreConfig, VmConfig};
pub use control::{ExitReason, FaultKind, VcpuFault, VmHandle};
pub use devices::serial::ConsoleOutput;
pub use restore::RestoreError;
pub use snapshot::{ImageId, SnapshotError, SnapshotInfo};
pub use vm::{RunError, Vm};

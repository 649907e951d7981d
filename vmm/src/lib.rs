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
//! # Snapshots (templates)
//!
//! A template maker boots normally, waits until the guest is ready, closes its vsock
//! connections, and snapshots; clones are restored in other processes and resume where the
//! template was paused:
//!
//! ```no_run
//! use std::time::Duration;
//! use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
//! use bulkhead_vmm::{ImageId, RestoreConfig, Vm, VmConfig};
//! # let dir = std::path::Path::new("/var/lib/bulkhead/templates/abc");
//! // Template maker.
//! let mut config = VmConfig::new("/usr/local/share/bulkhead/vmlinux");
//! config.initrd = Some("/usr/local/share/bulkhead/agent-initramfs.cpio".into());
//! let image = ImageId::of_files(&config.kernel, config.initrd.as_deref())?;
//! config.image_id = Some(image);
//! config.vsock = Some(VsockConfig::new("/run/bulkhead/tpl/vsock.sock"));
//! let vm = Vm::build(&config)?;
//! let handle = vm.handle();
//! let runner = std::thread::spawn(move || vm.run());
//! // ... the agent answered over vsock; every host vsock connection is closed ...
//! let info = handle.snapshot(dir)?; // pauses everything, writes dir/state + dir/memory
//! handle.stop();                     // (or handle.resume())
//! runner.join().expect("vm thread")?;
//!
//! // A clone, in another process.
//! let mut restore = RestoreConfig::new(dir, image);
//! restore.vsock = Some(VsockConfig::new("/run/bulkhead/c1/vsock.sock"));
//! let vm = Vm::restore(&restore)?; // on error: cold-boot instead
//! let reason = vm.run()?;          // resumes where the template was paused
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Before [`VmHandle::snapshot`]: the guest must not have mounted a virtio-fs share (refused:
//! a FUSE session cannot move to another process), and host vsock connections should be
//! closed (in clones every connection that existed is reset by a transport-reset event; the
//! guest's listening sockets stay). A restore checks the state file's size and checksum
//! before reading it, refuses another VMM version or format, host profile, CPU model, CPUID
//! table, TSC rate or image, and never leaves anything running when it fails.
//!
//! Module map (see `docs/DESIGN-NOTES.md`):
//! - [`config`]: what a VM is built from; [`builder`]: the boot recipe; [`vm`]: running it;
//!   [`control`]: exit reasons, the stop and pause switches, [`VmHandle`];
//! - [`snapshot`]: the snapshot files and taking one; [`restore`]: the restore recipe;
//! - [`kvm`]: the VM and vCPU fds, vCPU threads and exits, register dumps;
//! - [`memory`] and [`layout`]: guest RAM and the guest-physical memory map;
//! - [`boot`]: kernel/initrd loading, command line, zero page and e820, MP table, page tables,
//!   GDT, CPUID, MSRs, registers;
//! - [`devices`]: the `BusDevice` seam, buses, the device manager, serial, i8042, virtio;
//! - [`event_loop`]: the device event loop thread;
//! - [`seccomp`]: each thread's syscall allow-list and the report of a forbidden syscall;
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
pub mod seccomp;
pub mod snapshot;
pub mod vm;

pub use builder::BuildError;
pub use compat::HostProfile;
pub use config::{RestoreConfig, VmConfig};
pub use control::{ExitReason, FaultKind, VcpuFault, VmHandle};
pub use devices::serial::ConsoleOutput;
pub use devices::virtio::net::{NetBackend, NetCounters, NetError, NetSlotInfo, Tap};
pub use restore::RestoreError;
pub use snapshot::{ImageId, SnapshotError, SnapshotInfo};
pub use vm::{RunError, Vm};

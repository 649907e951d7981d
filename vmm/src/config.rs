//! What a VM is built from.

use std::path::PathBuf;

use crate::compat::HostProfile;
use crate::devices::serial::ConsoleOutput;
use crate::devices::virtio::fs::FsConfig;
use crate::devices::virtio::vsock::VsockConfig;
use crate::kvm::DEFAULT_KVM_DEVICE;
use crate::snapshot::ImageId;

/// Default guest memory.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// A VM's configuration. Build it, then [`crate::Vm::build`] it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The guest kernel: an ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    /// The initramfs (an uncompressed cpio is fastest to unpack under PVM).
    pub initrd: Option<PathBuf>,
    /// Extra kernel parameters, after the VMM's defaults and the host profile's.
    pub cmdline: Option<String>,
    /// Guest memory in MiB (at least [`crate::layout::MIN_MEM_MIB`]).
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Where the serial console goes.
    pub console: ConsoleOutput,
    /// Cap of a console file: when full it is rotated to `<file>.1`, so at most twice this is
    /// on disk ([`crate::devices::serial`]). `None`: no cap.
    pub console_max_bytes: Option<u64>,
    /// Feed this process's stdin to the console.
    pub console_input: bool,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// The host KVM profile; `None` probes the host.
    pub profile: Option<HostProfile>,
    /// A virtio-vsock device with a hybrid (Unix socket) host side.
    pub vsock: Option<VsockConfig>,
    /// Host directories shared over virtio-fs, one device per tag (`tag`, `host_dir`,
    /// `read_only`, cache mode, where set-ID files are allowed).
    pub fs: Vec<FsConfig>,
    /// Empty NIC slots wired after every other device, each probed by the guest only once a
    /// tap is attached to it ([`crate::VmHandle::attach_net`]). Free for a guest without a
    /// NIC: an empty slot shows DeviceID 0.
    pub net_slots: u8,
    /// The identity of `kernel` + `initrd` recorded in snapshots of this VM; `None` hashes the
    /// two files when a snapshot is taken ([`ImageId::of_files`]).
    pub image_id: Option<ImageId>,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            console: ConsoleOutput::Stdout,
            console_max_bytes: None,
            console_input: false,
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            profile: None,
            vsock: None,
            fs: Vec::new(),
            net_slots: 0,
            image_id: None,
        }
    }
}

/// How to bring a snapshot back to life in this process: [`crate::Vm::restore`].
///
/// Everything the guest sees comes from the snapshot; this says only what is the restorer's
/// own: where the console goes, the host side of the vsock device, the host directory behind
/// each virtio-fs tag, the KVM device, and which kernel + initrd the caller expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The snapshot directory (`state` + `memory`).
    pub dir: PathBuf,
    /// The kernel + initrd the caller expects the snapshot to have booted; a snapshot of
    /// another image is refused.
    pub expected_image: ImageId,
    /// Where the serial console goes.
    pub console: ConsoleOutput,
    /// Cap of a console file: when full it is rotated to `<file>.1`, so at most twice this is
    /// on disk ([`crate::devices::serial`]). `None`: no cap.
    pub console_max_bytes: Option<u64>,
    /// Feed this process's stdin to the console.
    pub console_input: bool,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// The host KVM profile; `None` probes the host. Must be the snapshot's.
    pub profile: Option<HostProfile>,
    /// The host side of the vsock device: required if and only if the snapshot has one. Its
    /// `guest_cid` becomes the guest's (the guest re-reads it after the transport reset).
    pub vsock: Option<VsockConfig>,
    /// The share behind each virtio-fs tag of the snapshot, exactly one per tag (the guest had
    /// not mounted them, so any directory, read-only flag, cache mode and set-ID rule will do).
    pub fs: Vec<FsConfig>,
}

impl RestoreConfig {
    /// Defaults for everything but the snapshot directory and the expected image.
    pub fn new(dir: impl Into<PathBuf>, expected_image: ImageId) -> Self {
        Self {
            dir: dir.into(),
            expected_image,
            console: ConsoleOutput::Stdout,
            console_max_bytes: None,
            console_input: false,
            kvm_device: PathBuf::from(DEFAULT_KVM_DEVICE),
            profile: None,
            vsock: None,
            fs: Vec::new(),
        }
    }
}

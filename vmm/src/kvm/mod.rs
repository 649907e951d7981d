//! KVM: opening the device, creating the VM (memory slots, in-kernel irqchip and PIT, the TSS
//! and identity-map pages) and its vCPUs; running vCPUs and handling their exits.

pub mod dump;
pub mod kick;
pub mod pod;
pub mod state;
pub mod vcpu;

use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemory, GuestMemoryRegion};

use crate::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use crate::memory::GuestMemoryMmap;

/// The KVM device, unless overridden.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Errors from setting up KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The KVM device could not be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host KVM lacks something we need.
    #[error("kvm lacks {0}")]
    MissingCap(&'static str),
    /// More vCPUs than KVM allows.
    #[error("{requested} vcpus requested, kvm allows at most {max}")]
    TooManyVcpus {
        /// What was asked for.
        requested: usize,
        /// KVM's limit.
        max: usize,
    },
    /// A VM-level ioctl failed; `what` names it.
    #[error("cannot {what}")]
    Ioctl {
        /// What we were doing.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Capabilities the VMM relies on, checked up front so a missing one is named.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens the KVM device at `path` and checks the capabilities we need.
pub fn open(path: &Path) -> Result<Kvm, KvmError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        KvmError::Open {
            path: path.to_owned(),
            source: kvm_ioctls::Error::new(libc::EINVAL),
        }
    })?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|source| KvmError::Open {
        path: path.to_owned(),
        source,
    })?;
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The most vCPUs a VM may have on this host (KVM's limit, and the MP table's).
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus()
        .min(usize::from(crate::boot::mptable::MAX_CPUS))
}

/// Creates the VM: guest memory slots, TSS and identity-map pages, in-kernel irqchip and PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(ioctl("create the vm"))?;
    vm.set_tss_address(KVM_TSS_START as usize)
        .map_err(ioctl("set the tss address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START)
        .map_err(ioctl("set the identity map address"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr();
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VM's owner keeps alive
        // (the builder stores it next to the VmFd) for as long as the VM exists.
        unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("add a memory slot"))?;
    }
    vm.create_irq_chip().map_err(ioctl("create the irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("create the pit"))?;
    Ok(vm)
}

/// Creates `count` vCPUs (ids 0..count) after checking KVM's limit.
pub fn create_vcpus(kvm: &Kvm, vm: &VmFd, count: usize) -> Result<Vec<VcpuFd>, KvmError> {
    let max = max_vcpus(kvm);
    if count == 0 || count > max {
        return Err(KvmError::TooManyVcpus {
            requested: count,
            max,
        });
    }
    (0..count as u64)
        .map(|id| vm.create_vcpu(id).map_err(ioctl("create a vcpu")))
        .collect()
}

#[cfg(test)]
mod tests;

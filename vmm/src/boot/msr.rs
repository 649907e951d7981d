//! The few MSRs a booting vCPU needs set, and nothing more.
//!
//! Some hosts reject MSRs that others accept (on PVM-backed KVM, `IA32_ARCH_CAPABILITIES` fails),
//! so we only set what the boot needs, skip what KVM does not list, and check how many KVM
//! actually took: `KVM_SET_MSRS` stops at the first failure and returns the count.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// `IA32_MISC_ENABLE` bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

/// Boot MSRs: (index, value).
pub const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),                        // IA32_SYSENTER_CS
    (0x175, 0),                        // IA32_SYSENTER_ESP
    (0x176, 0),                        // IA32_SYSENTER_EIP
    (0xc000_0081, 0),                  // STAR
    (0xc000_0082, 0),                  // LSTAR
    (0xc000_0083, 0),                  // CSTAR
    (0xc000_0084, 0),                  // SYSCALL_MASK
    (0xc000_0102, 0),                  // KERNEL_GS_BASE
    (0x10, 0),                         // IA32_TSC
    (0x1a0, MISC_ENABLE_FAST_STRING),  // IA32_MISC_ENABLE
    (0x2ff, MTRR_DEF_TYPE_ENABLED_WB), // IA32_MTRR_DEF_TYPE
];

/// Errors from setting MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// Building the ioctl buffer failed.
    #[error("cannot build the msr list")]
    Build(#[source] vmm_sys_util::fam::Error),
    /// The ioctl itself failed.
    #[error("KVM_SET_MSRS failed")]
    Set(#[source] kvm_ioctls::Error),
    /// KVM accepted only some of them; `index` is the first one it refused.
    #[error("kvm refused msr {index:#x}")]
    Refused {
        /// The refused MSR.
        index: u32,
    },
}

/// The boot MSRs that the host supports (`supported` is KVM's MSR index list).
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Sets `entries` on `vcpu`, failing if KVM takes fewer than all of them.
pub fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), MsrError> {
    let msrs = Msrs::from_entries(entries).map_err(MsrError::Build)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set < entries.len() {
        return Err(MsrError::Refused {
            index: entries[set].index,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_supported_list() {
        let m = boot_msrs(&[0x10, 0x2ff, 0xdead]);
        let idx: Vec<u32> = m.iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![0x10, 0x2ff]);
        assert_eq!(m[1].data, MTRR_DEF_TYPE_ENABLED_WB);
        assert!(boot_msrs(&[]).is_empty());
    }

    #[test]
    fn never_sets_arch_capabilities() {
        assert!(BOOT_MSRS.iter().all(|(i, _)| *i != 0x10a));
    }
}

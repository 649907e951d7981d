//! Host KVM profiles: the one place that knows how the host's KVM differs from hardware KVM.
//!
//! On PVM-backed KVM (`kvm_pvm`: KVM without VT-x/AMD-V, guest kernel code run by KVM's
//! instruction emulator) the guest kernel must avoid instructions the emulator lacks. CPUID leaf
//! 7 there always shows the host's features whatever the VMM sets, so those features are turned
//! off on the kernel command line instead; and the guest must see `XSAVEERPTR` or an AMD guest
//! takes a path that runs `fnclex`. See `shared/PVM.md`. Ordinary KVM gets a plain command line
//! and the full supported CPUID. Nothing outside this module knows about PVM.

use std::path::Path;

use kvm_bindings::CpuId;

/// Where the PVM module shows up when it is loaded.
const PVM_MODULE_PATH: &str = "/sys/module/kvm_pvm";

/// Kernel parameters the PVM profile adds. Beyond PVM.md's list: `noreplace-smp` keeps a
/// 1-vCPU guest from patching ~4000 lock prefixes one emulated write at a time, and
/// `percpu_alloc=page` avoids zeroing a 2 MiB per-CPU chunk in emulated code (together about
/// 3.5 M fewer emulated instructions per boot, measured with QEMU's `insn_emulation` counter);
/// both are harmless on hardware, where this profile is not used anyway.
///
/// `clearcpuid=` is read into a 128-byte buffer by Linux 6.1 (`cpu_parse_early_param`): PVM.md's
/// full list is longer, and everything past `clflushop` was silently kept — `erms` and `fsrm`
/// among them, so every kernel `memcpy`, `copy_*_user` and `clear_user` was a `rep movsb`/`stosb`
/// that the emulator runs one byte per iteration. The features that `noxsave` already clears
/// through their dependency on XSAVE (avx, avx2, avx512f, pku, xsaveopt, xsavec, xsaves) are left
/// out so the rest fits. Measured in a guest: copy_to_user 1150 → 330 ms/MiB, copy_from_user
/// 1000 → 250, clear_user 480 → 80.
const PVM_KERNEL_PARAMS: &str = "noxsave nopti rodata=off quiet noreplace-smp percpu_alloc=page \
    clearcpuid=cx16,smap,smep,popcnt,fsgsbase,rdpid,rdrand,rdseed,invpcid,pcid,bmi1,bmi2,\
clflushopt,clwb,movbe,umip,erms,fsrm";

/// CPUID leaf 0x80000008 EBX bit 2: `XSAVEERPTR` (FXSAVE/XSAVE always save the error pointers).
const XSAVEERPTR_LEAF: u32 = 0x8000_0008;
const XSAVEERPTR_EBX_BIT: u32 = 1 << 2;

/// The kind of KVM this host offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostProfile {
    /// KVM on hardware virtualization (VT-x / AMD-V).
    Hardware,
    /// KVM served by `kvm_pvm` (pagetable-based virtualization, no hardware support).
    Pvm,
}

impl HostProfile {
    /// Probes the running host.
    pub fn probe() -> Self {
        Self::probe_at(Path::new(PVM_MODULE_PATH))
    }

    /// Probes with the PVM module's sysfs directory at `pvm_module` (a seam for tests).
    pub fn probe_at(pvm_module: &Path) -> Self {
        if pvm_module.is_dir() {
            HostProfile::Pvm
        } else {
            HostProfile::Hardware
        }
    }

    /// Parses a profile name (`hardware` or `pvm`), for overrides.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "hardware" => Some(HostProfile::Hardware),
            "pvm" => Some(HostProfile::Pvm),
            _ => None,
        }
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            HostProfile::Hardware => "hardware",
            HostProfile::Pvm => "pvm",
        }
    }

    /// Kernel parameters this host needs, added after the VMM's defaults.
    pub fn kernel_params(self) -> &'static str {
        match self {
            HostProfile::Hardware => "",
            HostProfile::Pvm => PVM_KERNEL_PARAMS,
        }
    }

    /// Adjusts KVM's supported CPUID for this host (before per-vCPU normalisation).
    pub fn adjust_cpuid(self, cpuid: &mut CpuId) {
        match self {
            HostProfile::Hardware => {}
            HostProfile::Pvm => {
                for e in cpuid.as_mut_slice() {
                    if e.function == XSAVEERPTR_LEAF {
                        e.ebx |= XSAVEERPTR_EBX_BIT;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn cpuid() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ebx: 0x1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x1,
                ebx: 0x0,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn probes_by_module_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostProfile::probe_at(dir.path()), HostProfile::Pvm);
        assert_eq!(
            HostProfile::probe_at(&dir.path().join("absent")),
            HostProfile::Hardware
        );
    }

    #[test]
    fn hardware_profile_changes_nothing() {
        let mut c = cpuid();
        HostProfile::Hardware.adjust_cpuid(&mut c);
        assert_eq!(c, cpuid());
        assert_eq!(HostProfile::Hardware.kernel_params(), "");
    }

    #[test]
    fn pvm_profile_sets_xsaveerptr_and_params() {
        let mut c = cpuid();
        HostProfile::Pvm.adjust_cpuid(&mut c);
        assert_eq!(c.as_slice()[0].ebx, 0x5);
        assert_eq!(c.as_slice()[1].ebx, 0);
        let params = HostProfile::Pvm.kernel_params();
        for p in [
            "noxsave",
            "nopti",
            "rodata=off",
            "quiet",
            "clearcpuid=cx16,",
            ",fsrm",
        ] {
            assert!(params.contains(p), "{p}");
        }
        assert!(!params.contains("  "));
        assert_eq!(HostProfile::from_name("pvm"), Some(HostProfile::Pvm));
        assert_eq!(HostProfile::from_name("x"), None);
    }

    /// Linux 6.1's buffer for the value of `clearcpuid=` (`char arg[128]`, NUL included).
    const CLEARCPUID_MAX: usize = 127;

    #[test]
    fn pvm_clearcpuid_fits_the_kernels_buffer() {
        let value = HostProfile::Pvm
            .kernel_params()
            .split(' ')
            .find_map(|p| p.strip_prefix("clearcpuid="))
            .unwrap();
        assert!(value.len() <= CLEARCPUID_MAX, "{} bytes", value.len());
        for feature in ["erms", "fsrm", "cx16", "popcnt", "smap"] {
            assert!(value.split(',').any(|f| f == feature), "{feature}");
        }
    }
}

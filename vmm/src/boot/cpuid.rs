//! CPUID for one vCPU: KVM's supported table, normalised so the guest sees a consistent machine.
//!
//! Topology: one package, one core per vCPU, one thread per core; the vCPU index is its APIC id.
//! Every leaf that reports an APIC id or a processor count says so (leaves 1, 4, 0xb, 0x1f, and
//! AMD's 0x80000001, 0x80000008, 0x8000001e). The hypervisor bit and KVM's signature leaf tell
//! the guest to use its paravirt clock and friends (the KVM feature leaf 0x40000001 is kept as
//! KVM reports it). Host-specific tweaks belong to [`crate::compat`], not here.

use kvm_bindings::kvm_cpuid_entry2;

/// Where a vCPU sits in the guest's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// This vCPU's index, which is also its (x2)APIC id.
    pub index: u8,
    /// How many vCPUs the guest has.
    pub count: u8,
}

/// KVM's hypervisor signature leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Level types of leaves 0xb/0x1f (ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `count` APIC ids: ceil(log2(count)).
pub fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Normalises `entries` (KVM's supported table, copied per vCPU) for vCPU `cpu`.
/// `tsc_deadline` says whether the in-kernel LAPIC offers the TSC-deadline timer.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], cpu: CpuTopology, tsc_deadline: bool) {
    let count = u32::from(cpu.count.max(1));
    let apic_id = u32::from(cpu.index);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0xffff) | (apic_id << 24) | (count.min(255) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Deterministic cache parameters (type 0 ends the list): EAX[31:26] = cores per
            // package - 1, EAX[25:14] = threads sharing this cache - 1 (no SMT: 0 for L1/L2,
            // all cores for L3).
            0x4 if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            0xb | 0x1f => {
                // Extended topology: subleaf 0 = SMT level, 1 = core level, then invalid.
                let (eax, ebx, ecx) = match e.index {
                    0 => (0, 1, LEVEL_TYPE_SMT << 8),
                    1 => (id_bits(cpu.count), count, (LEVEL_TYPE_CORE << 8) | 1),
                    n => (0, 0, n & 0xff),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = ecx;
                e.edx = apic_id;
            }
            0x8000_0001 => {
                if count > 1 {
                    e.ecx |= EXT1_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT1_ECX_CMP_LEGACY;
                }
            }
            0x8000_0008 => {
                // ECX: [15:12] APIC id size, [7:0] number of cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(cpu.count) << 12) | (count - 1);
            }
            0x8000_001e => {
                // Extended APIC id; compute unit = core, one thread per unit; one node.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            HYPERVISOR_LEAF => {
                e.eax = e.eax.max(HYPERVISOR_LEAF + 1);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
}

/// Looks up leaf `function`, subleaf `index`.
pub fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn table() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0x1, 0, [0x00a0_0f11, 0x0f80_0800, 0x7ed8_3203, 0x178b_fbff]),
            entry(0x4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(0x4, 3, [0x1c00_4163, 0x03c0_003f, 0x7fff, 0]),
            entry(0x4, 4, [0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [7, 64, 0x201, 7]),
            entry(0xb, 2, [0, 0, 2, 7]),
            entry(0x8000_0001, 0, [0, 0, 0x3, 0]),
            entry(0x8000_0008, 0, [0x3030, 0x4, 0x703f, 0]),
            entry(0x8000_001e, 0, [7, 0x103, 0x300, 0]),
            entry(HYPERVISOR_LEAF, 0, [0, 0, 0, 0]),
        ]
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }

    #[test]
    fn per_vcpu_apic_ids_and_counts() {
        let mut t = table();
        normalize(&mut t, CpuTopology { index: 1, count: 2 }, true);
        let l1 = find(&t, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 1);
        assert_eq!((l1.ebx >> 16) & 0xff, 2);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "clflush size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let smt = find(&t, 0xb, 0).unwrap();
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
        let core = find(&t, 0xb, 1).unwrap();
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
        let end = find(&t, 0xb, 2).unwrap();
        assert_eq!((end.ebx, end.ecx >> 8 & 0xff, end.edx), (0, 0, 1));

        assert_eq!(find(&t, 0x8000_0008, 0).unwrap().ecx & 0xf0ff, 0x1001);
        assert_eq!(find(&t, 0x8000_001e, 0).unwrap().eax, 1);
        assert_ne!(
            find(&t, 0x8000_0001, 0).unwrap().ecx & EXT1_ECX_CMP_LEGACY,
            0
        );

        let l4 = find(&t, 4, 0).unwrap();
        assert_eq!(l4.eax >> 26, 1);
        assert_eq!(l4.eax & 0x3fff, 0x0121, "cache type and level kept");
        let l3 = find(&t, 4, 3).unwrap();
        assert_eq!((l3.eax >> 14) & 0xfff, 1, "L3 shared by both cores");
        assert_eq!(find(&t, 4, 4).unwrap().eax, 0, "terminator untouched");
    }

    #[test]
    fn single_vcpu_has_no_htt_or_cmp_legacy() {
        let mut t = table();
        normalize(&mut t, CpuTopology { index: 0, count: 1 }, false);
        let l1 = find(&t, 1, 0).unwrap();
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ebx >> 16, 1);
        assert_eq!(
            find(&t, 0x8000_0001, 0).unwrap().ecx & EXT1_ECX_CMP_LEGACY,
            0
        );
        assert_eq!(find(&t, 0x8000_0008, 0).unwrap().ecx & 0xf0ff, 0);
        assert_eq!(find(&t, 0xb, 1).unwrap().eax, 0);
    }

    #[test]
    fn hypervisor_signature() {
        let mut t = table();
        normalize(&mut t, CpuTopology { index: 0, count: 1 }, false);
        let h = find(&t, HYPERVISOR_LEAF, 0).unwrap();
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
        assert!(h.eax > HYPERVISOR_LEAF);
    }
}

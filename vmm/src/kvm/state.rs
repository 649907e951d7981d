//! Saving and restoring KVM's view of a VM: each vCPU's registers, FPU, LAPIC, MSRs and pending
//! events, and the VM-wide clock, in-kernel irqchip (PIC master/slave, IOAPIC) and PIT.
//!
//! Restore order matters, and the one here is the one known to work (Firecracker's):
//! VM: PIT → clock → irqchip; then per vCPU: CPUID → MP state → regs → sregs → XSAVE → XCRs →
//! debug registers → LAPIC → MSRs → vCPU events. The LAPIC goes before the MSRs because
//! `KVM_SET_LAPIC` re-arms the APIC timer and forgets a TSC deadline written earlier (an idle
//! vCPU would then never wake). Among the MSRs, the TSC goes before the TSC deadline (the
//! deadline is converted to a host timer against the guest TSC of the moment it is written) and
//! the async-PF interrupt vector before async-PF enable.
//!
//! Only MSRs that `KVM_GET_MSR_INDEX_LIST` offers are saved, minus the feature MSRs
//! (`KVM_GET_MSR_FEATURE_INDEX_LIST`: host capabilities such as `IA32_ARCH_CAPABILITIES` that a
//! guest cannot change and the same host gives every VM alike; PVM refuses to set some of them).
//! Every `KVM_GET_MSRS`/`KVM_SET_MSRS` count is checked: an MSR KVM lists but cannot read on
//! this vCPU is left out of the snapshot (and logged); one it then refuses to set fails the
//! restore with its index named.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::pod::Pod;

/// `IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_TSC_DEADLINE`: must follow the TSC and the LAPIC.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// `MSR_KVM_ASYNC_PF_EN`: enabling async PF wants its interrupt vector set first.
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;

/// Errors saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed; `what` names it.
    #[error("cannot {what}")]
    Ioctl {
        /// What we were doing.
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took only part of the MSRs; `index` is the first one it refused.
    #[error("kvm refused to restore msr {index:#x}")]
    MsrRefused {
        /// The refused MSR.
        index: u32,
    },
    /// An MSR or CPUID list did not fit KVM's buffer.
    #[error("cannot build the {0} list for kvm")]
    List(&'static str),
    /// A paused vCPU left no state (a VMM bug).
    #[error("a paused vcpu left no state")]
    Missing,
    /// The host lacks a capability snapshots need.
    #[error("kvm lacks {0}, which snapshots need")]
    MissingCap(&'static str),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Ioctl { what, source }
}

/// One CPUID entry as given to a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CpuidEntry {
    /// Leaf.
    pub function: u32,
    /// Sub-leaf.
    pub index: u32,
    /// `KVM_CPUID_FLAG_*`.
    pub flags: u32,
    /// Registers.
    pub eax: u32,
    /// Registers.
    pub ebx: u32,
    /// Registers.
    pub ecx: u32,
    /// Registers.
    pub edx: u32,
}

impl From<&kvm_cpuid_entry2> for CpuidEntry {
    fn from(e: &kvm_cpuid_entry2) -> Self {
        Self {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
        }
    }
}

impl From<&CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: &CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

/// The entries of `cpuid`, sorted (KVM keeps no order), for comparing and saving.
pub fn cpuid_entries(cpuid: &CpuId) -> Vec<CpuidEntry> {
    let mut v: Vec<CpuidEntry> = cpuid.as_slice().iter().map(CpuidEntry::from).collect();
    v.sort();
    v
}

/// Everything KVM holds about one vCPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID table the vCPU was given.
    pub cpuid: Vec<CpuidEntry>,
    /// Runnable, halted, …
    pub mp_state: Pod<kvm_mp_state>,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: Pod<kvm_regs>,
    /// Segments, control registers, EFER, APIC base, pending interrupt bitmap.
    pub sregs: Pod<kvm_sregs>,
    /// x87/SSE/AVX state in XSAVE layout.
    pub xsave: Pod<kvm_xsave>,
    /// XCR0, if the host has `KVM_CAP_XCRS`.
    pub xcrs: Option<Pod<kvm_xcrs>>,
    /// DR0-3, DR6, DR7.
    pub debugregs: Pod<kvm_debugregs>,
    /// The local APIC's register page.
    pub lapic: Pod<kvm_lapic_state>,
    /// MSRs `(index, value)` in the order KVM listed them.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exception, interrupt, NMI, interrupt shadow.
    pub events: Pod<kvm_vcpu_events>,
}

/// The VM-wide in-kernel state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// The kvmclock (`KVM_GET_CLOCK`).
    pub clock: Pod<kvm_clock_data>,
    /// The 8259 master.
    pub pic_master: Pod<kvm_irqchip>,
    /// The 8259 slave.
    pub pic_slave: Pod<kvm_irqchip>,
    /// The IOAPIC.
    pub ioapic: Pod<kvm_irqchip>,
    /// The PIT (`KVM_GET_PIT2`).
    pub pit: Pod<kvm_pit_state2>,
}

/// What a vCPU needs to read its own state when it pauses.
#[derive(Clone, Debug, Default)]
pub struct SaveSpec {
    /// From [`msrs_to_save`].
    pub msrs: Vec<u32>,
    /// The CPUID table each vCPU was given, by index.
    pub cpuid: Vec<Vec<CpuidEntry>>,
    /// Whether the host has `KVM_CAP_XCRS`.
    pub xcrs: bool,
}

impl SaveSpec {
    /// Reads vCPU `index`'s state.
    pub fn save(&self, fd: &VcpuFd, index: u8) -> Result<VcpuState, StateError> {
        let cpuid = self
            .cpuid
            .get(usize::from(index))
            .map_or(&[][..], Vec::as_slice);
        save_vcpu(fd, &self.msrs, cpuid, self.xcrs)
    }
}

/// The MSRs worth saving on this host: KVM's index list without its feature MSRs (see the
/// module docs).
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let all = kvm
        .get_msr_index_list()
        .map_err(ioctl("read the msr index list"))?;
    // Older hosts lack the feature list; then nothing is left out.
    let features = kvm
        .get_msr_feature_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    Ok(all
        .as_slice()
        .iter()
        .copied()
        .filter(|i| !features.contains(i))
        .collect())
}

/// Checks the capabilities saving and restoring rely on.
pub fn check_caps(kvm: &Kvm) -> Result<(), StateError> {
    for (cap, name) in [
        (Cap::Xsave, "KVM_CAP_XSAVE"),
        (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
        (Cap::Debugregs, "KVM_CAP_DEBUGREGS"),
        (Cap::MpState, "KVM_CAP_MP_STATE"),
        (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
        (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(StateError::MissingCap(name));
        }
    }
    Ok(())
}

/// Reads one vCPU's state. The vCPU must not be running, and any I/O it exited for must be
/// completed (see [`super::vcpu`]'s pause). `msrs` comes from [`msrs_to_save`]; `cpuid` is the
/// table the vCPU was given (KVM has no reliable way to read it back on every host).
pub fn save_vcpu(
    fd: &VcpuFd,
    msrs: &[u32],
    cpuid: &[CpuidEntry],
    xcrs: bool,
) -> Result<VcpuState, StateError> {
    let mut xcrs_state = None;
    if xcrs {
        xcrs_state = Some(Pod(fd.get_xcrs().map_err(ioctl("read the xcrs"))?));
    }
    Ok(VcpuState {
        cpuid: cpuid.to_vec(),
        mp_state: Pod(fd.get_mp_state().map_err(ioctl("read the mp state"))?),
        regs: Pod(fd.get_regs().map_err(ioctl("read the registers"))?),
        sregs: Pod(fd
            .get_sregs()
            .map_err(ioctl("read the special registers"))?),
        xsave: Pod(fd.get_xsave().map_err(ioctl("read the xsave state"))?),
        xcrs: xcrs_state,
        debugregs: Pod(fd
            .get_debug_regs()
            .map_err(ioctl("read the debug registers"))?),
        lapic: Pod(fd.get_lapic().map_err(ioctl("read the lapic"))?),
        msrs: read_msrs(fd, msrs)?,
        events: Pod(fd
            .get_vcpu_events()
            .map_err(ioctl("read the vcpu events"))?),
    })
}

/// Reads `indices`, leaving out (and logging) each one KVM stops at.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::List("msr"))?;
        let n = fd.get_msrs(&mut msrs).map_err(ioctl("read the msrs"))?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        if n < chunk.len() {
            tracing::debug!(msr = format_args!("{:#x}", chunk[n]), "kvm cannot read msr");
            rest = &rest[n + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

/// Puts `msrs` in a safe restore order (see the module docs); otherwise KVM's order.
fn restore_order(msrs: &[(u32, u64)]) -> Vec<kvm_msr_entry> {
    let rank = |index: u32| match index {
        MSR_IA32_TSC => 0,
        MSR_KVM_ASYNC_PF_EN => 2,
        MSR_IA32_TSC_DEADLINE => 3,
        _ => 1,
    };
    let mut sorted: Vec<(u32, u64)> = msrs.to_vec();
    sorted.sort_by_key(|&(index, _)| rank(index));
    sorted
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Writes `entries`, checking KVM took every one.
fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| StateError::List("msr"))?;
        let set = fd.set_msrs(&msrs).map_err(ioctl("restore the msrs"))?;
        if set < chunk.len() {
            return Err(StateError::MsrRefused {
                index: chunk[set].index,
            });
        }
    }
    Ok(())
}

/// Restores one vCPU, in the order of the module docs. The vCPU is fresh (never run).
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), StateError> {
    let entries: Vec<kvm_cpuid_entry2> = state.cpuid.iter().map(Into::into).collect();
    let cpuid = CpuId::from_entries(&entries).map_err(|_| StateError::List("cpuid"))?;
    fd.set_cpuid2(&cpuid).map_err(ioctl("restore the cpuid"))?;
    fd.set_mp_state(state.mp_state.0)
        .map_err(ioctl("restore the mp state"))?;
    fd.set_regs(&state.regs.0)
        .map_err(ioctl("restore the registers"))?;
    fd.set_sregs(&state.sregs.0)
        .map_err(ioctl("restore the special registers"))?;
    // SAFETY: KVM_SET_XSAVE reads the guest's XSAVE area, whose size KVM derives from the
    // features the guest may enable. It exceeds the 4 KiB `kvm_xsave` only with AMX tile data,
    // which needs ARCH_REQ_XCOMP_GUEST_PERM, a permission this VMM never requests; so KVM
    // reads within the struct we pass.
    unsafe { fd.set_xsave(&state.xsave.0) }.map_err(ioctl("restore the xsave state"))?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(&xcrs.0).map_err(ioctl("restore the xcrs"))?;
    }
    fd.set_debug_regs(&state.debugregs.0)
        .map_err(ioctl("restore the debug registers"))?;
    fd.set_lapic(&state.lapic.0)
        .map_err(ioctl("restore the lapic"))?;
    write_msrs(fd, &restore_order(&state.msrs))?;
    fd.set_vcpu_events(&state.events.0)
        .map_err(ioctl("restore the vcpu events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<Pod<kvm_irqchip>, StateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(ioctl("read the irqchip"))?;
    Ok(Pod(chip))
}

/// Reads the VM-wide state. Every vCPU must be paused.
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    Ok(VmState {
        clock: Pod(vm.get_clock().map_err(ioctl("read the kvm clock"))?),
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: Pod(vm.get_pit2().map_err(ioctl("read the pit"))?),
    })
}

/// Restores the VM-wide state into a fresh VM (irqchip and PIT created), before its vCPUs.
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), StateError> {
    vm.set_pit2(&state.pit.0)
        .map_err(ioctl("restore the pit"))?;
    // The clock continues from where it was saved: no flags, so KVM does not advance it by the
    // real time that passed (the guest agent sets the wall clock after a restore).
    let clock = kvm_clock_data {
        clock: state.clock.0.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(ioctl("restore the kvm clock"))?;
    for (chip, id) in [
        (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        // The chip id comes from the snapshot; the slot it is restored into does not.
        let mut c = chip.0;
        c.chip_id = id;
        vm.set_irqchip(&c).map_err(ioctl("restore the irqchip"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msr_restore_order_puts_tsc_first_and_deadline_last() {
        let msrs = [
            (MSR_IA32_TSC_DEADLINE, 5),
            (0x4b56_4d06, 0xf3),
            (MSR_KVM_ASYNC_PF_EN, 1),
            (0x174, 2),
            (MSR_IA32_TSC, 9),
        ];
        let order: Vec<u32> = restore_order(&msrs).iter().map(|e| e.index).collect();
        assert_eq!(
            order,
            vec![
                MSR_IA32_TSC,
                0x4b56_4d06,
                0x174,
                MSR_KVM_ASYNC_PF_EN,
                MSR_IA32_TSC_DEADLINE
            ]
        );
    }

    #[test]
    fn cpuid_entries_round_trip() {
        let e = CpuidEntry {
            function: 7,
            index: 1,
            flags: 1,
            eax: 2,
            ebx: 3,
            ecx: 4,
            edx: 5,
        };
        assert_eq!(CpuidEntry::from(&kvm_cpuid_entry2::from(&e)), e);
    }
}

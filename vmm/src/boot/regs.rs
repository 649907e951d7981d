//! The register state a vCPU starts in: 64-bit long mode with paging on, flat segments, RIP at
//! the kernel's 64-bit entry and RSI at the zero page (the Linux 64-bit boot protocol), a clean
//! FPU, and a LAPIC whose LINT0/LINT1 take ExtINT and NMI like a PC's.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{boot_gdt, kvm_segment_from_gdt};
use super::paging;
use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// x87 control word after FNINIT (all exceptions masked).
const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset (all SSE exceptions masked).
const MXCSR: u32 = 0x1f80;

/// LAPIC register offsets and the delivery modes we program.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors from setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables failed.
    #[error("cannot write the boot gdt/idt")]
    Tables(#[source] vm_memory::GuestMemoryError),
    /// Writing the page tables failed.
    #[error(transparent)]
    Paging(#[from] paging::PagingError),
    /// A register ioctl failed; `what` names it.
    #[error("cannot {what}")]
    Ioctl {
        /// Which ioctl ("set regs", "get lapic", ...).
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Ioctl { what, source }
}

/// Writes the GDT, an empty IDT and the identity page tables; returns CR3. Done once per VM.
pub fn write_boot_tables<M: GuestMemory>(mem: &M) -> Result<u64, RegsError> {
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(RegsError::Tables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Tables)?;
    Ok(paging::write_identity_map(mem)?)
}

/// `sregs` switched to long mode with the boot GDT and the page tables at `cr3`.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    let gdt = boot_gdt();
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_from_gdt(gdt[3], 3);

    sregs.cr3 = cr3;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the kernel's 64-bit entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Puts `vcpu` in long mode (page tables at `cr3`) about to run `entry`.
pub fn setup_long_mode(vcpu: &VcpuFd, cr3: u64, entry: u64) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(ioctl("get sregs"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs, cr3))
        .map_err(ioctl("set sregs"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(ioctl("set regs"))
}

/// Gives `vcpu` an FPU in its post-FNINIT state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("set fpu"))
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// `lvt` with its delivery mode (bits 8..11) replaced by `mode`.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT (the PIC's output) and LINT1 as NMI.
pub fn lapic_with_lints(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    lapic
}

/// Sets up `vcpu`'s local APIC interrupt lines.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let lapic = vcpu.get_lapic().map_err(ioctl("get lapic"))?;
    vcpu.set_lapic(&lapic_with_lints(lapic))
        .map_err(ioctl("set lapic"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PML4_START;

    #[test]
    fn long_mode_state() {
        let s = long_mode_sregs(kvm_sregs::default(), PML4_START);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr0 & CR0_PE, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cs.selector, 0x8);
        assert_eq!(s.ss.selector, 0x10);
        assert_eq!(s.tr.selector, 0x18);
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));
    }

    #[test]
    fn boot_regs_follow_the_protocol() {
        let r = boot_regs(0x100_0000);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(r.rflags, 2);
        assert_eq!(r.rsp, BOOT_STACK_POINTER);
    }

    #[test]
    fn lints_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // Masked and in fixed mode with a vector: only the delivery mode changes.
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x1_0000 | 0x30);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0000 | 0x700);
        let lapic = lapic_with_lints(lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), 0x1_0730);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x1_0400);
    }

    #[test]
    fn tables_written() {
        let mem =
            crate::memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_boot_tables(&mem).unwrap(), PML4_START);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, boot_gdt()[1]);
    }
}

//! What a dead vCPU looked like: all registers and the instruction bytes at RIP.
//!
//! On PVM-backed KVM an instruction the emulator lacks ends the VM with an internal error; the
//! bytes at RIP name the instruction, so this is the most useful thing to print. RIP is a guest
//! virtual address, so it is translated through the guest's own page tables first.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::boot::paging::{translate, PagingMode};

/// How many instruction bytes we show.
pub const CODE_BYTES: usize = 16;

/// A vCPU's registers at the moment it died, and the code at RIP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VcpuDump {
    /// General registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Guest-physical address of RIP, if it translates.
    pub rip_phys: Option<u64>,
    /// The bytes at RIP (fewer if they run off mapped memory).
    pub code: Option<([u8; CODE_BYTES], usize)>,
}

impl VcpuDump {
    /// Reads `vcpu`'s state and the code at its RIP from `mem`.
    pub fn capture<M: GuestMemory>(vcpu: &VcpuFd, mem: &M) -> Option<Self> {
        let regs = vcpu.get_regs().ok()?;
        let sregs = vcpu.get_sregs().ok()?;
        Some(Self::from_state(regs, sregs, mem))
    }

    /// Builds a dump from register state, reading the code at RIP from `mem`.
    pub fn from_state<M: GuestMemory>(regs: kvm_regs, sregs: kvm_sregs, mem: &M) -> Self {
        let mode = PagingMode::from_regs(sregs.cr0, sregs.cr4, sregs.efer);
        // Outside long mode the linear address includes the CS base (real mode, 32-bit code).
        let linear = if sregs.efer & (1 << 10) == 0 {
            sregs.cs.base.wrapping_add(regs.rip)
        } else {
            regs.rip
        };
        let rip_phys = translate(mem, mode, sregs.cr3, linear);
        let code = rip_phys.map(|pa| read_code(mem, mode, sregs.cr3, linear, pa));
        Self {
            regs,
            sregs,
            rip_phys,
            code,
        }
    }
}

/// Reads up to [`CODE_BYTES`] bytes at `linear` (which maps to `pa`), following the mapping
/// again if the bytes cross into the next page.
fn read_code<M: GuestMemory>(
    mem: &M,
    mode: PagingMode,
    cr3: u64,
    linear: u64,
    pa: u64,
) -> ([u8; CODE_BYTES], usize) {
    let mut buf = [0u8; CODE_BYTES];
    let mut got = 0;
    while got < CODE_BYTES {
        let addr = if got == 0 {
            Some(pa)
        } else {
            translate(mem, mode, cr3, linear.wrapping_add(got as u64))
        };
        let Some(addr) = addr else { break };
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let want = in_page.min(CODE_BYTES - got);
        if mem
            .read_slice(&mut buf[got..got + want], GuestAddress(addr))
            .is_err()
        {
            break;
        }
        got += want;
    }
    (buf, got)
}

fn segment(f: &mut fmt::Formatter<'_>, name: &str, s: &kvm_segment) -> fmt::Result {
    write!(
        f,
        "{name}={:04x} base={:016x} limit={:08x} type={:x} l={} db={} dpl={}",
        s.selector, s.base, s.limit, s.type_, s.l, s.db, s.dpl
    )
}

impl fmt::Display for VcpuDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        writeln!(
            f,
            "rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}",
            r.rax, r.rbx, r.rcx, r.rdx
        )?;
        writeln!(
            f,
            "rsi={:016x} rdi={:016x} rbp={:016x} rsp={:016x}",
            r.rsi, r.rdi, r.rbp, r.rsp
        )?;
        writeln!(
            f,
            "r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}",
            r.r8, r.r9, r.r10, r.r11
        )?;
        writeln!(
            f,
            "r12={:016x} r13={:016x} r14={:016x} r15={:016x}",
            r.r12, r.r13, r.r14, r.r15
        )?;
        writeln!(f, "rip={:016x} rflags={:08x}", r.rip, r.rflags)?;
        writeln!(
            f,
            "cr0={:016x} cr2={:016x} cr3={:016x} cr4={:016x} cr8={:x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.cr8
        )?;
        writeln!(f, "efer={:016x} apic_base={:016x}", s.efer, s.apic_base)?;
        for (name, seg) in [
            ("cs", &s.cs),
            ("ss", &s.ss),
            ("ds", &s.ds),
            ("es", &s.es),
            ("fs", &s.fs),
            ("gs", &s.gs),
            ("tr", &s.tr),
            ("ldt", &s.ldt),
        ] {
            segment(f, name, seg)?;
            writeln!(f)?;
        }
        writeln!(
            f,
            "gdt base={:016x} limit={:04x}  idt base={:016x} limit={:04x}",
            s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
        )?;
        match (self.rip_phys, self.code) {
            (Some(pa), Some((bytes, n))) if n > 0 => {
                write!(f, "code at rip (phys {pa:#x}):")?;
                for b in &bytes[..n] {
                    write!(f, " {b:02x}")?;
                }
                Ok(())
            }
            (Some(pa), _) => write!(f, "code at rip (phys {pa:#x}): unreadable"),
            (None, _) => write!(f, "code at rip: rip does not translate"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::paging::write_identity_map;
    use crate::boot::regs::long_mode_sregs;
    use crate::memory::GuestMemoryMmap;

    #[test]
    fn reads_code_through_page_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        // Code straddling a page boundary.
        let rip = 0x2ff8u64;
        let code: Vec<u8> = (1..=16).collect();
        mem.write_slice(&code, GuestAddress(rip)).unwrap();
        let regs = kvm_regs {
            rip,
            rax: 0xdead_beef,
            ..Default::default()
        };
        let dump = VcpuDump::from_state(regs, long_mode_sregs(kvm_sregs::default(), cr3), &mem);
        assert_eq!(dump.rip_phys, Some(rip));
        let (bytes, n) = dump.code.unwrap();
        assert_eq!(n, 16);
        assert_eq!(&bytes[..], &code[..]);
        let text = dump.to_string();
        assert!(text.contains("rax=00000000deadbeef"));
        assert!(text.contains("code at rip (phys 0x2ff8): 01 02 03"));
        assert!(text.contains("cr3=0000000000009000"));
    }

    #[test]
    fn real_mode_uses_cs_base_and_short_reads_at_the_end() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        sregs.cs.base = 0xf000;
        let regs = kvm_regs {
            rip: 0xffc,
            ..Default::default()
        };
        let dump = VcpuDump::from_state(regs, sregs, &mem);
        assert_eq!(dump.rip_phys, Some(0xfffc));
        assert_eq!(dump.code.unwrap().1, 4, "only 4 bytes left in guest memory");
    }

    #[test]
    fn untranslatable_rip() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            ..Default::default()
        };
        let dump = VcpuDump::from_state(regs, long_mode_sregs(kvm_sregs::default(), cr3), &mem);
        assert_eq!(dump.rip_phys, None);
        assert!(dump.to_string().ends_with("rip does not translate"));
    }
}

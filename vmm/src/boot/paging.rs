//! x86_64 page tables: the boot identity map we build, and the walk we use to read a guest's
//! memory by virtual address when a vCPU dies.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{PDE_START, PDPTE_START, PML4_START};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 12..52 of an entry: the physical address it points to.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How much the boot identity map covers: 512 2-MiB pages. The kernel builds its own tables
/// before it touches anything above this.
pub const IDENTITY_MAP_SIZE: u64 = 1 << 30;

/// Errors from writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory does not hold the page-table pages.
    #[error("cannot write the boot page tables")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The entries of the boot identity map: (guest address, value) pairs.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut entries = vec![
        (PML4_START, PDPTE_START | PRESENT | WRITABLE),
        (PDPTE_START, PDE_START | PRESENT | WRITABLE),
    ];
    entries.extend((0..512u64).map(|i| {
        (
            PDE_START + i * 8,
            (i << 21) | PAGE_SIZE_BIT | PRESENT | WRITABLE,
        )
    }));
    entries
}

/// Writes the identity map of the first GiB; returns the value for CR3.
pub fn write_identity_map<M: GuestMemory>(mem: &M) -> Result<u64, PagingError> {
    for (addr, value) in identity_map_entries() {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(PagingError::Write)?;
    }
    Ok(PML4_START)
}

/// Paging mode of a vCPU, from its control registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: linear addresses are physical.
    Off,
    /// 4-level long-mode paging.
    Level4,
    /// 5-level long-mode paging (CR4.LA57).
    Level5,
    /// 32-bit or PAE legacy paging; we do not walk these.
    Legacy,
}

impl PagingMode {
    /// Paging mode from CR0, CR4 and EFER.
    pub fn from_regs(cr0: u64, cr4: u64, efer: u64) -> Self {
        const CR0_PG: u64 = 1 << 31;
        const CR4_LA57: u64 = 1 << 12;
        const EFER_LMA: u64 = 1 << 10;
        if cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if efer & EFER_LMA == 0 {
            PagingMode::Legacy
        } else if cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }
}

/// Translates guest-virtual `gva` through the page tables at `cr3`. Every table read is
/// bounds-checked against guest memory; a missing or malformed mapping gives `None`.
pub fn translate<M: GuestMemory>(mem: &M, mode: PagingMode, cr3: u64, gva: u64) -> Option<u64> {
    let levels = match mode {
        PagingMode::Off => return Some(gva),
        PagingMode::Legacy => return None,
        PagingMode::Level4 => 4,
        PagingMode::Level5 => 5,
    };
    let mut table = cr3 & ADDR_MASK;
    for level in (1..=levels).rev() {
        // Level 1 (PT) uses bits 12..21, level 2 (PD) 21..30, and so on.
        let shift = 12 + 9 * (level - 1);
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        // A large page at the PDPT (1 GiB) or PD (2 MiB) level ends the walk.
        if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    Some(table | (gva & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn identity_map_layout() {
        let m = mem();
        assert_eq!(write_identity_map(&m).unwrap(), PML4_START);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x3);
        let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 0x3);
        for i in [0u64, 1, 511] {
            let pde: u64 = m.read_obj(GuestAddress(PDE_START + i * 8)).unwrap();
            assert_eq!(pde, (i << 21) | 0x83, "pde {i}");
        }
        assert_eq!(identity_map_entries().len(), 514);
    }

    #[test]
    fn walk_follows_the_identity_map() {
        let m = mem();
        let cr3 = write_identity_map(&m).unwrap();
        let pa = translate(&m, PagingMode::Level4, cr3, 0x0123_4567);
        assert_eq!(pa, Some(0x0123_4567));
        // Above the mapped GiB the PDPT entry is empty.
        assert_eq!(translate(&m, PagingMode::Level4, cr3, 1 << 30), None);
    }

    #[test]
    fn walk_handles_4k_pages_and_high_half() {
        let m = mem();
        // Map 0xffffffff81000000 -> 0x200000 through 4-KiB pages at 0x10000.. (PML4 at 0x10000).
        let gva: u64 = 0xffff_ffff_8100_0000 + 0x345;
        let idx = |shift: u32| (gva >> shift) & 0x1ff;
        let (pml4, pdpt, pd, pt) = (0x10000u64, 0x11000u64, 0x12000u64, 0x13000u64);
        m.write_obj(pdpt | 1, GuestAddress(pml4 + idx(39) * 8))
            .unwrap();
        m.write_obj(pd | 1, GuestAddress(pdpt + idx(30) * 8))
            .unwrap();
        m.write_obj(pt | 1, GuestAddress(pd + idx(21) * 8)).unwrap();
        m.write_obj(0x20_0000u64 | 1, GuestAddress(pt + idx(12) * 8))
            .unwrap();
        assert_eq!(
            translate(&m, PagingMode::Level4, pml4, gva),
            Some(0x20_0345)
        );
        // A table pointer outside guest memory is no translation, not a crash.
        m.write_obj(0xdead_0000_0000u64 | 1, GuestAddress(pd + idx(21) * 8))
            .unwrap();
        assert_eq!(translate(&m, PagingMode::Level4, pml4, gva), None);
    }

    #[test]
    fn paging_mode_from_control_registers() {
        assert_eq!(PagingMode::from_regs(0x11, 0, 0), PagingMode::Off);
        assert_eq!(
            PagingMode::from_regs(0x8000_0011, 0x20, 0x500),
            PagingMode::Level4
        );
        assert_eq!(
            PagingMode::from_regs(0x8000_0011, 0x1020, 0x500),
            PagingMode::Level5
        );
        assert_eq!(
            PagingMode::from_regs(0x8000_0011, 0x20, 0),
            PagingMode::Legacy
        );
        assert_eq!(translate(&mem(), PagingMode::Off, 0, 0x1234), Some(0x1234));
    }
}

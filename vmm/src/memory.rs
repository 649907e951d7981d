//! Guest RAM: how a memory size becomes mapped regions around the MMIO hole.
//!
//! The guest sees RAM from 0 up to the MMIO hole and, for larger sizes, the rest from 4 GiB up.
//! Each region is one anonymous `MAP_NORESERVE` mapping in this process, so untouched guest pages
//! cost nothing on the host.

use vm_memory::{GuestAddress, GuestMemoryRegion};

use crate::layout::{HIGH_RAM_START, MIN_MEM_MIB, MMIO_HOLE_START};

/// The guest memory type every part of the VMM (loaders, devices, virtio queues) works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The largest guest we map; beyond this a typo in a size is more likely than a real need.
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// Errors from sizing or mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is below the floor the guest needs to boot.
    #[error("guest memory of {0} MiB is below the minimum of {MIN_MEM_MIB} MiB")]
    TooSmall(u64),
    /// The requested size is absurdly large.
    #[error("guest memory of {0} MiB is above the maximum of {MAX_MEM_MIB} MiB")]
    TooLarge(u64),
    /// The host refused the mapping.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// The guest-physical RAM ranges `(start, length)` for `mem_bytes` of memory.
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_bytes > MMIO_HOLE_START {
        regions.push((
            GuestAddress(HIGH_RAM_START),
            (mem_bytes - MMIO_HOLE_START) as usize,
        ));
    }
    regions
}

/// Checks `mem_mib` against the floor and the ceiling.
pub fn check_size(mem_mib: u64) -> Result<u64, MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if mem_mib > MAX_MEM_MIB {
        return Err(MemoryError::TooLarge(mem_mib));
    }
    Ok(mem_mib << 20)
}

/// Maps `mem_mib` MiB of guest RAM.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = check_size(mem_mib)?;
    GuestMemoryMmap::from_ranges(&ram_regions(bytes)).map_err(MemoryError::Map)
}

/// Faults in the guest pages of `[addr, addr + len)` before we copy the kernel or initrd there.
///
/// One page fault per 4-KiB page costs ~10 µs on a nested host and made loading a 10 MiB kernel
/// the bulk of the VMM's start-up. So the range is first marked for transparent huge pages (the
/// 2-MiB blocks lying wholly inside it get one fault each; nothing outside the range is made
/// resident, so guest memory does not grow), then populated with one `MADV_POPULATE_WRITE`.
/// Best effort: on a host without THP or `MADV_POPULATE_WRITE` the copy just takes the faults.
pub fn prefault(mem: &GuestMemoryMmap, addr: u64, len: u64) {
    use vm_memory::{GuestMemory, MemoryRegionAddress};
    const PAGE: u64 = 4096;
    let Some(end) = addr.checked_add(len) else {
        return;
    };
    for region in mem.iter() {
        let r_start = region.start_addr().0;
        let r_end = r_start + region.len();
        let start = (addr.max(r_start) - r_start) & !(PAGE - 1);
        let stop = (end.min(r_end).saturating_sub(r_start) + PAGE - 1) & !(PAGE - 1);
        let stop = stop.min(region.len());
        if start >= stop {
            continue;
        }
        let Ok(host) = region.get_host_address(MemoryRegionAddress(start)) else {
            continue;
        };
        for advice in [libc::MADV_HUGEPAGE, libc::MADV_POPULATE_WRITE] {
            // SAFETY: `[host, host + (stop - start))` lies inside this region's mapping (offsets
            // are clamped to the region and page-aligned, as is the mapping). MADV_HUGEPAGE
            // only changes how later faults are served and MADV_POPULATE_WRITE only faults
            // pages in; neither changes their contents or what is mapped where.
            unsafe {
                libc::madvise(host.cast(), (stop - start) as usize, advice);
            }
        }
    }
}

/// End (exclusive) of the RAM below the MMIO hole: where the initrd is placed under.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemory;
    mem.iter()
        .map(|r| r.start_addr().0 + r.len())
        .filter(|&end| end <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_region_below_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let r = ram_regions(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1].0, GuestAddress(HIGH_RAM_START));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn size_limits() {
        assert!(matches!(check_size(16), Err(MemoryError::TooSmall(16))));
        assert_eq!(check_size(32).unwrap(), 32 << 20);
        assert!(matches!(
            check_size(MAX_MEM_MIB + 1),
            Err(MemoryError::TooLarge(_))
        ));
    }

    #[test]
    fn prefault_makes_exactly_the_range_resident() {
        use vm_memory::{Bytes, GuestMemory};
        let mem = create(32).unwrap();
        prefault(&mem, 0x10_0800, 0x2000);
        prefault(&mem, 31 << 20, 4 << 20); // runs past the end: clamped
        prefault(&mem, u64::MAX - 1, 2); // overflows: ignored
        mem.write_obj(1u8, GuestAddress(0x10_0800)).unwrap();
        let host = mem.get_host_address(GuestAddress(0x10_0000)).unwrap();
        let mut vec = [0u8; 4];
        // SAFETY: mincore on a live, page-aligned mapping we own.
        let rc = unsafe { libc::mincore(host.cast(), 4 * 4096, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert_eq!(vec.map(|b| b & 1), [1, 1, 1, 0]);
    }

    #[test]
    fn maps_and_reports_low_end() {
        let mem = create(64).unwrap();
        assert_eq!(low_ram_end(&mem), 64 << 20);
    }
}

//! Guest memory as a file: written sparsely, mapped back `MAP_PRIVATE`.
//!
//! Writing: the file gets its full size up front (a hole), then only pages that hold something
//! other than zeros are written. Pages of anonymous guest memory that were never touched are
//! not even read (`mincore` says they are not resident, so they are zero): reading them would
//! fault in the zero page one by one (~µs each on a nested host) and grow the VMM's RSS.
//!
//! Mapping: each region is a private, copy-on-write mapping of its part of the file. Every
//! clone restored from one snapshot shares the file's pages in the page cache until it writes
//! them. The file must never change while a clone maps it: truncating it would SIGBUS the
//! clone, rewriting it would change the guest's memory under it. Snapshots are written to a
//! temporary name and renamed into place, so a template directory is replaced, never edited.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

use super::state::RegionFile;
use crate::memory::GuestMemoryMmap;

const PAGE: usize = 4096;
/// Pages read per copy into the bounce buffer.
const BATCH: usize = 256;

/// Errors writing or mapping the memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Creating, sizing, writing or syncing the file failed.
    #[error("cannot write the memory file")]
    Write(#[source] std::io::Error),
    /// Reading guest memory failed (a VMM bug: the ranges come from the regions themselves).
    #[error("cannot read guest memory")]
    Read(#[source] vm_memory::GuestMemoryError),
    /// The file could not be opened or inspected.
    #[error("cannot open the memory file")]
    Open(#[source] std::io::Error),
    /// The file is not the size the state file says.
    #[error("memory file is {actual} bytes, the snapshot says {expected}")]
    Size {
        /// From the state file.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// `mmap` failed.
    #[error("cannot map the memory file")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The regions do not form guest memory (the state file was validated, so a VMM bug).
    #[error("memory file regions do not form guest memory")]
    Regions,
}

/// What [`write`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// The regions and their file offsets.
    pub regions: Vec<RegionFile>,
    /// The file's size (all of guest RAM).
    pub file_size: u64,
    /// Bytes actually written (non-zero pages); about what the file takes on disk.
    pub data_bytes: u64,
}

/// Which pages of `region` may hold data: for anonymous memory, the resident ones; for a
/// file-backed region (a VM that was itself restored), every page, since a page it never
/// touched still has the file's contents.
fn maybe_data(region: &vm_memory::GuestRegionMmap<()>) -> Vec<bool> {
    let pages = (region.len() as usize).div_ceil(PAGE);
    if region.file_offset().is_some() {
        return vec![true; pages];
    }
    let mut vec = vec![0u8; pages];
    // SAFETY: the region is a live, page-aligned mapping of `region.len()` bytes that `mem`
    // keeps alive for this call; mincore writes one byte per page into `vec`, which has
    // exactly that many.
    let rc = unsafe {
        libc::mincore(
            region.as_ptr().cast(),
            region.len() as usize,
            vec.as_mut_ptr(),
        )
    };
    if rc != 0 {
        tracing::debug!("mincore failed, reading all guest pages");
        return vec![true; pages];
    }
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// Writes all of `mem` to a new file at `path`, sparsely, and syncs it.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<Written, MemoryFileError> {
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(MemoryFileError::Write)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        regions.push(RegionFile {
            guest_addr: region.start_addr().0,
            size: region.len(),
            file_offset: offset,
        });
        offset += region.len();
    }
    file.set_len(offset).map_err(MemoryFileError::Write)?;
    let mut buf = vec![0u8; BATCH * PAGE];
    let mut data_bytes = 0u64;
    for (region, place) in mem.iter().zip(&regions) {
        let resident = maybe_data(region);
        let mut page = 0;
        while page < resident.len() {
            if !resident[page] {
                page += 1;
                continue;
            }
            // A run of possibly non-zero pages, at most one buffer long.
            let run = resident[page..]
                .iter()
                .take(BATCH)
                .take_while(|r| **r)
                .count();
            let start = (page * PAGE) as u64;
            let len = (run * PAGE).min((region.len() - start) as usize);
            region
                .read_slice(&mut buf[..len], MemoryRegionAddress(start))
                .map_err(MemoryFileError::Read)?;
            data_bytes += write_nonzero(&file, &buf[..len], place.file_offset + start)?;
            page += run;
        }
    }
    file.sync_all().map_err(MemoryFileError::Write)?;
    Ok(Written {
        regions,
        file_size: offset,
        data_bytes,
    })
}

/// Writes the non-zero pages of `data` (which starts at `file_offset`), coalescing neighbours
/// into one write; returns the bytes written.
fn write_nonzero(file: &File, data: &[u8], file_offset: u64) -> Result<u64, MemoryFileError> {
    let mut written = 0u64;
    let mut run_start = None;
    let pages = data.chunks(PAGE).enumerate();
    for (i, page) in pages.chain(std::iter::once((data.len().div_ceil(PAGE), &[][..]))) {
        let zero = page.iter().all(|&b| b == 0);
        match (run_start, zero) {
            (None, false) => run_start = Some(i),
            (Some(s), true) => {
                let bytes = &data[s * PAGE..(i * PAGE).min(data.len())];
                file.write_all_at(bytes, file_offset + (s * PAGE) as u64)
                    .map_err(MemoryFileError::Write)?;
                written += bytes.len() as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Maps the memory file at `path` privately as guest memory laid out as `regions`.
pub fn map(
    path: &Path,
    regions: &[RegionFile],
    expected_size: u64,
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let file = File::open(path).map_err(MemoryFileError::Open)?;
    let actual = file.metadata().map_err(MemoryFileError::Open)?.len();
    if actual != expected_size {
        return Err(MemoryFileError::Size {
            expected: expected_size,
            actual,
        });
    }
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size).map_err(|_| MemoryFileError::Regions)?;
        let fd = file.try_clone().map_err(MemoryFileError::Open)?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(fd, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(MemoryFileError::Map)?;
        mapped.push(
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                .ok_or(MemoryFileError::Regions)?,
        );
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|_| MemoryFileError::Regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_sparsely_and_maps_back_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let mem = crate::memory::create(32).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_obj(0xabu8, GuestAddress((32 << 20) - 1)).unwrap();
        // Resident but zero: read, not written.
        mem.write_obj(0u8, GuestAddress(0x10_0000)).unwrap();
        let w = write(&mem, &path).unwrap();
        assert_eq!(w.file_size, 32 << 20);
        assert_eq!(w.data_bytes, 2 * PAGE as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 * 1024);

        let back = map(&path, &w.regions, w.file_size).unwrap();
        let mut got = [0u8; 5];
        back.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(
            back.read_obj::<u8>(GuestAddress((32 << 20) - 1)).unwrap(),
            0xab
        );
        // Writes stay private to the mapping.
        back.write_slice(b"HELLO", GuestAddress(0x1000)).unwrap();
        let again = map(&path, &w.regions, w.file_size).unwrap();
        again.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"hello");
        // A snapshot of the restored memory carries both its own and the file's pages.
        let path2 = dir.path().join("memory2");
        let w2 = write(&back, &path2).unwrap();
        let third = map(&path2, &w2.regions, w2.file_size).unwrap();
        third.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"HELLO");
        assert_eq!(
            third.read_obj::<u8>(GuestAddress((32 << 20) - 1)).unwrap(),
            0xab
        );

        assert!(matches!(
            map(&path, &w.regions, w.file_size + 1),
            Err(MemoryFileError::Size { .. })
        ));
    }
}

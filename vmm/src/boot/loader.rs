//! Loading the guest kernel (ELF `vmlinux` or `bzImage`) and its initrd into guest memory.
//!
//! The format is recognised from the file's first bytes before anything is mapped, so a wrong
//! file is reported as such and early. Loading itself is linux-loader's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::HIMEM_START;
use crate::memory::{low_ram_end, prefault, GuestMemoryMmap};

/// Offset of the 64-bit entry point in a bzImage's protected-mode code (boot protocol 2.12+).
const BZIMAGE_ENTRY_64_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Highest initrd address when the kernel does not say (boot protocol default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Errors from loading the kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {}", .path.display())]
    OpenKernel {
        /// The kernel path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF vmlinux nor a bzImage.
    #[error("{} is not a kernel image (neither an ELF vmlinux nor a bzImage)", .0.display())]
    NotAKernel(PathBuf),
    /// A bzImage without the 64-bit entry point we boot through.
    #[error("{} is a bzImage without a 64-bit entry point", .0.display())]
    No64BitEntry(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {}", .path.display())]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// linux-loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initrd file could not be opened or read.
    #[error("cannot read initrd {}", .path.display())]
    OpenInitrd {
        /// The initrd path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooLarge {
        /// The initrd's size.
        size: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy the initrd into guest memory")]
    CopyInitrd(#[source] vm_memory::GuestMemoryError),
}

/// What a kernel file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A `bzImage` (boot sector + setup + compressed kernel).
    BzImage,
}

/// Recognises a kernel image from its first bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        return Some(KernelFormat::Elf);
    }
    let boot_sig = head.get(0x1fe..0x200)?;
    let hdrs = head.get(0x202..0x206)?;
    (boot_sig == [0x55, 0xaa] && hdrs == b"HdrS").then_some(KernelFormat::BzImage)
}

/// An opened kernel file whose format is known.
#[derive(Debug)]
pub struct KernelImage {
    path: PathBuf,
    file: File,
    format: KernelFormat,
    /// Guest ranges `(address, length)` the loader will copy the image to, as far as the
    /// headers tell; used only to fault those pages in at once.
    load_ranges: Vec<(u64, u64)>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The file part of each `PT_LOAD` segment of an ELF64 image: `(p_paddr, p_filesz)`.
fn elf_load_ranges(file: &mut File, head: &[u8]) -> Option<Vec<(u64, u64)>> {
    const PT_LOAD: u64 = 1;
    const PHDR_SIZE: u64 = 56;
    let phoff = u64_at(head, 0x20)?;
    let phentsize = u16_at(head, 0x36)?;
    let phnum = u16_at(head, 0x38)?;
    if phentsize != PHDR_SIZE || phnum > 64 {
        return None;
    }
    let mut phdrs = vec![0u8; (phnum * PHDR_SIZE) as usize];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut phdrs).ok()?;
    Some(
        phdrs
            .chunks(PHDR_SIZE as usize)
            .filter(|p| u32_at(p, 0) == Some(PT_LOAD))
            .filter_map(|p| Some((u64_at(p, 24)?, u64_at(p, 32)?)))
            .collect(),
    )
}

/// Where linux-loader copies a bzImage's protected-mode part: `code32_start`, for the file
/// minus the boot sector and setup code.
fn bzimage_load_range(head: &[u8], file_len: u64) -> Option<(u64, u64)> {
    let setup_sects = match head.get(0x1f1)? {
        0 => 4,
        n => u64::from(*n),
    };
    let code32_start = u32_at(head, 0x214)?;
    Some((code32_start, file_len.checked_sub((setup_sects + 1) * 512)?))
}

impl KernelImage {
    /// Opens `path` and recognises its format.
    pub fn open(path: &Path) -> Result<Self, LoaderError> {
        let open_err = |source| LoaderError::OpenKernel {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        if file.metadata().map_err(open_err)?.is_dir() {
            return Err(LoaderError::NotAKernel(path.to_owned()));
        }
        let mut head = Vec::with_capacity(0x210);
        file.by_ref()
            .take(0x210)
            .read_to_end(&mut head)
            .map_err(open_err)?;
        let format =
            detect_format(&head).ok_or_else(|| LoaderError::NotAKernel(path.to_owned()))?;
        let load_ranges = match format {
            KernelFormat::Elf => elf_load_ranges(&mut file, &head).unwrap_or_default(),
            KernelFormat::BzImage => {
                let len = file.metadata().map_err(open_err)?.len();
                bzimage_load_range(&head, len).into_iter().collect()
            }
        };
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            format,
            load_ranges,
        })
    }

    /// The image's format.
    pub fn format(&self) -> KernelFormat {
        self.format
    }
}

/// Where the kernel landed.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Guest-physical address of the 64-bit entry point.
    pub entry: u64,
    /// First byte above everything the kernel occupies while booting (for a bzImage this
    /// includes the decompressor's working area).
    pub end: u64,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Loads `image` into `mem`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &mut KernelImage,
) -> Result<LoadedKernel, LoaderError> {
    for &(addr, len) in &image.load_ranges {
        prefault(mem, addr, len);
    }
    let highmem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| LoaderError::Load {
        path: image.path.clone(),
        source,
    };
    match image.format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut image.file, highmem).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut image.file, highmem).map_err(load_err)?;
            let Some(hdr) = r.setup_header else {
                return Err(LoaderError::NotAKernel(image.path.clone()));
            };
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry(image.path.clone()));
            }
            // The decompressor works in [max(load, pref_address), + init_size).
            let work_start = r.kernel_load.0.max(hdr.pref_address);
            let work_end = work_start.saturating_add(u64::from(hdr.init_size));
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + BZIMAGE_ENTRY_64_OFFSET,
                end: r.kernel_end.max(work_end),
                setup_header: Some(hdr),
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of low RAM (`low_end`), below
/// `addr_max`, above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, low_end: u64, addr_max: u64) -> Option<u64> {
    let top = low_end.min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    let kernel_end = kernel_end.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// An opened initrd (opened early so a bad path is reported before anything is allocated).
#[derive(Debug)]
pub struct InitrdImage {
    file: File,
    size: u64,
}

impl InitrdImage {
    /// Opens the initrd at `path`.
    pub fn open(path: &Path) -> Result<Self, LoaderError> {
        let open_err = |source| LoaderError::OpenInitrd {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        Ok(Self {
            file,
            size: meta.len(),
        })
    }
}

/// Copies `initrd` into `mem` above `kernel`; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut InitrdImage,
    kernel: &LoadedKernel,
) -> Result<(u64, u32), LoaderError> {
    let size = initrd.size;
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let too_large = || LoaderError::InitrdTooLarge { size };
    let size32 = u32::try_from(size).map_err(|_| too_large())?;
    let addr =
        initrd_address(size, kernel.end, low_ram_end(mem), addr_max).ok_or_else(too_large)?;
    prefault(mem, addr, size);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut initrd.file, size as usize)
        .map_err(LoaderError::CopyInitrd)?;
    Ok((addr, size32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x210];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        bz[0x202] = b'X';
        assert_eq!(detect_format(&bz), None);
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(b""), None);
    }

    #[test]
    fn load_ranges_from_headers() {
        // An ELF64 header with two program headers right after it: PT_LOAD and PT_NOTE.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let load = 64;
        elf[load..load + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[load + 24..load + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        elf[load + 32..load + 40].copy_from_slice(&0x1234u64.to_le_bytes());
        elf[load + 56..load + 60].copy_from_slice(&4u32.to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&elf).unwrap();
        let image = KernelImage::open(f.path()).unwrap();
        assert_eq!(image.format(), KernelFormat::Elf);
        assert_eq!(image.load_ranges, vec![(0x100_0000, 0x1234)]);

        let mut bz = vec![0u8; 0x400];
        bz[0x1f1] = 0; // means 4 setup sectors
        bz[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert_eq!(
            bzimage_load_range(&bz, 0x10_0000),
            Some((0x10_0000, 0x10_0000 - 5 * 512))
        );
        assert_eq!(bzimage_load_range(&bz, 100), None);
    }

    #[test]
    fn rejects_non_kernels_with_a_clear_error() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello, not a kernel").unwrap();
        let err = KernelImage::open(f.path()).unwrap_err();
        assert!(matches!(err, LoaderError::NotAKernel(_)));
        assert!(err.to_string().contains("not a kernel image"));

        let err = KernelImage::open(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(err, LoaderError::OpenKernel { .. }));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            KernelImage::open(dir.path()),
            Err(LoaderError::NotAKernel(_))
        ));
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let mb = 1u64 << 20;
        assert_eq!(
            initrd_address(10_000, 20 * mb, 64 * mb, DEFAULT_INITRD_ADDR_MAX),
            Some((64 * mb - 10_000) & !0xfff)
        );
        // Capped by the kernel's initrd_addr_max.
        assert_eq!(
            initrd_address(4096, 20 * mb, 4096 * mb, 0x7fff_ffff),
            Some(0x8000_0000 - 4096)
        );
        // Would overlap the kernel.
        assert_eq!(initrd_address(50 * mb, 20 * mb, 64 * mb, u64::MAX), None);
        assert_eq!(initrd_address(u64::MAX, 0, 64 * mb, u64::MAX), None);
    }

    #[test]
    fn initrd_loaded_and_too_large_reported() {
        let mem = crate::memory::create(32).unwrap();
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            end: 0x180_0000,
            setup_header: None,
        };
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701 cpio bytes").unwrap();
        let mut initrd = InitrdImage::open(f.path()).unwrap();
        let (addr, size) = load_initrd(&mem, &mut initrd, &kernel).unwrap();
        assert_eq!(size, 17);
        let mut buf = [0u8; 6];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf, b"070701");

        let big = tempfile::NamedTempFile::new().unwrap();
        big.as_file().set_len(16 << 20).unwrap();
        let mut big = InitrdImage::open(big.path()).unwrap();
        assert!(matches!(
            load_initrd(&mem, &mut big, &kernel),
            Err(LoaderError::InitrdTooLarge { .. })
        ));
        assert!(matches!(
            InitrdImage::open(Path::new("/nonexistent/initrd")),
            Err(LoaderError::OpenInitrd { .. })
        ));
    }
}

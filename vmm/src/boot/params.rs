//! The Linux zero page (`struct boot_params`) and the e820 memory map in it.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemory};

use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIGH_RAM_START, HIMEM_START, MMIO_HOLE_START,
    ZERO_PAGE_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// `boot_flag` magic of a valid setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id: we are not one of the registered loaders.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Physical alignment the kernel asks for by default (`CONFIG_PHYSICAL_ALIGN`).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Entry type ([`E820_RAM`]).
    pub kind: u32,
}

/// Errors from building or writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// More e820 entries than the zero page holds (cannot happen with our layout).
    #[error("too many e820 entries")]
    TooManyE820Entries,
    /// Writing the zero page into guest memory failed.
    #[error("cannot write the zero page")]
    Write(#[source] linux_loader::configurator::Error),
}

/// The e820 map for `mem_bytes` of guest RAM: base memory below the EBDA, the rest of low RAM
/// from 1 MiB up to the MMIO hole, and anything beyond continuing at 4 GiB. The hole and the
/// legacy area between 640 KiB and 1 MiB are not RAM.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let ram = |addr, end: u64| E820Entry {
        addr,
        size: end - addr,
        kind: E820_RAM,
    };
    let mut map = vec![ram(0, EBDA_START)];
    let low_end = mem_bytes.min(MMIO_HOLE_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end));
    }
    if mem_bytes > MMIO_HOLE_START {
        map.push(ram(
            HIGH_RAM_START,
            HIGH_RAM_START + (mem_bytes - MMIO_HOLE_START),
        ));
    }
    map
}

/// What the zero page needs to know about the loaded system.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInputs {
    /// The bzImage's setup header, or `None` for an ELF vmlinux (we make one up).
    pub setup_header: Option<setup_header>,
    /// Length of the command line, without the terminating NUL.
    pub cmdline_len: usize,
    /// Where the initrd was placed and how long it is.
    pub initrd: Option<(u64, u32)>,
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
}

/// Builds the zero page.
pub fn zero_page(inputs: &ZeroPageInputs) -> Result<boot_params, ParamsError> {
    let hdr = match inputs.setup_header {
        Some(hdr) => hdr,
        None => setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            kernel_alignment: KERNEL_ALIGNMENT,
            ..Default::default()
        },
    };
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = inputs.cmdline_len.min(CMDLINE_MAX_SIZE - 1) as u32;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size;
    }
    let map = e820_map(inputs.mem_bytes);
    if map.len() > params.e820_table.len() {
        return Err(ParamsError::TooManyE820Entries);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page at [`ZERO_PAGE_START`].
pub fn write_zero_page<M: GuestMemory>(mem: &M, params: &boot_params) -> Result<(), ParamsError> {
    let bp = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<M>(&bp, mem).map_err(ParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_without_the_hole() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_with_the_hole() {
        let mem = 5u64 << 30;
        let map = e820_map(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_HOLE_START);
        assert_eq!(map[2].addr, HIGH_RAM_START);
        assert_eq!(map[2].size, mem - MMIO_HOLE_START);
        // Nothing claims the hole or the legacy 640K-1M area.
        for e in &map {
            let end = e.addr + e.size;
            assert!(end <= MMIO_HOLE_START || e.addr >= HIGH_RAM_START);
            assert!(end <= EBDA_START || e.addr >= HIMEM_START);
        }
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(total, mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_exactly_at_the_hole() {
        let map = e820_map(MMIO_HOLE_START);
        assert_eq!(map.len(), 2);
        assert_eq!(map[1].addr + map[1].size, MMIO_HOLE_START);
    }

    #[test]
    fn zero_page_for_elf_and_bzimage() {
        let inputs = ZeroPageInputs {
            setup_header: None,
            cmdline_len: 42,
            initrd: Some((0x100_0000, 0x1234)),
            mem_bytes: 64 << 20,
        };
        let p = zero_page(&inputs).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x100_0000, 0x1234)
        );
        assert_eq!(p.e820_entries, 2);

        let bz = setup_header {
            version: 0x20f,
            loadflags: 1,
            ..Default::default()
        };
        let p = zero_page(&ZeroPageInputs {
            setup_header: Some(bz),
            initrd: None,
            ..inputs
        })
        .unwrap();
        let hdr = p.hdr;
        assert_eq!(({ hdr.version }, hdr.loadflags), (0x20f, 1));
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.ramdisk_size }, 0);
    }
}

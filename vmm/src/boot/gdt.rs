//! The boot GDT: a flat 64-bit code segment, a flat data segment and a TSS.
//!
//! The kernel's 64-bit entry point expects to be running in long mode with flat segments; it loads
//! its own GDT early. We write ours to guest memory (so a reload of a selector finds it) and hand
//! KVM the same descriptors as `kvm_segment`s.

use kvm_bindings::kvm_segment;

/// Selector of the code segment (GDT index 1).
pub const CODE_SELECTOR: u16 = 1 << 3;
/// Selector of the data segment (GDT index 2).
pub const DATA_SELECTOR: u16 = 2 << 3;
/// Selector of the TSS (GDT index 3).
pub const TSS_SELECTOR: u16 = 3 << 3;

/// Flags+access words (`flags << 12 | access`) of the four boot descriptors.
const NULL_FLAGS: u16 = 0;
/// Present, ring 0, code, execute/read, accessed; long mode (L), 4-KiB granularity.
const CODE64_FLAGS: u16 = 0xa09b;
/// Present, ring 0, data, read/write, accessed; 32-bit default size, 4-KiB granularity.
const DATA_FLAGS: u16 = 0xc093;
/// Present, ring 0, 64-bit busy TSS.
const TSS_FLAGS: u16 = 0x808b;

/// The boot GDT, in order: null, code, data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        gdt_entry(NULL_FLAGS, 0, 0),
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Encodes a segment descriptor from its flags/access word, base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff);
    // With 4-KiB granularity the limit counts pages.
    if granularity(entry) == 1 {
        ((raw << 12) | 0xfff) as u32
    } else {
        raw as u32
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

fn granularity(entry: u64) -> u8 {
    bit(entry, 55)
}

/// The `kvm_segment` KVM needs for GDT entry `index` holding `entry`.
pub fn kvm_segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: granularity(entry),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_classic_descriptors() {
        // Known-good values (what Linux's own GDT_ENTRY macro produces for these flags).
        let gdt = boot_gdt();
        assert_eq!(gdt[0], 0);
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_is_flat_long_mode() {
        let seg = kvm_segment_from_gdt(boot_gdt()[1], 1);
        assert_eq!(seg.selector, CODE_SELECTOR);
        assert_eq!((seg.base, seg.limit), (0, 0xffff_ffff));
        assert_eq!((seg.l, seg.db, seg.g, seg.present, seg.s), (1, 0, 1, 1, 1));
        assert_eq!((seg.type_, seg.dpl, seg.unusable), (0xb, 0, 0));
    }

    #[test]
    fn data_and_tss_segments() {
        let data = kvm_segment_from_gdt(boot_gdt()[2], 2);
        assert_eq!(data.selector, DATA_SELECTOR);
        assert_eq!((data.type_, data.db, data.l, data.s), (3, 1, 0, 1));
        let tss = kvm_segment_from_gdt(boot_gdt()[3], 3);
        assert_eq!(tss.selector, TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_byte_granular_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let seg = kvm_segment_from_gdt(e, 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.g, 0);
    }
}

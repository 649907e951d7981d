//! A tiny guest for measuring the cost of one port-I/O exit in a VMM.
//!
//! An ELF64 image whose code writes a byte to the UART's scratch register (`0x3ff`, handled in
//! user space by both bulkhead-vmm and QEMU) `n` times, then resets through the i8042. The code
//! means the same in 32-bit protected mode and in 64-bit mode, so it runs from bulkhead-vmm's
//! 64-bit ELF entry and from QEMU's PVH entry (the `Xen` PHYS32_ENTRY note) alike. The time per
//! exit is the difference between a run with `n` writes and one with none, divided by `n`.

/// Where the code is loaded and entered (1 MiB).
const LOAD_ADDR: u64 = 0x10_0000;
/// File offset of the code.
const CODE_OFFSET: u64 = 0x1000;
/// The 16550's scratch register: a plain read/write register in every UART model.
const SCRATCH_PORT: u16 = 0x3ff;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point QEMU looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Machine code: `n` OUTs to the scratch register, then an i8042 reset.
fn code(n: u32) -> Vec<u8> {
    let mut c = Vec::new();
    c.push(0xb9); // mov ecx, n
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, SCRATCH_PORT
    c.extend_from_slice(&SCRATCH_PORT.to_le_bytes());
    c.extend_from_slice(&[0xb0, 0x5a]); // mov al, 0x5a
    c.extend_from_slice(&[0x85, 0xc9]); // test ecx, ecx
    c.extend_from_slice(&[0x74, 0x05]); // jz done (skip the loop)
    c.push(0xee); // loop: out dx, al
    c.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    c.extend_from_slice(&[0x75, 0xfb]); // jnz loop
    c.extend_from_slice(&[0xb0, 0xfe]); // done: mov al, 0xfe
    c.extend_from_slice(&[0xe6, 0x64]); // out 0x64, al (i8042 reset)
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    c
}

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn push_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The ELF image for `n` exits.
pub fn elf(n: u32) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let code = code(n);
    let note_offset = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    push_u32(&mut note, 4); // namesz
    push_u32(&mut note, 4); // descsz
    push_u32(&mut note, XEN_ELFNOTE_PHYS32_ENTRY);
    note.extend_from_slice(b"Xen\0");
    push_u32(&mut note, LOAD_ADDR as u32);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV ABI
    f.extend_from_slice(&[0; 8]);
    push_u16(&mut f, 2); // ET_EXEC
    push_u16(&mut f, 0x3e); // EM_X86_64
    push_u32(&mut f, 1);
    push_u64(&mut f, LOAD_ADDR); // e_entry
    push_u64(&mut f, EHDR); // e_phoff
    push_u64(&mut f, 0); // e_shoff
    push_u32(&mut f, 0); // e_flags
    push_u16(&mut f, EHDR as u16);
    push_u16(&mut f, PHDR as u16);
    push_u16(&mut f, 2); // e_phnum
    push_u16(&mut f, 64); // e_shentsize
    push_u16(&mut f, 0); // e_shnum
    push_u16(&mut f, 0); // e_shstrndx

    // PT_LOAD, RWX, the code at LOAD_ADDR.
    push_u32(&mut f, 1);
    push_u32(&mut f, 7);
    push_u64(&mut f, CODE_OFFSET);
    push_u64(&mut f, LOAD_ADDR);
    push_u64(&mut f, LOAD_ADDR);
    push_u64(&mut f, code.len() as u64);
    push_u64(&mut f, code.len() as u64);
    push_u64(&mut f, 0x1000);
    // PT_NOTE with the PVH entry.
    push_u32(&mut f, 4);
    push_u32(&mut f, 4);
    push_u64(&mut f, note_offset);
    push_u64(&mut f, 0);
    push_u64(&mut f, 0);
    push_u64(&mut f, note.len() as u64);
    push_u64(&mut f, note.len() as u64);
    push_u64(&mut f, 4);

    f.extend_from_slice(&note);
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(&code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let e = elf(7);
        assert_eq!(&e[..4], b"\x7fELF");
        assert_eq!(&e[64 + 2 * 56 + 12..64 + 2 * 56 + 16], b"Xen\0");
        let code = &e[CODE_OFFSET as usize..];
        assert_eq!(code[0], 0xb9);
        assert_eq!(&code[1..5], &7u32.to_le_bytes());
        // The loop's jnz lands on the OUT.
        let out = code.iter().position(|&b| b == 0xee).unwrap();
        assert_eq!(&code[out + 3..out + 5], &[0x75, 0xfb]);
    }
}

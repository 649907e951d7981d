//! A guest that drives a virtio device's registers itself, as fast as it can, to flood the
//! engine's log with the warnings a driver's mistakes cause (part of the `hostile_vm` suite; see
//! its module docs). No Linux: the "kernel" is a few instructions in an ELF file, booted by the
//! real monitor through `bulkhead create`.

use super::*;

/// Where the ELF's one segment is loaded and entered (above the boot tables, in low RAM).
const LOAD: u64 = 0x100_0000;

/// 64-bit code, entered with the VMM's boot identity map of the first GiB: maps the 2 MiB
/// holding the first virtio-mmio slot (0xd000_0000, uncached) through a new page directory at
/// 0xc000, then forever: status 0 (reset), ACKNOWLEDGE, DRIVER, FEATURES_OK with no feature
/// accepted — which the device refuses with a warning each time.
fn hostile_code() -> Vec<u8> {
    #[rustfmt::skip]
    let code = vec![
        0x48, 0xb8, 0x9b, 0x00, 0x00, 0xd0, 0, 0, 0, 0, // movabs rax, 0xd000_009b (2M page: P W PWT PCD PS)
        0x48, 0x89, 0x04, 0x25, 0x00, 0xc4, 0x00, 0x00, // mov [0xc400], rax (PDE 0x80 of the new PD)
        0x48, 0xc7, 0xc0, 0x03, 0xc0, 0x00, 0x00,       // mov rax, 0xc003 (the new PD: P W)
        0x48, 0x89, 0x04, 0x25, 0x18, 0xa0, 0x00, 0x00, // mov [0xa018], rax (PDPTE 3 of the boot tables)
        0x0f, 0x20, 0xd8,                               // mov rax, cr3
        0x0f, 0x22, 0xd8,                               // mov cr3, rax (flush)
        0xbb, 0x00, 0x00, 0x00, 0xd0,                   // mov ebx, 0xd000_0000
        // loop:
        0xc7, 0x43, 0x70, 0x00, 0x00, 0x00, 0x00,       // mov dword [rbx+0x70], 0 (status: reset)
        0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00,       // ... ACKNOWLEDGE
        0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00,       // ... DRIVER
        0xc7, 0x43, 0x70, 0x0b, 0x00, 0x00, 0x00,       // ... FEATURES_OK: refused, a warning
        0xeb, 0xe2,                                     // jmp loop (-30)
    ];
    code
}

/// A static x86-64 ELF executable with `code` as its one loadable segment at [`LOAD`].
fn elf(code: &[u8]) -> Vec<u8> {
    const CODE_OFFSET: u64 = 0x1000;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // entry
    f.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
    f.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    f.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        f.extend_from_slice(&half.to_le_bytes()); // sizes, one program header, no sections
    }
    let len = code.len() as u64;
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R X
    for word in [CODE_OFFSET, LOAD, LOAD, len, len, 0x1000] {
        f.extend_from_slice(&word.to_le_bytes());
    }
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(code);
    f
}

#[test]
fn a_guest_that_floods_device_warnings_is_rate_limited_in_the_log() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let staging = tempfile::tempdir().unwrap();
    let kernel = staging.path().join("hostile.elf");
    fs::write(&kernel, elf(&hostile_code())).unwrap();
    // The guest never answers as an agent: the create fails when the boot time is up, after
    // 12 s of the flood (the limiter's trickle, one line per call site every 10 s, has let one
    // more line through by then, which says how many it dropped).
    let rt = Cli::with_config(&format!(
        "kernel = {:?}\ntemplates = false\nboot_timeout_secs = 12\n",
        kernel.display().to_string()
    ));
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let bundle = write_bundle(&d.join("b"), &rootfs, "true", json!({}));
    let (log, out) = (d.join("flood.log"), d.join("flood.out"));
    let o = rt.run_to(
        &[
            "--log",
            log.to_str().unwrap(),
            "--debug",
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "flood",
        ],
        &out,
    );
    let said = fs::read_to_string(&out).unwrap();
    assert!(!o.status.success(), "the guest has no agent: {said}");
    assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
    let text = fs::read_to_string(&log).unwrap();
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refusing driver features"))
        .collect();
    // The burst (20) and at most two lines of the trickle, whatever the guest did.
    assert!(
        (20..=22).contains(&refusals.len()),
        "{} refusal lines:\n{text}",
        refusals.len()
    );
    let dropped: u64 = refusals
        .iter()
        .find_map(|l| {
            let (_, rest) = l.split_once(" (")?;
            rest.split_once(" more like this were not logged")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no line says how many were dropped:\n{text}"));
    // What the guest really did, counted by the transport it drove (the others saw nothing):
    // 4 register writes per attempt.
    let writes: u64 = text
        .lines()
        .filter(|l| l.contains("transport closed"))
        .filter_map(|l| {
            l.split("register_accesses=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or_else(|| panic!("the transports' counts are not in the log:\n{text}"));
    assert!(
        dropped >= 100 && writes / 4 >= dropped,
        "{dropped} dropped of {} attempts",
        writes / 4
    );
    rt.assert_gone("flood");
}

//! The state file's framing: round trip and every refusal, each before anything is decoded.

use super::*;
use crate::snapshot::state::{DeviceState, Invalid};

fn encoded() -> Vec<u8> {
    encode(&VmSnapshot::sample()).unwrap()
}

/// Recomputes the checksum after a test edited the payload.
fn reseal(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip() {
    let s = VmSnapshot::sample();
    let back = decode(&encode(&s).unwrap()).unwrap();
    assert_eq!(back, s);
    back.validate(4).unwrap();
    assert_eq!(back.vsock_cid(), Some(3));
    assert_eq!(back.fs_tags().collect::<Vec<_>>(), vec!["share"]);
}

#[test]
fn refuses_another_format_version() {
    let mut b = encoded();
    // Format 1 is the one before NIC slots: its templates are refused cleanly.
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    let e = decode(&b).unwrap_err();
    assert!(matches!(e, FormatError::Version { found: 1 }), "{e}");
    assert_eq!(
        e.to_string(),
        "snapshot format 1, this bulkhead-vmm reads format 2"
    );
}

#[test]
fn refuses_a_bad_checksum() {
    let mut b = encoded();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(decode(&b), Err(FormatError::Checksum)));
    let mut b = encoded();
    b[26] ^= 0x80;
    assert!(matches!(decode(&b), Err(FormatError::Checksum)));
}

#[test]
fn refuses_truncation_and_padding() {
    let b = encoded();
    for cut in [0, 7, HEADER_LEN - 1] {
        assert!(matches!(decode(&b[..cut]), Err(FormatError::NotASnapshot)));
    }
    for cut in [HEADER_LEN, b.len() / 2, b.len() - 1] {
        let e = decode(&b[..cut]).unwrap_err();
        assert!(matches!(e, FormatError::Size { .. }), "{cut}: {e}");
    }
    let mut padded = b.clone();
    padded.push(0);
    assert!(matches!(decode(&padded), Err(FormatError::Size { .. })));
    // A header claiming a huge payload is a size error, not an allocation.
    let mut huge = b;
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode(&huge), Err(FormatError::Size { .. })));
}

#[test]
fn refuses_foreign_files_and_trailing_payload() {
    assert!(matches!(
        decode(b"\x7fELF and some more bytes to pass the header"),
        Err(FormatError::NotASnapshot)
    ));
    // A payload with a byte after a complete snapshot, resealed so only decoding can tell.
    let mut b = encoded();
    b.push(0);
    let len = (b.len() - HEADER_LEN) as u64;
    b[16..24].copy_from_slice(&len.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(decode(&b), Err(FormatError::Trailing)));
    // A resealed payload cut short does not decode.
    let mut b = encoded();
    b.truncate(b.len() - 10);
    let len = (b.len() - HEADER_LEN) as u64;
    b[16..24].copy_from_slice(&len.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(decode(&b), Err(FormatError::Decode(_))));
}

#[test]
fn reads_files_and_bounds_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, encoded()).unwrap();
    assert_eq!(read(&path).unwrap(), VmSnapshot::sample());
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_STATE_BYTES + 1).unwrap();
    assert!(matches!(read(&path), Err(FormatError::TooLarge(_))));
    assert!(matches!(
        read(&dir.path().join("missing")),
        Err(FormatError::Io(_))
    ));
}

#[test]
fn validation_checks_layout_counts_and_slots() {
    let ok = VmSnapshot::sample();
    let check = |edit: &dyn Fn(&mut VmSnapshot), what: &'static str| {
        let mut s = ok.clone();
        edit(&mut s);
        assert_eq!(s.validate(4), Err(Invalid(what)));
    };
    check(&|s| s.mem_mib = 1, "memory size");
    check(&|s| s.memory[0].size = 4096, "memory region layout");
    check(&|s| s.memory[0].file_offset = 4096, "memory file offsets");
    check(&|s| s.memory_file_size += 1, "memory file size");
    check(&|s| s.vcpus.clear(), "vcpu count");
    check(&|s| s.vcpus = vec![s.vcpus[0].clone(); 5], "vcpu count");
    check(&|s| s.cmdline = "x".repeat(4096), "command line length");
    check(&|s| s.virtio[1].irq = 3, "virtio slot address or irq");
    check(&|s| s.virtio[1].addr = 0, "virtio slot address or irq");
    check(
        &|s| s.virtio[1].device = DeviceState::Fs { tag: String::new() },
        "virtio-fs tag",
    );
    check(
        &|s| s.virtio[1].device = s.virtio[0].device.clone(),
        "more than one vsock device",
    );
}

//! The snapshot state file parser as an attacker who can write the template directory sees it:
//! raw files, and valid files with the fuzzer's bytes spliced into the payload and the checksum
//! fixed up, so decoding and validation get input the CRC would otherwise stop. Whatever
//! decodes must validate without panicking and re-encode to the same value.

#![no_main]

use bulkhead_vmm::snapshot::format::{decode, encode, HEADER_LEN};
use bulkhead_vmm::snapshot::state::VmSnapshot;
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(snapshot) = decode(bytes) {
        let _ = snapshot.validate(254);
        let _ = snapshot.vsock_cid();
        let _ = snapshot.fs_tags().count();
        let again = decode(&encode(&snapshot).expect("re-encode")).expect("re-decode");
        assert!(again == snapshot, "round trip changed the snapshot");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let base = encode(&VmSnapshot::sample()).expect("encode the sample");
    let payload = &base[HEADER_LEN..];
    // Splice: keep a prefix of the sample's payload (chosen by the first byte), then the
    // fuzzer's bytes; optionally the sample's tail after them.
    let at = usize::from(mode) * payload.len() / 256;
    let mut spliced = payload[..at].to_vec();
    spliced.extend_from_slice(rest);
    if mode & 1 == 1 {
        let skip = (at + rest.len()).min(payload.len());
        spliced.extend_from_slice(&payload[skip..]);
    }
    let mut file = base[..HEADER_LEN].to_vec();
    file[16..24].copy_from_slice(&(spliced.len() as u64).to_le_bytes());
    file[24..28].copy_from_slice(&crc32fast::hash(&spliced).to_le_bytes());
    file.extend_from_slice(&spliced);
    check(&file);
});

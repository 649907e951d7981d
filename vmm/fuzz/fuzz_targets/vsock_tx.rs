//! The vsock packet path as a hostile guest drives it: raw descriptor chains, well-formed
//! chains carrying arbitrary headers and payloads, RX buffers, and a host peer that connects,
//! writes, reads and hangs up in between.

#![no_main]

use bulkhead_vmm_fuzz::{Cursor, Vsock, MEM_SIZE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RX: usize = 0;
const TX: usize = 1;
/// Where well-formed packets and RX buffers go (above the rings).
const DATA: u64 = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mut v = Vsock::new(c.u8() & 1 == 1);
    let mut slot = 0u64;
    while !c.is_empty() {
        match c.u8() % 6 {
            // Arbitrary bytes anywhere in guest memory (headers for raw chains to point at).
            0 => {
                let addr = u64::from(c.u16()) * 16;
                let len = usize::from(c.u8());
                let bytes = c.bytes(len);
                if addr as usize + bytes.len() <= MEM_SIZE {
                    let _ = v.mem.write_slice(bytes, GuestAddress(addr));
                }
            }
            // A raw TX chain: any flags, lengths, addresses and links.
            1 => {
                let n = usize::from(c.u8() % 4) + 1;
                let descs: Vec<[u8; 16]> = (0..n)
                    .map(|_| {
                        let mut d = [0u8; 16];
                        let b = c.bytes(16);
                        d[..b.len()].copy_from_slice(b);
                        d
                    })
                    .collect();
                v.post_raw(TX, &descs);
                v.kick(TX);
            }
            // A well-formed TX packet (header + payload descriptors) with a fuzzed header.
            2 => {
                let mut hdr = c.bytes(44).to_vec();
                hdr.resize(44, 0);
                let n = usize::from(c.u16() % 2048);
                let payload = c.bytes(n).to_vec();
                let base = DATA + 0x4_0000 + (slot % 8) * 0x1000;
                slot += 1;
                let _ = v.mem.write_slice(&hdr, GuestAddress(base));
                let _ = v.mem.write_slice(&payload, GuestAddress(base + 64));
                let mut bufs = vec![(base, 44u32, 0u16)];
                if !payload.is_empty() {
                    bufs.push((base + 64, payload.len() as u32, 0));
                }
                v.post_chain(TX, &bufs);
                v.kick(TX);
            }
            // RX buffers of a fuzzed size.
            3 => {
                let n = c.u8() % 4 + 1;
                for i in 0..n {
                    let len = u32::from(c.u16() % 4200);
                    let addr = DATA + (u64::from(i) % 16) * 0x2000;
                    v.post_chain(RX, &[(addr, len, 2)]);
                }
                v.kick(RX);
            }
            // The host connects.
            4 => {
                let port = c.u32() % 4;
                v.host_connect(1024 + port);
            }
            // The host writes, reads or hangs up.
            _ => {
                let action = c.u8();
                let len = usize::from(c.u8());
                let bytes = c.bytes(len).to_vec();
                v.host_io(action, &bytes);
            }
        }
        v.check();
    }
});

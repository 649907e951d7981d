//! The virtio-net frame path as a hostile guest drives it: a raw descriptor table (any flags,
//! lengths, addresses, links, indirect tables) parsed into a chain, then read as a TX frame
//! under fuzzed offload rules (mode 0), or several chains filled with a frame from the tap as
//! RX buffers (mode 1). Nothing may panic, read or write outside guest memory, or produce a
//! frame longer than the bound.

#![no_main]

use bulkhead_vmm::devices::virtio::chain;
use bulkhead_vmm::devices::virtio::net::frame::{self, TxRules, MAX_PACKET_LEN};
use bulkhead_vmm_fuzz::{new_mem, Cursor, MEM_SIZE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 16;
const TABLE: u64 = 0;

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mem = new_mem();
    let mode = c.u8() & 1;
    let indirect = c.u8() & 1 == 1;
    let rules = TxRules {
        csum: c.u8() & 1 == 1,
        tso4: c.u8() & 1 == 1,
    };
    // The descriptor table, then arbitrary bytes anywhere (headers, indirect tables).
    let descs = c.bytes(16 * usize::from(QSIZE));
    let _ = mem.write_slice(descs, GuestAddress(TABLE));
    for _ in 0..c.u8() % 4 {
        let addr = u64::from(c.u16()) * 16;
        let len = usize::from(c.u8()) * 4;
        let bytes = c.bytes(len);
        if addr as usize + bytes.len() <= MEM_SIZE {
            let _ = mem.write_slice(bytes, GuestAddress(addr));
        }
    }
    let parse = |head: u16| chain::parse(&mem, GuestAddress(TABLE), QSIZE, head, indirect);
    if mode == 0 {
        let mut buf = vec![0u8; MAX_PACKET_LEN];
        if let Ok(chain) = parse(c.u16() % (QSIZE + 2)) {
            if let Ok(len) = frame::read_tx(&mem, &chain, rules, &mut buf) {
                assert!((12..=MAX_PACKET_LEN).contains(&len));
                assert!(chain.writable().is_empty());
            }
        }
        return;
    }
    let chains: Vec<_> = (0..c.u8() % 4 + 1)
        .filter_map(|_| parse(c.u16() % (QSIZE + 2)).ok())
        .collect();
    let len = (usize::from(c.u16()) * 2).min(MAX_PACKET_LEN);
    let mut packet = c.bytes(len).to_vec();
    packet.resize(len, 0xa5);
    if let Ok(used) = frame::write_rx(&mem, &chains, &mut packet) {
        assert!(!used.is_empty() && used.len() <= chains.len());
        assert_eq!(
            used.iter().map(|&n| n as usize).sum::<usize>(),
            packet.len()
        );
        for (chain, &n) in chains.iter().zip(&used) {
            assert!(n as usize <= chain.writable().len());
        }
        // (Guest memory may hold anything there: buffers can overlap.)
        assert_eq!(
            usize::from(u16::from_le_bytes([packet[10], packet[11]])),
            used.len()
        );
    }
});

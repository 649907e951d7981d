//! A hostile driver: malformed chains and rings never panic the device or make it touch
//! memory outside the guest; a broken queue stops and the device asks for a reset.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;

use super::harness::*;
use crate::devices::virtio::vsock::packet::*;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

fn stray() -> Header {
    GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    }
    .hdr(OP_RW)
}

/// After a dropped packet the queue must still work: a stray RW gets its RST.
fn assert_tx_alive(h: &mut Harness<'_>) {
    h.give_rx(1, 4096);
    h.send(stray(), b"z");
    assert_eq!(h.recv().last().map(|p| p.0.op), Some(OP_RST));
    assert!(!h.needs_reset());
}

#[test]
fn short_header_is_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let addr = h.put_header(&stray());
    h.send_raw(&[Descriptor::new(addr, 10, 0, 0)]);
    assert_eq!(h.metrics().dropped_packets, 1);
    assert_tx_alive(&mut h);
    // The dropped chain came back (with the RST's interrupt), nothing written to it.
    assert_eq!(h.q[TX].take_used()[0], (0, 0));
}

#[test]
fn oversized_and_truncated_payloads_are_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let mut huge = stray();
    huge.len = u32::MAX;
    let a = h.put_header(&huge);
    h.send_raw(&[Descriptor::new(a, HDR_SIZE as u32, 0, 0)]);
    let mut truncated = stray();
    truncated.len = 100;
    let b = h.put_header(&truncated);
    let data = h.alloc(50);
    h.send_raw(&[
        Descriptor::new(b, HDR_SIZE as u32, NEXT, 2),
        Descriptor::new(data, 50, 0, 0),
    ]);
    assert_eq!(h.metrics().dropped_packets, 2);
    assert_tx_alive(&mut h);
}

#[test]
fn wrong_direction_is_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    // A device-writable buffer in a TX chain.
    let a = h.put_header(&stray());
    h.send_raw(&[Descriptor::new(a, HDR_SIZE as u32, WRITE, 0)]);
    assert_eq!(h.metrics().dropped_packets, 1);
    // A device-readable buffer in an RX chain: returned unused.
    let buf = h.alloc(4096);
    h.q[RX].add_chain(&[(buf, 4096, false)]);
    h.kick(RX);
    h.send(stray(), b"z");
    let used = h.q[RX].take_used();
    assert_eq!(used[0].1, 0);
    assert_eq!(h.metrics().dropped_packets, 2);
    // An RX buffer too small for a header: returned unused as well.
    h.give_rx(1, 20);
    assert_eq!(h.q[RX].take_used()[0].1, 0);
    assert_tx_alive(&mut h);
}

#[test]
fn split_header_and_single_descriptor_packets_are_accepted() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    // Header split 10 + 34 bytes, payload in the second descriptor's tail (Linux >= 6.2
    // style single buffer, but split).
    let mut hdr = stray();
    hdr.len = 3;
    let a = h.alloc(64);
    let mut bytes = hdr.encode().to_vec();
    bytes.extend_from_slice(b"abc");
    mem.write_slice_at(&bytes, a);
    h.send_raw(&[
        Descriptor::new(a, 10, NEXT, 1),
        Descriptor::new(a + 10, 37, 0, 0),
    ]);
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert_eq!(h.metrics().tx_bytes, 3);
}

trait WriteAt {
    fn write_slice_at(&self, b: &[u8], addr: u64);
}

impl WriteAt for crate::devices::virtio::GuestMemoryMmap {
    fn write_slice_at(&self, b: &[u8], addr: u64) {
        vm_memory::Bytes::write_slice(self, b, vm_memory::GuestAddress(addr)).unwrap();
    }
}

/// Each of these breaks the TX queue: the device flags NEEDS_RESET and stops using it.
fn assert_breaks_tx(descs: &[Descriptor]) {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(2, 4096);
    h.send_raw(descs);
    assert!(h.needs_reset(), "{descs:?}");
    assert_eq!(h.metrics().queue_errors, 1);
    assert!(h.q[TX].take_used().is_empty());
    // Later packets on the broken queue are ignored, not half-processed.
    h.send(stray(), b"z");
    assert!(h.recv().is_empty());
}

#[test]
fn descriptor_outside_memory_breaks_the_queue() {
    let far = MEM_SIZE as u64 + 0x1000;
    assert_breaks_tx(&[Descriptor::new(far, HDR_SIZE as u32, 0, 0)]);
    assert_breaks_tx(&[Descriptor::new(MEM_SIZE as u64 - 8, HDR_SIZE as u32, 0, 0)]);
    assert_breaks_tx(&[Descriptor::new(u64::MAX - 10, 100, 0, 0)]);
}

#[test]
fn huge_descriptor_length_breaks_the_queue() {
    assert_breaks_tx(&[
        Descriptor::new(0x20_0000, HDR_SIZE as u32, NEXT, 1),
        Descriptor::new(0x20_0000, u32::MAX, 0, 0),
    ]);
}

#[test]
fn chain_loops_and_bad_links_break_the_queue() {
    // 0 -> 1 -> 0 ...
    assert_breaks_tx(&[
        Descriptor::new(0x20_0000, HDR_SIZE as u32, NEXT, 1),
        Descriptor::new(0x20_0000, 8, NEXT, 0),
    ]);
    // next beyond the table.
    assert_breaks_tx(&[Descriptor::new(0x20_0000, HDR_SIZE as u32, NEXT, 500)]);
    // Readable after writable.
    assert_breaks_tx(&[
        Descriptor::new(0x20_0000, HDR_SIZE as u32, WRITE | NEXT, 1),
        Descriptor::new(0x20_0000, 8, 0, 0),
    ]);
}

#[test]
fn indirect_descriptors_break_the_queue_when_not_negotiated() {
    assert_breaks_tx(&[Descriptor::new(0x20_0000, 32, INDIRECT, 0)]);
}

#[test]
fn avail_index_running_ahead_breaks_the_queue() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.q[TX].set_avail_idx(QSIZE + 1);
    h.kick(TX);
    h.pump();
    assert!(h.needs_reset());
}

#[test]
fn rx_buffer_outside_memory_breaks_rx_only() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.q[RX].add_chain(&[(MEM_SIZE as u64, 4096, true)]);
    h.kick(RX);
    h.send(stray(), b"z");
    assert!(h.needs_reset());
    assert_eq!(h.metrics().queue_errors, 1);
    // TX still drains.
    let before = h.metrics().tx_packets;
    h.send(stray(), b"z");
    assert_eq!(h.metrics().tx_packets, before + 1);
}

#[test]
fn random_chains_never_panic() {
    let mem = test_mem();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..100 {
        let mut h = Harness::new(&mem);
        h.give_rx(4, 4096);
        for _ in 0..8 {
            let n = (rnd() % 4 + 1) as usize;
            let descs: Vec<Descriptor> = (0..n)
                .map(|_| {
                    let addr = match rnd() % 4 {
                        0 => rnd(),
                        _ => 0x20_0000 + rnd() % 0x1000,
                    };
                    let len = match rnd() % 3 {
                        0 => rnd() as u32,
                        _ => (rnd() % 128) as u32,
                    };
                    let flags = (rnd() % 8) as u16;
                    let next = (rnd() % u64::from(QSIZE + 4)) as u16;
                    Descriptor::new(addr, len, flags, next)
                })
                .collect();
            // Random header bytes where the chain may point.
            let junk: Vec<u8> = (0..64).map(|_| rnd() as u8).collect();
            mem.write_slice_at(&junk, 0x20_0000 + rnd() % 0x1000);
            h.send_raw(&descs);
        }
        let _ = h.recv();
        let _ = round;
    }
}

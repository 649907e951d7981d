//! Notification and interrupt suppression (EVENT_IDX) and the counters benches rely on.

use super::harness::*;
use crate::devices::virtio::vsock::packet::*;

#[test]
fn tx_asks_for_the_next_kick_only_after_catching_up() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    for i in 1..=3u16 {
        h.send(g.hdr(OP_RST), &[]);
        // avail_event = the next index the device will look at: kick when that one arrives.
        assert_eq!(h.q[TX].avail_event(&mem), i);
    }
    assert_eq!(
        h.metrics().notifications,
        4,
        "one RX kick and three TX kicks"
    );
}

#[test]
fn rx_asks_for_a_kick_only_when_it_ran_out_of_buffers() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    // Two RSTs owed, no buffers: the device asks for a kick at the next buffer (index 0).
    h.send(g.hdr(OP_RW), b"a");
    h.send(g.hdr(OP_RW), b"b");
    assert_eq!(h.q[RX].avail_event(&mem), 0);
    h.give_rx(1, 4096);
    assert_eq!(h.recv().len(), 1);
    // Still one RST owed: asks again, now for index 1.
    assert_eq!(h.q[RX].avail_event(&mem), 1);
    h.give_rx(3, 4096);
    assert_eq!(h.recv().len(), 1);
    // Nothing owed any more: the device does not ask for further RX kicks.
    assert_eq!(h.q[RX].avail_event(&mem), 1);
}

#[test]
fn one_interrupt_per_batch() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(8, 4096);
    let before = h.metrics().interrupts;
    // Three chains published before the device looks: one wake-up, one interrupt.
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    for _ in 0..3 {
        let a = h.put_header(&g.hdr(OP_RW));
        let head = h.q[TX].write_raw(&[virtio_queue::desc::split::Descriptor::new(
            a,
            HDR_SIZE as u32,
            0,
            0,
        )]);
        h.q[TX].publish(head);
    }
    h.kick(TX);
    h.pump();
    assert_eq!(h.recv().len(), 3);
    assert_eq!(h.metrics().interrupts - before, 1);
    assert_eq!(h.metrics().tx_packets, 3);
    assert_eq!(h.metrics().rx_packets, 3);
}

#[test]
fn tx_chains_come_back_with_the_next_interrupt_or_after_a_delay() {
    use crate::devices::virtio::vsock::device::TX_RETURN_DELAY;
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    let before = h.metrics().interrupts;
    // An RST for nothing gets no reply: the chain is consumed but held...
    h.send_nowait(g.hdr(OP_RST), &[]);
    assert!(h.q[TX].take_used().is_empty());
    assert_eq!(h.metrics().interrupts, before);
    // ...and returned after the delay, with one interrupt.
    std::thread::sleep(TX_RETURN_DELAY * 2);
    h.pump();
    assert_eq!(h.q[TX].take_used().len(), 1);
    assert_eq!(h.metrics().interrupts, before + 1);
    // Data for nothing gets an RST: the chain rides on the reply's interrupt at once.
    h.send_nowait(g.hdr(OP_RW), b"x");
    assert_eq!(h.q[TX].take_used().len(), 1);
    assert_eq!(h.recv().len(), 1);
    assert_eq!(h.metrics().interrupts, before + 2);
}

#[test]
fn held_tx_chains_never_exceed_a_quarter_of_the_ring() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    let mut returned = 0;
    for i in 1..=QSIZE / 2 {
        h.send_nowait(g.hdr(OP_RST), &[]);
        returned += h.q[TX].take_used().len() as u16;
        assert!(i - returned < QSIZE / 4, "{} chains held", i - returned);
    }
    assert!(returned > 0);
}

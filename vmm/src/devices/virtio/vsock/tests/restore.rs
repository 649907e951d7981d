//! A device restored from a snapshot: it tells the guest with a transport-reset event, holds
//! packets for the guest until the guest has handled it, and refuses state that does not fit.

use vm_memory::{Bytes, GuestAddress};

use super::harness::*;
use crate::devices::virtio::vsock::device::VsockState;
use crate::devices::virtio::vsock::packet::{OP_REQUEST, OP_RST};

const EVQ: usize = 2;

fn restored_state() -> VsockState {
    VsockState {
        queues: Vec::new(),
        held_tx: vec![],
        broken: vec![false; 3],
    }
}

/// Finishes the restore of `h`'s device with [`restored_state`].
fn resume(h: &Harness) {
    h.dev
        .lock()
        .unwrap()
        .resume_from_snapshot(&restored_state())
        .unwrap();
}

#[test]
fn sends_a_transport_reset_and_holds_packets_until_the_guest_refills_the_event_queue() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let event = h.alloc(8);
    mem.write_obj(0xffff_ffffu32, GuestAddress(event)).unwrap();
    h.q[EVQ].add_chain(&[(event, 8, true)]);
    resume(&h);
    h.pump();
    let used = h.q[EVQ].take_used();
    assert_eq!(used.len(), 1, "one event");
    assert_eq!(used[0].1, 4);
    let id: u32 = mem.read_obj(GuestAddress(event)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert!(h.irq.read().unwrap() >= 1, "interrupt raised");

    // A host connection now is not offered to the guest before it handled the reset...
    let _host = h.host_connect(1024);
    h.give_rx(4, 4096);
    assert!(h.recv().is_empty(), "held until the guest acknowledged");
    // ... which it does by putting an event buffer back.
    let again = h.alloc(8);
    h.q[EVQ].add_chain(&[(again, 8, true)]);
    h.kick(EVQ);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].0.op, OP_REQUEST);
}

#[test]
fn refuses_state_that_does_not_fit() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let mut bad = restored_state();
    bad.held_tx = vec![QSIZE];
    assert!(h.dev.lock().unwrap().resume_from_snapshot(&bad).is_err());
    let mut bad = restored_state();
    bad.broken = vec![false; 2];
    assert!(h.dev.lock().unwrap().resume_from_snapshot(&bad).is_err());
    h.pump();
    let idle = Harness::inactive(&mem, |_| {});
    let mut bad = restored_state();
    bad.held_tx = vec![1];
    assert!(idle.dev.lock().unwrap().resume_from_snapshot(&bad).is_err());
}

#[test]
fn reads_tx_the_guest_posted_after_the_last_kick_the_snapshot_has() {
    // The guest put a packet on TX and kicked while the template's device loop was paused:
    // the kick (an eventfd count) is in no snapshot, and with EVENT_IDX the guest never kicks
    // again. The restored device reads TX as if kicked.
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let conn = GuestConn {
        guest_port: 1024,
        host_port: 5000,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    h.post_tx(conn.hdr(OP_RST), &[]);
    let before = h.metrics().tx_packets;
    resume(&h);
    h.pump();
    assert_eq!(h.metrics().tx_packets, before + 1, "read without a kick");
}

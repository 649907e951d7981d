//! Guest-initiated connections and packets that belong to no connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use super::harness::*;
use crate::devices::virtio::vsock::packet::*;

fn path_for_port(h: &Harness<'_>, port: u32) -> std::path::PathBuf {
    let mut p = h.path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    p.into()
}

#[test]
fn guest_connects_to_the_port_socket() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let listener = UnixListener::bind(path_for_port(&h, 5000)).unwrap();
    h.give_rx(8, 4096);
    let g = GuestConn {
        guest_port: 40_000,
        host_port: 5000,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    };
    h.send(g.hdr(OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let resp = pkts[0].0;
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 40_000));
    assert_eq!((resp.src_cid, resp.dst_cid), (HOST_CID, GUEST_CID));

    h.send(g.hdr(OP_RW), b"ping");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    host.write_all(b"pong").unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!((pkts[0].0.op, pkts[0].1.as_slice()), (OP_RW, &b"pong"[..]));
}

#[test]
fn guest_connect_without_a_listener_is_refused() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    let g = GuestConn {
        guest_port: 40_001,
        host_port: 6000,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    h.send(g.hdr(OP_REQUEST), &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6000, 40_001));
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
}

#[test]
fn strays_get_rst_and_foreign_packets_are_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(8, 4096);
    let g = GuestConn {
        guest_port: 1,
        host_port: 2,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    // Data for a connection that does not exist: RST.
    h.send(g.hdr(OP_RW), b"x");
    // An RST for one that does not exist: nothing.
    h.send(g.hdr(OP_RST), &[]);
    // A non-stream socket type: RST.
    let mut dgram = g.hdr(OP_REQUEST);
    dgram.type_ = 3;
    h.send(dgram, &[]);
    // Wrong source or destination CID: dropped silently.
    let mut spoofed = g.hdr(OP_REQUEST);
    spoofed.src_cid = 77;
    h.send(spoofed, &[]);
    let mut elsewhere = g.hdr(OP_REQUEST);
    elsewhere.dst_cid = 5;
    h.send(elsewhere, &[]);

    let ops: Vec<u16> = h.recv().iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [OP_RST, OP_RST]);
    assert_eq!(h.metrics().dropped_packets, 2);
    assert_eq!(h.metrics().resets_sent, 2);
}

#[test]
fn a_second_request_for_a_live_key_resets_it() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let listener = UnixListener::bind(path_for_port(&h, 5001)).unwrap();
    h.give_rx(8, 4096);
    let g = GuestConn {
        guest_port: 40_002,
        host_port: 5001,
        buf_alloc: 4096,
        fwd_cnt: 0,
    };
    h.send(g.hdr(OP_REQUEST), &[]);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(h.recv()[0].0.op, OP_RESPONSE);
    h.send(g.hdr(OP_REQUEST), &[]);
    assert_eq!(h.recv()[0].0.op, OP_RST);
    assert!(host_sees_close(&mut host));
}

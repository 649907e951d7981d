//! Host-initiated connections: handshake, data, credit, shutdown and reset.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::harness::*;
use crate::devices::virtio::vsock::packet::*;
use crate::devices::virtio::VirtioDevice;

/// An established host-initiated connection to guest port 1024.
fn established(h: &mut Harness<'_>, guest_buf_alloc: u32) -> (UnixStream, GuestConn) {
    h.give_rx(16, 4096);
    let mut host = h.host_connect(1024);
    let g = h.accept_in_guest(&mut host, guest_buf_alloc);
    (host, g)
}

#[test]
fn connect_then_data_both_ways() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(16, 4096);
    let mut host = UnixStream::connect(&h.path).unwrap();
    // Data right behind the CONNECT line must reach the guest, not be eaten by the handshake.
    host.write_all(b"CONNECT 1024\nearly").unwrap();
    h.pump();
    let g = h.accept_in_guest(&mut host, 256 * 1024);
    assert!(g.host_port >= 1 << 30);
    assert_eq!(g.guest_port, 1024);

    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    let (hdr, data) = &pkts[0];
    assert_eq!(
        (hdr.op, hdr.src_port, hdr.dst_port),
        (OP_RW, g.host_port, 1024)
    );
    assert_eq!(
        (hdr.src_cid, hdr.dst_cid, hdr.type_),
        (HOST_CID, GUEST_CID, TYPE_STREAM)
    );
    assert_eq!(data, b"early");

    h.send(g.hdr(OP_RW), b"hello");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");

    host.write_all(b"world").unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].1, b"world");

    let m = h.metrics();
    assert_eq!(m.conns_opened, 1);
    assert_eq!((m.tx_packets, m.tx_bytes), (2, 5));
    assert_eq!(m.rx_bytes, 10);
    assert!(m.interrupts >= 1);
    assert!(h.irq.read().unwrap() >= 1);
}

#[test]
fn host_to_guest_stops_at_guest_credit_and_resumes() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, mut g) = established(&mut h, 10);
    host.write_all(b"0123456789abcdefghijklmno").unwrap();
    h.pump();
    let pkts = h.recv();
    let ops: Vec<u16> = pkts.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [OP_RW, OP_CREDIT_REQUEST]);
    assert_eq!(pkts[0].1, b"0123456789");
    // More buffers do not help: no credit.
    h.give_rx(4, 4096);
    assert!(h.recv().is_empty());

    g.fwd_cnt = 10;
    h.send(g.hdr(OP_CREDIT_UPDATE), &[]);
    let pkts = h.recv();
    assert_eq!(pkts[0].1, b"abcdefghij");
    g.fwd_cnt = 20;
    h.send(g.hdr(OP_CREDIT_UPDATE), &[]);
    let data: Vec<u8> = h.recv().into_iter().flat_map(|p| p.1).collect();
    assert_eq!(data, b"klmno");
}

#[test]
fn rx_is_filled_up_to_the_buffer_size() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, _g) = established(&mut h, 1 << 20);
    let blob: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    host.write_all(&blob).unwrap();
    h.pump();
    let pkts = h.recv();
    let sizes: Vec<usize> = pkts.iter().map(|p| p.1.len()).collect();
    assert_eq!(
        sizes,
        [
            4096 - HDR_SIZE,
            4096 - HDR_SIZE,
            10_000 - 2 * (4096 - HDR_SIZE)
        ]
    );
    let data: Vec<u8> = pkts.into_iter().flat_map(|p| p.1).collect();
    assert_eq!(data, blob);
}

/// Sends a patterned stream from the guest while honouring the device's credit; returns
/// the bytes sent.
fn send_within_credit(h: &mut Harness<'_>, g: &GuestConn, start: usize, max: usize) -> usize {
    let mut sent = start;
    let (mut peer_buf_alloc, mut peer_fwd) = (0u32, 0u32);
    loop {
        for (hdr, _) in h.recv() {
            peer_buf_alloc = hdr.buf_alloc;
            peer_fwd = hdr.fwd_cnt;
        }
        h.give_rx(1, 4096);
        let credit = peer_buf_alloc.saturating_sub((sent as u32).wrapping_sub(peer_fwd)) as usize;
        let n = credit.min(4096).min(max - sent);
        if n == 0 {
            return sent;
        }
        let chunk: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
        h.send(g.hdr(OP_RW), &chunk);
        sent += n;
    }
}

#[test]
fn slow_host_reader_bounds_the_buffer_then_resumes() {
    let mem = test_mem();
    let window = 64 * 1024;
    let mut h = Harness::with(&mem, |c| c.buf_alloc = window);
    let (mut host, g) = established(&mut h, 256 * 1024);
    // Any packet from the device tells the guest our window; the OK exchange sent none yet.
    h.send(g.hdr(OP_CREDIT_REQUEST), &[]);

    let limit = 4 << 20;
    let sent = send_within_credit(&mut h, &g, 0, limit);
    assert!(sent < limit, "the guest never ran out of credit");
    let buffered = h.dev.lock().unwrap().buffered_bytes();
    assert!(buffered > 0 && buffered <= window as usize, "{buffered}");

    // The host drains; the device flushes its buffer and hands out credit again.
    let mut got = Vec::new();
    host.set_nonblocking(true).unwrap();
    let mut total_target = sent;
    let mut rounds = 0;
    while got.len() < total_target {
        let mut b = vec![0u8; 65536];
        match host.read(&mut b) {
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        h.pump();
        if got.len() == sent && total_target == sent {
            // Credit is back: send another stretch.
            total_target = send_within_credit(&mut h, &g, sent, sent + 100_000);
        }
        rounds += 1;
        assert!(rounds < 10_000);
    }
    assert_eq!(total_target, sent + 100_000);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(h.metrics().credit_updates > 0);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mem = test_mem();
    let mut h = Harness::with(&mem, |c| c.buf_alloc = 64 * 1024);
    let (mut host, g) = established(&mut h, 256 * 1024);
    let chunk = vec![7u8; MAX_PKT_DATA as usize];
    let mut rst = false;
    for _ in 0..32 {
        h.give_rx(1, 4096);
        h.send(g.hdr(OP_RW), &chunk);
        if h.recv().iter().any(|p| p.0.op == OP_RST) {
            rst = true;
            break;
        }
    }
    assert!(rst, "no RST after ignoring credit");
    assert!(host_sees_close(&mut host));
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
}

#[test]
fn host_close_becomes_shutdown_then_guest_rst_cleans_up() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, g) = established(&mut h, 1 << 20);
    host.write_all(b"bye").unwrap();
    drop(host);
    h.pump();
    let pkts = h.recv();
    let ops: Vec<(u16, u32)> = pkts.iter().map(|p| (p.0.op, p.0.flags)).collect();
    assert_eq!(ops, [(OP_RW, 0), (OP_SHUTDOWN, SHUTDOWN_BOTH)]);
    assert_eq!(pkts[0].1, b"bye");
    assert_eq!(h.dev.lock().unwrap().connections(), 1);
    h.send(g.hdr(OP_RST), &[]);
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
    assert!(h.recv().is_empty(), "no RST answers an RST");
}

#[test]
fn host_half_close_keeps_the_other_direction() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, g) = established(&mut h, 1 << 20);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(
        (pkts[0].0.op, pkts[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_SEND)
    );
    h.send(g.hdr(OP_RW), b"still here");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
}

#[test]
fn guest_shutdown_send_then_both() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, g) = established(&mut h, 1 << 20);
    h.send(g.hdr(OP_RW), b"tail");
    let mut sd = g.hdr(OP_SHUTDOWN);
    sd.flags = SHUTDOWN_SEND;
    h.send(sd, &[]);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"tail");
    // The host can still talk to the guest.
    host.write_all(b"answer").unwrap();
    h.pump();
    assert_eq!(h.recv()[0].1, b"answer");
    sd.flags = SHUTDOWN_BOTH;
    h.send(sd, &[]);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
    assert!(host_sees_close(&mut host));
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, g) = established(&mut h, 1 << 20);
    h.send(g.hdr(OP_RST), &[]);
    assert!(host_sees_close(&mut host));
    assert_eq!(h.metrics().conns_closed, 1);
}

#[test]
fn no_guest_listener_closes_the_host_connection() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    let mut host = h.host_connect(9999);
    let req = h.recv()[0].0;
    let g = GuestConn {
        guest_port: req.dst_port,
        host_port: req.src_port,
        buf_alloc: 0,
        fwd_cnt: 0,
    };
    h.send(g.hdr(OP_RST), &[]);
    let mut b = Vec::new();
    assert_eq!(
        host.read_to_end(&mut b).unwrap(),
        0,
        "got {b:?} instead of EOF"
    );
}

#[test]
fn host_hanging_up_while_connecting_resets_the_guest() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.give_rx(4, 4096);
    let host = h.host_connect(1024);
    assert_eq!(h.recv()[0].0.op, OP_REQUEST);
    drop(host);
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].0.op, OP_RST);
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
}

#[test]
fn bad_connect_lines_and_the_connection_cap() {
    let mem = test_mem();
    let mut h = Harness::with(&mem, |c| c.max_connections = 2);
    h.give_rx(8, 4096);
    let mut bad = UnixStream::connect(&h.path).unwrap();
    bad.write_all(b"HELLO 1\n").unwrap();
    h.pump();
    assert!(host_sees_close(&mut bad));

    let _a = h.host_connect(1);
    let _b = h.host_connect(2);
    let mut c = h.host_connect(3);
    assert!(host_sees_close(&mut c));
    let ports: Vec<u32> = h.recv().iter().map(|p| p.0.dst_port).collect();
    assert_eq!(ports, [1, 2]);
}

#[test]
fn requests_wait_for_the_driver() {
    let mem = test_mem();
    let mut h = Harness::inactive(&mem, |_| {});
    let mut host = h.host_connect(1024);
    h.activate(true);
    h.give_rx(4, 4096);
    h.accept_in_guest(&mut host, 4096);
}

#[test]
fn device_reset_closes_host_streams() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (mut host, _g) = established(&mut h, 1 << 20);
    h.dev.lock().unwrap().reset();
    h.pump();
    assert!(host_sees_close(&mut host));
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
    assert!(!h.dev.lock().unwrap().is_active());
}

#[test]
fn guest_rst_with_unread_data_drains_to_the_host_first() {
    let mem = test_mem();
    let window = 64 * 1024;
    let mut h = Harness::with(&mem, |c| c.buf_alloc = window);
    let (mut host, g) = established(&mut h, 256 * 1024);
    h.send(g.hdr(OP_CREDIT_REQUEST), &[]);
    let sent = send_within_credit(&mut h, &g, 0, 4 << 20);
    assert!(h.dev.lock().unwrap().buffered_bytes() > 0);
    // The guest gives up (as Linux does 8 s after a close we did not answer).
    h.send(g.hdr(OP_RST), &[]);
    assert_eq!(h.dev.lock().unwrap().connections(), 0);
    assert!(
        h.recv().iter().all(|p| p.0.op != OP_RST),
        "no RST answers an RST"
    );
    // The host still gets every byte, then end of file.
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut b = vec![0u8; 65536];
    for _ in 0..10_000 {
        match host.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => h.pump(),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.len(), sent);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(h.dev.lock().unwrap().buffered_bytes(), 0);
}

/// Out of fds, `accept` fails while the connection stays pending (the listener stays readable):
/// the listener rests instead of waking the loop at once, again and again. Runs in a forked
/// child, whose fd limit it lowers.
#[test]
fn an_accept_error_rests_the_listener_instead_of_spinning() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::time::{Duration, Instant};

    // SAFETY: the child builds a device and runs its event loop on its only thread, then
    // exits without returning into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(|| {
                let mem = test_mem();
                let mut h = Harness::new(&mem);
                h.activate(true);
                let _pending = UnixStream::connect(&h.path).unwrap();
                // The lowest free fd becomes the limit: the next fd (accept's) is over it.
                let probe = nix::unistd::dup(0).unwrap();
                let _ = nix::unistd::close(probe);
                let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
                setrlimit(Resource::RLIMIT_NOFILE, probe as u64, hard).unwrap();
                let start = Instant::now();
                let mut events = 0;
                while start.elapsed() < Duration::from_millis(500) {
                    events += h.em.run_with_timeout(50).unwrap();
                }
                // A rest of 100 ms: about 5 retries (timer + listener) in 500 ms; spinning
                // would be thousands.
                events
            });
            let code = match code {
                Ok(events) if events <= 30 => 0,
                Ok(events) => {
                    eprintln!("the loop woke {events} times in 500 ms");
                    1
                }
                Err(_) => 2,
            };
            // SAFETY: ends the child at once, without running the test harness's code.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        }
    }
}

//! A hostile driver: malformed chains and messages never panic the device or make it touch
//! memory outside the guest. Content errors get an error reply (or the chain back unused);
//! structural errors break the queue and the device asks for a reset.

use fuse_backend_rs::abi::fuse_abi::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes};

use super::client::*;
use super::harness::*;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// After a bad request the device must still answer.
fn assert_alive(h: &mut Harness<'_>) {
    assert!(h.getattr(ROOT).is_ok());
    assert!(!h.needs_reset());
    // The server is still there: a dead one would have stopped the VM.
    assert_eq!(h.control.reason(), None);
}

/// Sends `msg` (any bytes) with a reply buffer of `reply_len` and returns the used length and
/// the errno of the reply, if there is one.
fn send_msg(h: &mut Harness<'_>, msg: &[u8], reply_len: u32) -> (u32, Option<i32>) {
    let req = h.put(msg);
    let reply = h.alloc(reply_len.max(1));
    let mut bufs = vec![(req, msg.len() as u32, false)];
    if reply_len > 0 {
        bufs.push((reply, reply_len, true));
    }
    let before = h.q[REQUEST].used_idx();
    let head = h.q[REQUEST].write_chain(&bufs);
    h.q[REQUEST].publish(head);
    h.wait_used(REQUEST, before, 1);
    let (_, used) = h.q[REQUEST].take_used()[0];
    if used >= 16 {
        let mut out = OutHeader::default();
        h.mem
            .read_slice(out.as_mut_slice(), vm_memory::GuestAddress(reply))
            .unwrap();
        (used, Some(-out.error))
    } else {
        (used, None)
    }
}

fn header(opcode: u32, len: u32, nodeid: u64) -> InHeader {
    InHeader {
        len,
        opcode,
        unique: 77,
        nodeid,
        ..Default::default()
    }
}

#[test]
fn short_and_missing_headers_are_dropped() {
    if !can_confine("short_and_missing_headers_are_dropped") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let hdr = header(OP_GETATTR, 56, ROOT);
    // 39 bytes of header.
    assert_eq!(send_msg(&mut h, &hdr.as_slice()[..39], 4096), (0, None));
    // Nothing readable at all: a write-only chain.
    let reply = h.alloc(4096);
    let (_, used) = h.send_raw(REQUEST, &[Descriptor::new(reply, 4096, WRITE, 0)]);
    assert_eq!(used, 0);
    assert_eq!(h.metrics().dropped, 2);
    // No room for a reply: processed, nothing written.
    let body = GetattrIn::default();
    let mut msg = hdr.as_slice().to_vec();
    msg.extend_from_slice(body.as_slice());
    assert_eq!(send_msg(&mut h, &msg, 0), (0, None));
    assert_eq!(send_msg(&mut h, &msg, 15), (0, None));
    assert_alive(&mut h);
}

#[test]
fn bogus_opcodes_get_enosys() {
    if !can_confine("bogus_opcodes_get_enosys") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    for opcode in [
        0,
        7,
        19,
        47,
        OP_SETUPMAPPING,
        49,
        50,
        4096,
        0x1_0000,
        u32::MAX,
    ] {
        let hdr = header(opcode, 40, ROOT);
        assert_eq!(
            send_msg(&mut h, hdr.as_slice(), 64),
            (16, Some(libc::ENOSYS)),
            "opcode {opcode}"
        );
    }
    assert_eq!(h.metrics().refused, 10);
    assert_alive(&mut h);
}

#[test]
fn bad_lengths_and_huge_sizes_get_error_replies() {
    if !can_confine("bad_lengths_and_huge_sizes_get_error_replies") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| std::fs::write(t.join("share/f"), vec![7u8; 8192]).unwrap(),
        |_| {},
    );
    let f = h.lookup(ROOT, "f").unwrap().nodeid;
    let name = cstr("f");
    let lookup = |len: u32| {
        let mut m = header(OP_LOOKUP, len, ROOT).as_slice().to_vec();
        m.extend_from_slice(&name);
        m
    };
    // len shorter than the header, longer than the message, absurd.
    for len in [0, 39, 40, 100, 1 << 20, u32::MAX] {
        let (used, errno) = send_msg(&mut h, &lookup(len), 4096);
        assert_eq!(used, 16, "len {len}");
        assert!(errno.is_some_and(|e| e > 0), "len {len}: {errno:?}");
    }
    // A name without its NUL.
    let mut m = header(OP_LOOKUP, 41, ROOT).as_slice().to_vec();
    m.push(b'f');
    assert_eq!(send_msg(&mut h, &m, 4096), (16, Some(libc::EINVAL)));

    // READ asking for more than the reply buffer holds, or 4 GiB.
    for size in [4096 + 1, u32::MAX] {
        let read = ReadIn {
            size,
            ..Default::default()
        };
        let mut m = header(OP_READ, 80, f).as_slice().to_vec();
        m.extend_from_slice(read.as_slice());
        let (used, errno) = send_msg(&mut h, &m, 4096 + 16);
        assert_eq!(used, 16);
        assert!(errno.is_some_and(|e| e > 0));
    }
    // WRITE claiming more data than it carries writes only what is there.
    let write = WriteIn {
        size: 1 << 20,
        ..Default::default()
    };
    let mut m = header(OP_WRITE, 80 + 4, f).as_slice().to_vec();
    m.extend_from_slice(write.as_slice());
    m.extend_from_slice(b"abcd");
    let (used, errno) = send_msg(&mut h, &m, 64);
    assert_eq!((used, errno), (24, Some(0)));
    assert_eq!(&std::fs::read(h.share.join("f")).unwrap()[..5], b"abcd\x07");
    // BATCH_FORGET with an absurd count: no reply (none is expected), nothing breaks.
    let bf = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let mut m = header(OP_BATCH_FORGET, 48, 0).as_slice().to_vec();
    m.extend_from_slice(bf.as_slice());
    assert_eq!(send_msg(&mut h, &m, 64), (0, None));
    // INIT with a truncated body.
    let m = header(OP_INIT, 48, 0).as_slice().to_vec();
    assert_eq!(send_msg(&mut h, &m, 256), (16, Some(libc::EINVAL)));
    assert_alive(&mut h);
    assert!(h.metrics().server_errors >= 3);
}

#[test]
fn oversized_chains_are_clipped_not_allocated() {
    if !can_confine("oversized_chains_are_clipped_not_allocated") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    // 200 readable descriptors of 1 MiB each, all naming the same memory (200 MiB of request),
    // and a 16 MiB reply area: a request past the largest message is answered with an error
    // without being copied, and nothing is allocated to its size.
    let mut msg = header(OP_LOOKUP, u32::MAX, ROOT).as_slice().to_vec();
    msg.resize(1 << 20, b'a');
    let req = h.put(&msg);
    let reply = h.alloc(16 << 20);
    let mut bufs = vec![(req, 1 << 20, false); 200];
    bufs.push((reply, 16 << 20, true));
    let before = h.q[REQUEST].used_idx();
    let head = h.q[REQUEST].write_chain(&bufs);
    h.q[REQUEST].publish(head);
    h.wait_used(REQUEST, before, 1);
    let (_, used) = h.q[REQUEST].take_used()[0];
    assert_eq!(used, 16, "an error reply");
    assert_alive(&mut h);
}

#[test]
fn structural_errors_break_the_queue() {
    if !can_confine("structural_errors_break_the_queue") {
        return;
    }
    // Each case gets the slot its chain starts at.
    type Case = (&'static str, fn(u16) -> Vec<Descriptor>);
    let cases: [Case; 6] = [
        ("loop", |h| {
            vec![
                Descriptor::new(0x20_0000, 64, NEXT, h + 1),
                Descriptor::new(0x20_0000, 64, NEXT, h),
            ]
        }),
        ("next out of range", |_| {
            vec![Descriptor::new(0x20_0000, 64, NEXT, 999)]
        }),
        ("buffer outside memory", |_| {
            vec![Descriptor::new(MEM_SIZE as u64, 64, 0, 0)]
        }),
        ("buffer wrapping", |_| {
            vec![Descriptor::new(u64::MAX - 8, 64, 0, 0)]
        }),
        ("indirect not negotiated", |_| {
            vec![Descriptor::new(0x20_0000, 32, INDIRECT, 0)]
        }),
        ("readable after writable", |h| {
            vec![
                Descriptor::new(0x20_0000, 64, WRITE | NEXT, h + 1),
                Descriptor::new(0x20_0000, 64, 0, 0),
            ]
        }),
    ];
    for (what, descs) in cases {
        let mem = test_mem();
        let mut h = Harness::new(&mem);
        let before = h.q[REQUEST].used_idx();
        let descs = descs(h.q[REQUEST].next_slot());
        let head = h.q[REQUEST].write_raw(&descs);
        h.q[REQUEST].publish(head);
        h.kick(REQUEST);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !h.needs_reset() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no reset request"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            h.q[REQUEST].used_idx(),
            before,
            "{what}: chain must not be used"
        );
        assert_eq!(h.metrics().queue_errors, 1, "{what}");
        // The hiprio queue still works: FORGET is consumed.
        assert_eq!(h.forget(ROOT, 1), 0);
    }
    // A corrupt available index.
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let bogus = h.q[REQUEST].used_idx().wrapping_add(QSIZE + 1);
    h.q[REQUEST].set_avail_idx(bogus);
    h.kick(REQUEST);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !h.needs_reset() {
        assert!(std::time::Instant::now() < deadline, "no reset request");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// READ/WRITE flags the host refuses to set on the fd (`O_DIRECT` on a directory) must not make
/// the crate close a handle's fd twice (debug builds abort on that; release builds would leave
/// a reused fd number in the handle).
#[test]
fn io_flags_the_host_refuses_leave_fds_alone() {
    if !can_confine("io_flags_the_host_refuses_leave_fds_alone") {
        return;
    }
    for cache in [
        crate::devices::virtio::fs::FsCache::Exclusive,
        crate::devices::virtio::fs::FsCache::Shared,
    ] {
        let mem = test_mem();
        let mut h = Harness::with(
            &mem,
            |t| std::fs::write(t.join("share/f"), b"data").unwrap(),
            |c| c.cache = cache,
        );
        let f = h.lookup(ROOT, "f").unwrap().nodeid;
        let fh = h.open(f, libc::O_RDWR).map(|o| o.fh).unwrap_or(0);
        let dir_fh = h.opendir(ROOT).map(|o| o.fh).unwrap_or(0);
        for (node, handle) in [(ROOT, dir_fh), (f, fh)] {
            let read = ReadIn {
                fh: handle,
                size: 16,
                flags: (libc::O_DIRECT | libc::O_APPEND | libc::O_NOATIME) as u32,
                ..Default::default()
            };
            let mut m = header(OP_READ, 80, node).as_slice().to_vec();
            m.extend_from_slice(read.as_slice());
            let _ = send_msg(&mut h, &m, 64);
            let write = WriteIn {
                fh: handle,
                size: 1,
                flags: libc::O_DIRECT as u32,
                ..Default::default()
            };
            let mut m = header(OP_WRITE, 81, node).as_slice().to_vec();
            m.extend_from_slice(write.as_slice());
            m.push(b'D');
            let _ = send_msg(&mut h, &m, 64);
        }
        // The file's handle still reads the file.
        assert_eq!(&h.read(f, fh, 0, 16).unwrap()[1..], b"ata", "{cache:?}");
        assert_alive(&mut h);
    }
}

//! The virtio-fs request path as a hostile guest drives it: FUSE requests with fuzzed opcodes,
//! node ids, header lengths and bodies, split over any number of descriptors, with reply
//! buffers of any size; raw descriptor chains; FORGETs on the hiprio queue.
//!
//! The device is the real one: its queue thread copies each request out of guest memory into
//! a message, and its server — the same code, confinement and seccomp list as the process the
//! VMM starts, here on a thread of the fuzzer (`FsServer::InProcess`: libFuzzer's binary cannot
//! be exec'd as a server) — parses the message and answers over the same socket protocol. It
//! serves a 32 MiB tmpfs (in a private mount namespace of this process) so nothing the fuzzer
//! creates reaches the disk or outlives the run. Needs root. Invariants: the device never
//! panics, always answers a chain it can parse (or declares the queue broken), never reports
//! more reply bytes than the writable buffers hold, and the server never dies (a dead server
//! stops the VM: the controller would say so).

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bulkhead_vmm::control::Controller;
use bulkhead_vmm::devices::virtio::fs::{FsConfig, FsDevice, FsServer, SetIdFiles};
use bulkhead_vmm::devices::virtio::{
    GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
};
use bulkhead_vmm_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x80_0000;
/// Request bytes are written here, replies go above `REPLY`.
const REQUEST: u64 = 0x1_0000;
const REPLY: u64 = 0x10_0000;
const HIPRIO: usize = 0;
const REQ: usize = 1;

/// FUSE opcodes worth hitting on purpose (the fuzzer may also send any u32).
const OPCODES: [u32; 24] = [
    1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 21, 26, 27, 28, 35, 42, 44, 46,
];

fn rings(q: usize) -> (u64, u64, u64) {
    let base = q as u64 * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

struct Fs {
    mem: GuestMemoryMmap,
    dev: FsDevice,
    interrupt: Arc<Interrupt>,
    control: Arc<Controller>,
    kicks: Vec<EventFd>,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    active: bool,
    unique: u64,
    _share: tempfile::TempDir,
}

impl Fs {
    fn new() -> Self {
        // A private mount namespace for this thread (and the worker it spawns) with a small
        // tmpfs as the share.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare (needs root)");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_SLAVE | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .expect("make mounts slaves");
        let share = tempfile::tempdir().expect("tempdir");
        nix::mount::mount(
            Some("tmpfs"),
            share.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=32m"),
        )
        .expect("mount tmpfs");
        for d in ["a", "a/b", "c"] {
            std::fs::create_dir(share.path().join(d)).expect("populate");
        }
        for f in ["f", "a/g", "a/b/h"] {
            std::fs::write(share.path().join(f), b"some content").expect("populate");
        }
        std::os::unix::fs::symlink("/", share.path().join("l")).expect("populate");
        // The shim's kind of set-ID rule, so set-ID modes in SETATTR/CREATE/MKNOD reach its
        // path look-ups (under the worker's seccomp filter) instead of passing straight through.
        let config = FsConfig {
            set_id: SetIdFiles::AllowedUnder("a".into()),
            // Small enough that fuzzed requests reach the open-file cap and FORGETs free it.
            max_open_files: 64,
            server: FsServer::InProcess,
            ..FsConfig::new("fuzz", share.path())
        };
        let control = Controller::new(1);
        let dev = FsDevice::new(&config, control.clone()).expect("fs device");
        let kicks = dev
            .queue_events()
            .iter()
            .map(|e| e.try_clone().expect("eventfd"))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        Self {
            mem,
            dev,
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
            control,
            kicks,
            next_desc: [0; 2],
            avail_idx: [0; 2],
            active: false,
            unique: 0,
            _share: share,
        }
    }

    /// (Re)starts the driver on fresh rings and sends INIT, as Linux does.
    fn activate(&mut self) {
        self.dev.reset();
        let zeros = vec![0u8; 0x8000];
        let _ = self.mem.write_slice(&zeros, GuestAddress(0));
        self.interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")));
        let queues = (0..2)
            .map(|q| {
                let (d, a, u) = rings(q);
                let mut queue = Queue::new(QSIZE).expect("queue");
                queue.set_desc_table_address(Some(d as u32), Some(0));
                queue.set_avail_ring_address(Some(a as u32), Some(0));
                queue.set_used_ring_address(Some(u as u32), Some(0));
                queue.set_event_idx(true);
                queue.set_ready(true);
                queue
            })
            .collect();
        self.dev
            .activate(
                self.mem.clone(),
                queues,
                FEATURE_VERSION_1 | FEATURE_EVENT_IDX,
                self.interrupt.clone(),
            )
            .expect("activate");
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
        self.active = true;
        // INIT 7.37 with INIT_EXT, MAX_PAGES, DO_READDIRPLUS, WRITEBACK_CACHE, NO_OPEN_SUPPORT.
        let mut body = Vec::new();
        for v in [
            7u32,
            37,
            0x2_0000,
            0x4000_0000 | 0x40_0000 | 0x2000 | 0x1_0000 | 0x2_0000,
        ] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&[0u8; 48]);
        let msg = self.message(26, 0, None, &body);
        self.send(REQ, &msg, &[msg.len()], 4096);
    }

    fn message(&mut self, opcode: u32, nodeid: u64, len: Option<u32>, body: &[u8]) -> Vec<u8> {
        self.unique += 2;
        let len = len.unwrap_or(40 + body.len() as u32);
        let mut m = Vec::with_capacity(40 + body.len());
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&opcode.to_le_bytes());
        m.extend_from_slice(&self.unique.to_le_bytes());
        m.extend_from_slice(&nodeid.to_le_bytes());
        m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        m.extend_from_slice(body);
        m
    }

    /// Posts `msg` split into pieces of the given sizes (the rest in a last piece), plus a
    /// reply buffer of `reply` bytes, and waits for the answer. Returns false once the device
    /// has declared a queue broken.
    fn send(&mut self, q: usize, msg: &[u8], splits: &[usize], reply: u32) -> bool {
        let _ = self.mem.write_slice(msg, GuestAddress(REQUEST));
        let mut bufs = Vec::new();
        let mut off = 0;
        for &s in splits {
            let s = s.min(msg.len() - off);
            if s == 0 {
                continue;
            }
            bufs.push((REQUEST + off as u64, s as u32, 0u16));
            off += s;
        }
        if off < msg.len() {
            bufs.push((REQUEST + off as u64, (msg.len() - off) as u32, 0));
        }
        if reply > 0 {
            bufs.push((REPLY, reply, 2)); // VRING_DESC_F_WRITE
        }
        let descs: Vec<[u8; 16]> = {
            let head = self.next_desc[q];
            bufs.iter()
                .enumerate()
                .map(|(i, &(addr, len, flags))| {
                    let last = i + 1 == bufs.len();
                    let next = (head + i as u16 + 1) % QSIZE;
                    desc(addr, len, if last { flags } else { flags | 1 }, next)
                })
                .collect()
        };
        self.post(q, &descs, u64::from(reply))
    }

    /// Writes raw descriptors, publishes the first, kicks, waits. `writable` bounds the used
    /// length the device may report (u64::MAX when unknown).
    fn post(&mut self, q: usize, descs: &[[u8; 16]], writable: u64) -> bool {
        let (table, avail, used) = rings(q);
        let head = self.next_desc[q];
        for (i, d) in descs.iter().enumerate() {
            let idx = (head as usize + i) % QSIZE as usize;
            let _ = self
                .mem
                .write_slice(d, GuestAddress(table + 16 * idx as u64));
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        let slot = u64::from(self.avail_idx[q] % QSIZE);
        let _ = self.mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
        let before = self.used_idx(used);
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        let _ = self
            .mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2));
        let _ = self.kicks[q].write(1);

        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.used_idx(used) != before {
                let elem = used + 4 + 8 * u64::from(before % QSIZE);
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap_or(0);
                assert!(
                    u64::from(len) <= writable,
                    "device reported {len} reply bytes for {writable} writable"
                );
                return true;
            }
            assert!(
                self.control.reason().is_none(),
                "the server died: {:?}",
                self.control.reason()
            );
            if self.interrupt.needs_reset() {
                self.active = false;
                return false;
            }
            assert!(Instant::now() < deadline, "device stopped answering");
            std::thread::yield_now();
        }
    }

    fn used_idx(&self, used: u64) -> u16 {
        self.mem
            .load(GuestAddress(used + 2), std::sync::atomic::Ordering::Acquire)
            .unwrap_or(0)
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

static FS: OnceLock<Mutex<Fs>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mut fs = FS
        .get_or_init(|| Mutex::new(Fs::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if !fs.active {
        fs.activate();
    }
    let mut c = Cursor::new(data);
    for _ in 0..8 {
        if c.is_empty() || !fs.active {
            break;
        }
        let ok = match c.u8() % 8 {
            // A raw chain on either queue: any flags, lengths, addresses and links.
            0 => {
                let q = usize::from(c.u8() & 1);
                let n = usize::from(c.u8() % 4) + 1;
                let descs: Vec<[u8; 16]> = (0..n)
                    .map(|_| {
                        let mut d = [0u8; 16];
                        let b = c.bytes(16);
                        d[..b.len()].copy_from_slice(b);
                        d
                    })
                    .collect();
                fs.post(q, &descs, u64::MAX)
            }
            // A FORGET or BATCH_FORGET on the hiprio queue.
            1 => {
                let op = if c.u8() & 1 == 0 { 2 } else { 42 };
                let nodeid = u64::from(c.u8() % 16);
                let n = usize::from(c.u8() % 64);
                let body = c.bytes(n).to_vec();
                let msg = fs.message(op, nodeid, None, &body);
                fs.send(HIPRIO, &msg, &[], 0)
            }
            // A FUSE request: a known opcode (mostly) or any, a small node id (mostly), a body,
            // the header's len right (mostly), split anywhere, a reply buffer of any size.
            _ => {
                let pick = c.u8();
                let opcode = if pick < 224 {
                    OPCODES[usize::from(pick) % OPCODES.len()]
                } else {
                    c.u32()
                };
                let nodeid = match c.u8() {
                    0..=239 => u64::from(c.u8() % 24),
                    _ => c.u64(),
                };
                let n = usize::from(c.u16() % 2048);
                let body = c.bytes(n).to_vec();
                let len = (c.u8() < 16).then(|| c.u32());
                let msg = fs.message(opcode, nodeid, len, &body);
                let splits: Vec<usize> =
                    (0..c.u8() % 4).map(|_| usize::from(c.u8() % 64)).collect();
                let reply = match c.u8() % 4 {
                    0 => u32::from(c.u8()),
                    1 => u32::from(c.u16()),
                    2 => 4096,
                    _ => 0x10_0000 + 16,
                };
                fs.send(REQ, &msg, &splits, reply)
            }
        };
        if !ok {
            break;
        }
    }
});

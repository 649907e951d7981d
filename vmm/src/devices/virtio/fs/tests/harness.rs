//! A driver-side model of the guest for virtio-fs tests: virtio-queue's mock rings in real guest
//! memory, the real device with its real queue thread and (confined) server — on a thread of
//! this process ([`FsServer::InProcess`]) — and a temporary share.
//!
//! Layout of the temporary directory: `<tmp>/share` is shared, `<tmp>/outside` holds files the
//! guest must never reach.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::control::Controller;
use crate::devices::virtio::fs::{FsConfig, FsDevice, FsMetricsSnapshot, FsServer};
use crate::devices::virtio::{
    GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
};

pub const QSIZE: u16 = 256;
pub const HIPRIO: usize = 0;
pub const REQUEST: usize = 1;
const BUF_BASE: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 0x400_0000;
/// Reply buffer for ordinary requests.
pub const REPLY_LEN: u32 = 4096;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// True if this process can confine a share (root with CAP_SYS_ADMIN); tests that need the
/// real worker skip out loud otherwise, or fail with `BULKHEAD_E2E=1`
/// (`bulkhead_test_support::require`).
pub fn can_confine(test: &str) -> bool {
    bulkhead_test_support::require_for(test, &[bulkhead_test_support::Need::Root])
}

/// One guest queue as the driver sees it. Not virtio-queue's `MockSplitQueue`: its layout (0.17)
/// puts the used ring over the second half of the available ring.
pub struct DriverQueue<'m> {
    mem: &'m GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    pub last_used: u16,
}

impl<'m> DriverQueue<'m> {
    /// A queue of `QSIZE` entries at `base` (needs 0x3000 bytes).
    pub fn new_at(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        let q = Self {
            mem,
            desc: base,
            avail: base + 16 * u64::from(QSIZE),
            used: base + 16 * u64::from(QSIZE) + 0x1000,
            next_desc: 0,
            last_used: 0,
        };
        let zeros = vec![0u8; 0x3000];
        mem.write_slice(&zeros, GuestAddress(base)).unwrap();
        q
    }

    /// The device's view of this queue, ready.
    pub fn create_queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// The slot the next chain starts at.
    pub fn next_slot(&self) -> u16 {
        self.next_desc
    }

    /// Writes raw descriptors at the next free slots without publishing them; returns the
    /// index of the first.
    pub fn write_raw(&mut self, descs: &[Descriptor]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            self.mem
                .write_obj(
                    RawDescriptor::from(*d),
                    GuestAddress(self.desc + 16 * u64::from(idx)),
                )
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        head
    }

    /// Writes a properly linked chain of (addr, len, writable) buffers; returns its head.
    pub fn write_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let n = bufs.len() as u16;
        let descs: Vec<Descriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if (i as u16) + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                Descriptor::new(addr, len, flags, (head + i as u16 + 1) % QSIZE)
            })
            .collect();
        self.write_raw(&descs)
    }

    fn avail_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let idx = self.avail_idx();
        let slot = self.avail + 4 + 2 * u64::from(idx % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// Sets the available index directly (to corrupt it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mem
            .store(
                idx,
                GuestAddress(self.avail + 2),
                std::sync::atomic::Ordering::Release,
            )
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .load(
                GuestAddress(self.used + 2),
                std::sync::atomic::Ordering::Acquire,
            )
            .unwrap()
    }

    /// New used elements since the last call: (head, len).
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while self.last_used != idx {
            let elem = self.used + 4 + 8 * u64::from(self.last_used % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
            out.push((id as u16, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

/// A reply as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Positive errno, 0 on success.
    pub errno: i32,
    /// Bytes after the out header.
    pub data: Vec<u8>,
}

impl Reply {
    pub fn obj<T: ByteValued + Default>(&self) -> T {
        let mut v = T::default();
        let n = std::mem::size_of::<T>();
        assert!(self.data.len() >= n, "reply too short: {self:?}");
        v.as_mut_slice().copy_from_slice(&self.data[..n]);
        v
    }

    pub fn result<T: ByteValued + Default>(&self) -> Result<T, i32> {
        if self.errno == 0 {
            Ok(self.obj())
        } else {
            Err(self.errno)
        }
    }
}

pub struct Harness<'m> {
    pub mem: &'m GuestMemoryMmap,
    pub tmp: tempfile::TempDir,
    pub share: PathBuf,
    pub outside: PathBuf,
    pub dev: Arc<Mutex<FsDevice>>,
    /// The VM's stop switch the device pulls when its server dies.
    pub control: Arc<Controller>,
    pub interrupt: Arc<Interrupt>,
    pub q: Vec<DriverQueue<'m>>,
    queue_events: Vec<EventFd>,
    next_buf: u64,
    unique: u64,
}

impl<'m> Harness<'m> {
    /// A device over a fresh share, activated and INIT-ed like Linux does.
    pub fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self::with(mem, |_| {}, |_| {})
    }

    /// `populate` fills `<tmp>` (share and outside) before the device starts; `tweak` adjusts
    /// the config.
    pub fn with(
        mem: &'m GuestMemoryMmap,
        populate: impl FnOnce(&std::path::Path),
        tweak: impl FnOnce(&mut FsConfig),
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host secret").unwrap();
        populate(tmp.path());
        let mut config = FsConfig::new("testfs", &share);
        // The server on a thread of this test process, confined per thread: the same code and
        // protocol as the process the VMM starts (which these tests cannot exec: the test
        // binary is not a server).
        config.server = FsServer::InProcess;
        tweak(&mut config);
        let control = Controller::new(1);
        let dev = FsDevice::new(&config, control.clone()).unwrap();
        let queue_events = dev
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq));
        let mut h = Self {
            mem,
            tmp,
            share,
            outside,
            dev: Arc::new(Mutex::new(dev)),
            control,
            interrupt,
            q: vec![
                DriverQueue::new_at(mem, 0x0),
                DriverQueue::new_at(mem, 0x1_0000),
            ],
            queue_events,
            next_buf: BUF_BASE,
            unique: 0,
        };
        h.activate();
        let init = h.init();
        assert_eq!(init.major, 7);
        h
    }

    pub fn activate(&mut self) {
        let queues: Vec<Queue> = self
            .q
            .iter()
            .map(|d| {
                let mut q = d.create_queue();
                q.set_event_idx(true);
                q
            })
            .collect();
        self.dev
            .lock()
            .unwrap()
            .activate(
                self.mem.clone(),
                queues,
                FEATURE_VERSION_1 | FEATURE_EVENT_IDX,
                self.interrupt.clone(),
            )
            .unwrap();
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len.max(1)).next_multiple_of(64);
        if self.next_buf >= MEM_SIZE as u64 {
            // Requests are answered one at a time: old buffers are free again.
            self.next_buf = BUF_BASE;
            return self.alloc(len);
        }
        addr
    }

    pub fn kick(&self, queue: usize) {
        self.queue_events[queue].write(1).unwrap();
    }

    /// Kicks `queue` and waits until the device has returned `count` more chains on it.
    pub fn wait_used(&mut self, queue: usize, before: u16, count: u16) {
        self.kick(queue);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.q[queue].used_idx().wrapping_sub(before) < count {
            assert!(
                Instant::now() < deadline,
                "device did not answer on queue {queue} (needs reset: {})",
                self.interrupt.needs_reset()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Posts a hand-made chain on `queue` and waits for it to come back; returns (head, len).
    pub fn send_raw(&mut self, queue: usize, descs: &[Descriptor]) -> (u16, u32) {
        let before = self.q[queue].used_idx();
        let head = self.q[queue].write_raw(descs);
        self.q[queue].publish(head);
        self.wait_used(queue, before, 1);
        let used = self.q[queue].take_used();
        assert_eq!(used.len(), 1, "{used:?}");
        used[0]
    }

    pub fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    /// Writes `bytes` to fresh guest memory; returns the address.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// A request message (header + body parts).
    pub fn message(&mut self, opcode: u32, nodeid: u64, body: &[&[u8]]) -> (u64, Vec<u8>) {
        let unique = self.next_unique();
        let len: usize = 40 + body.iter().map(|b| b.len()).sum::<usize>();
        let header = InHeader {
            len: len as u32,
            opcode,
            unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let mut msg = header.as_slice().to_vec();
        for b in body {
            msg.extend_from_slice(b);
        }
        (unique, msg)
    }

    /// Sends a request on the request queue with `reply_len` bytes of reply room and returns
    /// the reply. Checks the reply header against the request.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[&[u8]], reply_len: u32) -> Reply {
        let (unique, msg) = self.message(opcode, nodeid, body);
        let req = self.put(&msg);
        let reply = self.alloc(reply_len);
        let before = self.q[REQUEST].used_idx();
        let head = self.q[REQUEST]
            .write_chain(&[(req, msg.len() as u32, false), (reply, reply_len, true)]);
        self.q[REQUEST].publish(head);
        self.wait_used(REQUEST, before, 1);
        let used = self.q[REQUEST].take_used();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head);
        self.read_reply(reply, used[0].1, unique)
    }

    /// Decodes the reply at `addr` of `used` bytes, checking its header.
    pub fn read_reply(&self, addr: u64, used: u32, unique: u64) -> Reply {
        assert!(used >= 16, "no reply header (used {used})");
        let mut out = OutHeader::default();
        self.mem
            .read_slice(out.as_mut_slice(), GuestAddress(addr))
            .unwrap();
        assert_eq!(out.unique, unique, "reply to the wrong request");
        assert_eq!(out.len, used, "out header len vs used len");
        let mut data = vec![0u8; used as usize - 16];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + 16))
            .unwrap();
        Reply {
            errno: -out.error,
            data,
        }
    }

    /// Sends a no-reply request (FORGET, BATCH_FORGET) on the hiprio queue.
    pub fn call_hiprio(&mut self, opcode: u32, nodeid: u64, body: &[&[u8]]) -> u32 {
        let (_, msg) = self.message(opcode, nodeid, body);
        let req = self.put(&msg);
        let before = self.q[HIPRIO].used_idx();
        let head = self.q[HIPRIO].write_chain(&[(req, msg.len() as u32, false)]);
        self.q[HIPRIO].publish(head);
        self.wait_used(HIPRIO, before, 1);
        self.q[HIPRIO].take_used()[0].1
    }

    pub fn metrics(&self) -> FsMetricsSnapshot {
        self.dev.lock().unwrap().metrics().snapshot()
    }

    pub fn needs_reset(&self) -> bool {
        self.interrupt.needs_reset()
    }
}

/// `name` as a NUL-terminated byte string.
pub fn cstr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

//! Shared set-up for the fuzz targets: a vsock device on real guest memory and a real event
//! manager, its rings at fixed addresses, and a byte cursor over the fuzzer's input.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::virtio::vsock::{VsockConfig, VsockDevice};
use bulkhead_vmm::devices::virtio::{
    GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
};
use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Queue size used by the harness.
pub const QSIZE: u16 = 16;
/// Guest memory size.
pub const MEM_SIZE: usize = 0x10_0000;
/// Per-connection window, small so the fuzzer reaches "buffer full" quickly.
pub const BUF_ALLOC: u32 = 8192;
/// Connection cap, small for the same reason.
pub const MAX_CONNS: usize = 4;

/// Reads the fuzzer's bytes; runs dry as zeros.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Guest-physical layout of queue `q`: descriptor table, avail ring, used ring.
pub fn ring_addrs(q: usize) -> (u64, u64, u64) {
    let base = q as u64 * 0x3000;
    (base, base + 0x1000, base + 0x2000)
}

pub fn new_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

pub fn new_device(dir: &tempfile::TempDir) -> Arc<Mutex<VsockDevice>> {
    let mut config = VsockConfig::new(dir.path().join("v.sock"));
    config.buf_alloc = BUF_ALLOC;
    config.max_connections = MAX_CONNS;
    Arc::new(Mutex::new(VsockDevice::new(&config).expect("vsock device")))
}

/// Runs the event loop until nothing is left to do (bounded).
pub fn pump(em: &mut EventManager<Arc<Mutex<VsockDevice>>>) {
    for _ in 0..64 {
        match em.run_with_timeout(0) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A vsock device driven directly (no transport), as its driver would after DRIVER_OK.
pub struct Vsock {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<VsockDevice>>,
    pub em: EventManager<Arc<Mutex<VsockDevice>>>,
    kicks: Vec<EventFd>,
    next_desc: [u16; 3],
    avail_idx: [u16; 3],
    pub host: Option<UnixStream>,
    pub dir: tempfile::TempDir,
}

impl Vsock {
    pub fn new(event_idx: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = new_mem();
        let dev = new_device(&dir);
        let mut em = EventManager::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let kicks = dev
            .lock()
            .unwrap()
            .queue_events()
            .iter()
            .map(|e| e.try_clone().expect("eventfd"))
            .collect();
        let queues = (0..3)
            .map(|q| {
                let (d, a, u) = ring_addrs(q);
                let mut queue = Queue::new(QSIZE).expect("queue");
                queue.set_desc_table_address(Some(d as u32), Some(0));
                queue.set_avail_ring_address(Some(a as u32), Some(0));
                queue.set_used_ring_address(Some(u as u32), Some(0));
                queue.set_event_idx(event_idx);
                queue.set_ready(true);
                queue
            })
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let features = FEATURE_VERSION_1 | if event_idx { FEATURE_EVENT_IDX } else { 0 };
        dev.lock()
            .unwrap()
            .activate(mem.clone(), queues, features, Arc::new(Interrupt::new(irq)))
            .expect("activate");
        let mut v = Self {
            mem,
            dev,
            em,
            kicks,
            next_desc: [0; 3],
            avail_idx: [0; 3],
            host: None,
            dir,
        };
        pump(&mut v.em);
        v
    }

    /// Writes raw descriptors at the next table slots and publishes the first as a chain.
    pub fn post_raw(&mut self, q: usize, descs: &[[u8; 16]]) {
        let (table, avail, _) = ring_addrs(q);
        let head = self.next_desc[q];
        for (i, d) in descs.iter().enumerate() {
            let idx = (head as usize + i) % QSIZE as usize;
            let _ = self
                .mem
                .write_slice(d, GuestAddress(table + 16 * idx as u64));
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        self.publish(q, head, avail);
    }

    /// Posts a linked chain of (addr, len, flags) buffers.
    pub fn post_chain(&mut self, q: usize, bufs: &[(u64, u32, u16)]) {
        let head = self.next_desc[q];
        let descs: Vec<[u8; 16]> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == bufs.len();
                let next = (head + i as u16 + 1) % QSIZE;
                let flags = if last { flags } else { flags | 1 };
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&next.to_le_bytes());
                d
            })
            .collect();
        self.post_raw(q, &descs);
    }

    fn publish(&mut self, q: usize, head: u16, avail: u64) {
        let slot = u64::from(self.avail_idx[q] % QSIZE);
        let _ = self
            .mem
            .write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * slot));
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        let _ = self
            .mem
            .write_obj(self.avail_idx[q].to_le(), GuestAddress(avail + 2));
    }

    /// Notifies queue `q` and lets the device run.
    pub fn kick(&mut self, q: usize) {
        let _ = self.kicks[q].write(1);
        pump(&mut self.em);
    }

    /// Host side: connect and ask for a guest port.
    pub fn host_connect(&mut self, port: u32) {
        if let Ok(s) = UnixStream::connect(self.dir.path().join("v.sock")) {
            let _ = s.set_nonblocking(true);
            let _ = nix::sys::socket::send(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                format!("CONNECT {port}\n").as_bytes(),
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            );
            self.host = Some(s);
        }
        pump(&mut self.em);
    }

    /// Host side: write, read or hang up.
    pub fn host_io(&mut self, action: u8, data: &[u8]) {
        match (action % 3, self.host.as_mut()) {
            (0, Some(s)) => {
                // MSG_NOSIGNAL: libFuzzer leaves SIGPIPE at its default, and a SIGPIPE must
                // only ever come from the device under test.
                let _ = nix::sys::socket::send(
                    std::os::fd::AsRawFd::as_raw_fd(s),
                    data,
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                );
            }
            (1, Some(s)) => {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b);
            }
            _ => self.host = None,
        }
        pump(&mut self.em);
    }

    /// Invariants that must hold whatever the guest did.
    pub fn check(&self) {
        let dev = self.dev.lock().unwrap();
        assert!(dev.buffered_bytes() <= BUF_ALLOC as usize * MAX_CONNS);
        assert!(dev.connections() <= MAX_CONNS);
    }
}

//! A driver-side model of the guest for vsock tests: virtio-queue's mock rings in real guest
//! memory, a real event manager, and real Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::vsock::packet::{Header, HDR_SIZE, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::vsock::{VsockConfig, VsockDevice, VsockMetricsSnapshot};
use crate::devices::virtio::{
    GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
};

pub const GUEST_CID: u64 = 3;
pub const QSIZE: u16 = 64;
pub const RX: usize = 0;
pub const TX: usize = 1;
/// Where packet buffers are carved from.
const BUF_BASE: u64 = 0x10_0000;
pub const MEM_SIZE: usize = 0x100_0000;

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One guest queue as the driver sees it.
pub struct DriverQueue<'m> {
    pub mock: MockSplitQueue<'m, GuestMemoryMmap>,
    next_desc: u16,
    last_used: u16,
    /// Buffer address of each posted head, to read RX results back.
    bufs: HashMap<u16, u64>,
}

impl<'m> DriverQueue<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        Self {
            mock: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
            next_desc: 0,
            last_used: 0,
            bufs: HashMap::new(),
        }
    }

    /// Writes a chain of raw descriptors (flags/next used as given) at the next free slots
    /// without publishing it; returns the index of the first.
    pub fn write_raw(&mut self, descs: &[Descriptor]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            self.mock
                .desc_table()
                .store(idx, RawDescriptor::from(*d))
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        head
    }

    /// Writes a properly linked chain of (addr, len, writable) buffers and publishes it.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let n = bufs.len() as u16;
        let descs: Vec<Descriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                let next = (head + i as u16 + 1) % QSIZE;
                if (i as u16) + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                Descriptor::new(addr, len, flags, next)
            })
            .collect();
        self.write_raw(&descs);
        self.bufs.insert(head, bufs[0].0);
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    /// Chains posted and not yet returned.
    pub fn outstanding(&self) -> u16 {
        self.mock.avail().idx().load().wrapping_sub(self.last_used)
    }

    /// Sets the available index directly (to corrupt it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// New used elements since the last call: (head, len).
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.mock.used().idx().load();
        let mut out = Vec::new();
        while self.last_used != idx {
            let e = self
                .mock
                .used()
                .ring()
                .ref_at(usize::from(self.last_used % QSIZE))
                .unwrap()
                .load();
            out.push((e.id() as u16, e.len()));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// The device's `avail_event` (EVENT_IDX).
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let addr = self.mock.used_addr().0 + 4 + 8 * u64::from(QSIZE);
        mem.read_obj(GuestAddress(addr)).unwrap()
    }
}

pub struct Harness<'m> {
    pub mem: &'m GuestMemoryMmap,
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub dev: Arc<Mutex<VsockDevice>>,
    pub em: EventManager<Arc<Mutex<VsockDevice>>>,
    pub irq: EventFd,
    pub interrupt: Arc<Interrupt>,
    pub q: Vec<DriverQueue<'m>>,
    next_buf: u64,
    queue_events: Vec<EventFd>,
}

impl<'m> Harness<'m> {
    pub fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self::with(mem, |_| {})
    }

    /// A device with a tweaked config, activated with EVENT_IDX.
    pub fn with(mem: &'m GuestMemoryMmap, tweak: impl FnOnce(&mut VsockConfig)) -> Self {
        let mut h = Self::inactive(mem, tweak);
        h.activate(true);
        h
    }

    /// A device whose driver has not started yet.
    pub fn inactive(mem: &'m GuestMemoryMmap, tweak: impl FnOnce(&mut VsockConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let mut config = VsockConfig::new(&path);
        config.guest_cid = GUEST_CID;
        tweak(&mut config);
        let dev = Arc::new(Mutex::new(VsockDevice::new(&config).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let q = vec![
            DriverQueue::new(mem, 0x0),
            DriverQueue::new(mem, 0x1_0000),
            DriverQueue::new(mem, 0x2_0000),
        ];
        let queue_events = dev
            .lock()
            .unwrap()
            .queue_events()
            .iter()
            .map(|e| e.try_clone().unwrap())
            .collect();
        let mut h = Self {
            mem,
            _dir: dir,
            path,
            dev,
            em,
            irq,
            interrupt,
            q,
            next_buf: BUF_BASE,
            queue_events,
        };
        h.pump();
        h
    }

    pub fn activate(&mut self, event_idx: bool) {
        let queues: Vec<Queue> = self
            .q
            .iter()
            .map(|d| {
                let mut q: Queue = d.mock.create_queue().unwrap();
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let features = FEATURE_VERSION_1 | if event_idx { FEATURE_EVENT_IDX } else { 0 };
        self.dev
            .lock()
            .unwrap()
            .activate(self.mem.clone(), queues, features, self.interrupt.clone())
            .unwrap();
        self.pump();
    }

    /// Runs the event loop until it has been idle for a little while.
    pub fn pump(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut idle = 0;
        while idle < 3 && Instant::now() < deadline {
            if self.em.run_with_timeout(1).unwrap() == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
        }
    }

    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(
            self.next_buf < MEM_SIZE as u64,
            "test ran out of buffer memory"
        );
        addr
    }

    pub fn kick(&mut self, queue: usize) {
        self.queue_events[queue].write(1).unwrap();
    }

    /// Posts `n` Linux-style RX buffers (one writable descriptor of `len` bytes each), never
    /// more than the ring holds.
    pub fn give_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            if self.q[RX].outstanding() >= QSIZE {
                break;
            }
            let addr = self.alloc(len);
            self.q[RX].add_chain(&[(addr, len, true)]);
        }
        self.kick(RX);
        self.pump();
    }

    /// Sends one packet and lets the device look at it exactly once, without waiting for
    /// timers.
    pub fn send_nowait(&mut self, hdr: Header, data: &[u8]) {
        self.post_tx(hdr, data);
        self.kick(TX);
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }

    /// Sends one packet as Linux does: a header descriptor and, with data, a data descriptor.
    pub fn send(&mut self, hdr: Header, data: &[u8]) {
        self.post_tx(hdr, data);
        self.kick(TX);
        self.pump();
    }

    /// Puts one packet on the TX queue without kicking.
    pub fn post_tx(&mut self, hdr: Header, data: &[u8]) {
        let mut hdr = hdr;
        hdr.len = data.len() as u32;
        let haddr = self.alloc(HDR_SIZE as u32);
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(haddr))
            .unwrap();
        let mut bufs = vec![(haddr, HDR_SIZE as u32, false)];
        if !data.is_empty() {
            let daddr = self.alloc(data.len() as u32);
            self.mem.write_slice(data, GuestAddress(daddr)).unwrap();
            bufs.push((daddr, data.len() as u32, false));
        }
        self.q[TX].add_chain(&bufs);
    }

    /// Packets delivered to the guest since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.q[RX].take_used();
        used.into_iter()
            .filter(|&(_, len)| len > 0)
            .map(|(head, len)| {
                let addr = self.q[RX].bufs[&head];
                let mut raw = [0u8; HDR_SIZE];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = Header::decode(&raw);
                assert_eq!(len as usize, HDR_SIZE + hdr.len as usize);
                let mut data = vec![0u8; hdr.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_SIZE as u64))
                    .unwrap();
                (hdr, data)
            })
            .collect()
    }

    /// Publishes a hand-made (possibly malformed) TX chain and lets the device see it.
    pub fn send_raw(&mut self, descs: &[Descriptor]) {
        let head = self.q[TX].write_raw(descs);
        self.q[TX].publish(head);
        self.kick(TX);
        self.pump();
    }

    /// Writes a header into fresh guest memory and returns its address.
    pub fn put_header(&mut self, hdr: &Header) -> u64 {
        let addr = self.alloc(HDR_SIZE as u32);
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(addr))
            .unwrap();
        addr
    }

    pub fn metrics(&self) -> VsockMetricsSnapshot {
        self.dev.lock().unwrap().metrics().snapshot()
    }

    pub fn needs_reset(&self) -> bool {
        self.interrupt.needs_reset()
    }

    /// Host connects to the device socket and asks for guest port `port`.
    pub fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).unwrap();
        writeln!(s, "CONNECT {port}").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        self.pump();
        s
    }

    /// Completes a host-initiated connection from the guest side: takes the REQUEST, answers
    /// RESPONSE with `buf_alloc`, and checks the host got `OK <port>`. Returns the guest view.
    pub fn accept_in_guest(&mut self, host: &mut UnixStream, buf_alloc: u32) -> GuestConn {
        let pkts = self.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, super::super::packet::OP_REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        let conn = GuestConn {
            guest_port: req.dst_port,
            host_port: req.src_port,
            buf_alloc,
            fwd_cnt: 0,
        };
        self.send(conn.hdr(super::super::packet::OP_RESPONSE), &[]);
        let line = read_line(host);
        assert_eq!(line, format!("OK {}\n", conn.host_port));
        conn
    }
}

/// The guest's side of one connection, for building headers.
#[derive(Debug, Clone, Copy)]
pub struct GuestConn {
    pub guest_port: u32,
    pub host_port: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl GuestConn {
    pub fn hdr(&self, op: u16) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.guest_port,
            dst_port: self.host_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

/// Reads one `\n`-terminated line, byte by byte so nothing after it is consumed.
pub fn read_line(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "stream ended after {out:?}");
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

/// True if the host end sees end-of-file or a reset.
pub fn host_sees_close(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

//! Tests of the virtio-net device: the guest side through virtio-queue's mock rings, the host
//! side through a real tap in a network namespace of the test's own (created on a dedicated
//! thread with `unshare(CLONE_NEWNET)`, so nothing appears on the host; needs root).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{
    FEATURE_GUEST_CSUM, FEATURE_GUEST_TSO4, FEATURE_MAC, FEATURE_MRG_RXBUF, FEATURE_MTU,
    FEATURE_STATUS,
};
use super::frame::{self, RxFill, TxDrop, TxRules, MAX_PACKET_LEN};
use super::tap::VNET_HDR_LEN;
use super::*;
use crate::devices::virtio::{
    chain, GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
};
use crate::devices::BusDevice;

const QSIZE: u16 = 16;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
/// An ethertype for local experiments (IEEE 802): nothing in the namespace sends it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// Runs `f` on a thread of its own in a new, empty network namespace.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare with CLONE_NEWNET changes only this thread's network namespace.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET) (needs root): {}",
            io::Error::last_os_error()
        );
        // No IPv6: it would send frames of its own once a link is up.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        f()
    })
    .join()
    .unwrap()
}

/// The interface index of `name` in the calling thread's namespace (0: no such interface).
fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether interface `name` disappears within a few seconds: a closed tap vanishes at once,
/// unless a process another test is forking holds a copy of its fd until it execs.
fn vanishes(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ifindex(name) != 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn link_up(name: &str) {
    let st = std::process::Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .unwrap();
    assert!(st.success(), "ip link set {name} up");
}

#[test]
fn a_tap_lives_only_in_its_namespace_and_vanishes_when_closed() {
    let name = "bhnet-t0";
    let (opened, host_checked) = (mpsc::channel(), mpsc::channel::<()>());
    let (tx_opened, rx_opened) = opened;
    let (tx_checked, rx_checked) = host_checked;
    let ns = std::thread::spawn(move || {
        in_netns(move || {
            let tap = Tap::open(name).unwrap();
            assert_eq!(tap.name(), name);
            assert_ne!(ifindex(name), 0);
            tx_opened.send(()).unwrap();
            rx_checked.recv().unwrap();
            drop(tap);
            assert!(vanishes(name), "the tap outlived its fd");
        })
    });
    rx_opened.recv().unwrap();
    assert_eq!(ifindex(name), 0, "the tap leaked into the host's namespace");
    tx_checked.send(()).unwrap();
    ns.join().unwrap();
    assert!(matches!(Tap::open(""), Err(TapError::Name(_))));
    assert!(matches!(Tap::open("a/b"), Err(TapError::Name(_))));
    assert!(matches!(
        Tap::open("sixteen-chars-xx"),
        Err(TapError::Name(_))
    ));
}

fn reg(t: &Arc<Mutex<MmioTransport>>, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.lock().unwrap().read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn set_reg(t: &Arc<Mutex<MmioTransport>>, offset: u64, value: u32) {
    t.lock().unwrap().write(offset, &value.to_le_bytes());
}

fn slot(mem: &GuestMemoryMmap, index: u8) -> NetSlot {
    let device = Arc::new(Mutex::new(NetDevice::new(index).unwrap()));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let transport = MmioTransport::new(mem.clone(), device.clone(), irq).unwrap();
    NetSlot {
        transport: Arc::new(Mutex::new(transport)),
        device,
        mmio_addr: 0xd000_0000,
        irq: 5,
    }
}

#[test]
fn an_empty_slot_is_device_id_0_until_a_tap_is_attached() {
    in_netns(|| {
        let mem = test_mem();
        let s = slot(&mem, 0);
        let t = &s.transport;
        assert_eq!(reg(t, 0x000), 0x7472_6976, "magic");
        assert_eq!(reg(t, 0x004), 2, "version");
        assert_eq!(reg(t, 0x008), 0, "device id of an empty slot");
        assert_eq!(reg(t, 0x010), 0, "features of an empty slot");
        // A driver that insists gets no further than FEATURES_OK refused.
        set_reg(t, 0x070, 1 | 2);
        set_reg(t, 0x024, 1);
        set_reg(t, 0x020, 1);
        set_reg(t, 0x070, 1 | 2 | 8);
        assert_eq!(reg(t, 0x070) & 8, 0);
        let mut config = [0xffu8; 12];
        t.lock().unwrap().read(0x100, &mut config);
        assert_eq!(config, [0; 12]);

        let slots = [s.clone()];
        let mut backend = NetBackend::new(Tap::open("bhnet-t1").unwrap(), MAC);
        backend.mtu = 9000;
        let info = attach(&slots, backend).unwrap();
        assert_eq!(info.device_name, "virtio-mmio.32");
        assert_eq!((info.slot, info.tap_name.as_str()), (0, "bhnet-t1"));
        assert_eq!(reg(t, 0x008), 1, "a net device once attached");
        assert_eq!(
            reg(t, 0x070),
            0,
            "the guest's writes to the empty slot are forgotten"
        );
        let low = u64::from(reg(t, 0x010));
        set_reg(t, 0x014, 1);
        let features = low | u64::from(reg(t, 0x010)) << 32;
        for f in [
            FEATURE_VERSION_1,
            FEATURE_EVENT_IDX,
            FEATURE_MAC,
            FEATURE_MTU,
            FEATURE_STATUS,
            FEATURE_MRG_RXBUF,
            FEATURE_GUEST_CSUM,
            FEATURE_GUEST_TSO4,
        ] {
            assert_ne!(features & f, 0, "feature {f:#x} missing from {features:#x}");
        }
        t.lock().unwrap().read(0x100, &mut config);
        assert_eq!(&config[..6], &MAC);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1, "link up");
        assert_eq!(
            u16::from_le_bytes([config[8], config[9]]),
            1,
            "one queue pair"
        );
        assert_eq!(u16::from_le_bytes([config[10], config[11]]), 9000, "mtu");
        // Negotiation now succeeds.
        set_reg(t, 0x070, 1 | 2);
        set_reg(t, 0x024, 0);
        set_reg(t, 0x020, low as u32);
        set_reg(t, 0x024, 1);
        set_reg(t, 0x020, 1);
        set_reg(t, 0x070, 1 | 2 | 8);
        assert_eq!(reg(t, 0x070) & 8, 8);

        let again = NetBackend::new(Tap::open("bhnet-t2").unwrap(), MAC);
        assert!(matches!(
            attach(&slots, again),
            Err(NetError::NoFreeSlot(1))
        ));
        let free = [slot(&mem, 1)];
        let mut bad = NetBackend::new(Tap::open("bhnet-t3").unwrap(), MAC);
        bad.mtu = 67;
        assert!(matches!(attach(&free, bad), Err(NetError::Mtu(67))));
        let multicast = NetBackend::new(Tap::open("bhnet-t4").unwrap(), [1, 0, 0, 0, 0, 1]);
        assert!(matches!(attach(&free, multicast), Err(NetError::Mac(_))));
        assert!(!free[0].device.lock().unwrap().is_attached());
    });
}

#[test]
fn rx_interrupts_follow_the_drivers_used_event() {
    use super::device::need_event;
    // The driver wants an interrupt once entry `event` is used: moving 0 → 3 passes 2, not 3.
    assert!(need_event(2, 3, 0));
    assert!(!need_event(3, 3, 0));
    assert!(need_event(0, 1, 0));
    // Nothing used since the last check: never.
    assert!(!need_event(5, 5, 5));
    // Already signalled past it (the driver has not moved it): no second interrupt.
    assert!(!need_event(2, 6, 4));
    // Across the wrap of the 16-bit index.
    assert!(need_event(u16::MAX, 2, u16::MAX - 1));
    assert!(!need_event(1, 1, u16::MAX));
}

#[test]
fn mac_addresses_parse_strictly() {
    assert_eq!(parse_mac("02:00:00:00:00:42").unwrap(), MAC);
    for bad in [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:42:00",
        "2:00:00:00:00:42",
        "zz:00:00:00:00:00",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?}");
    }
}

/// Writes descriptors (addr, len, flags) linked in order at `table` and parses the chain.
fn chain_of(
    mem: &GuestMemoryMmap,
    bufs: &[(u64, u32, u16)],
) -> Result<chain::Chain, chain::ChainError> {
    let table = 0x8000u64;
    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
        let next = if i + 1 < bufs.len() {
            VRING_DESC_F_NEXT as u16
        } else {
            0
        };
        let d = Descriptor::new(addr, len, flags | next, i as u16 + 1);
        mem.write_obj(d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    chain::parse(mem, GuestAddress(table), QSIZE, 0, false)
}

#[test]
fn tx_chains_are_bounded_and_checked() {
    let mem = test_mem();
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    let all = TxRules {
        csum: true,
        tso4: true,
    };
    let w = VRING_DESC_F_WRITE as u16;
    // A frame split over three buffers comes out whole.
    mem.write_slice(&[7u8; 100], GuestAddress(0x1_0000))
        .unwrap();
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(0x1_0000))
        .unwrap();
    let c = chain_of(
        &mem,
        &[(0x1_0000, 4, 0), (0x1_0004, 10, 0), (0x1_000e, 86, 0)],
    )
    .unwrap();
    assert_eq!(frame::read_tx(&mem, &c, all, &mut buf), Ok(100));
    assert!(buf[VNET_HDR_LEN..100].iter().all(|&b| b == 7));
    // Shorter than a header, a writable buffer, longer than any frame.
    let short = chain_of(&mem, &[(0x1_0000, 11, 0)]).unwrap();
    assert_eq!(
        frame::read_tx(&mem, &short, all, &mut buf),
        Err(TxDrop::Short)
    );
    let writable = chain_of(&mem, &[(0x1_0000, 50, 0), (0x2_0000, 50, w)]).unwrap();
    assert_eq!(
        frame::read_tx(&mem, &writable, all, &mut buf),
        Err(TxDrop::Writable)
    );
    let len = MAX_PACKET_LEN as u32 / 2 + 1;
    let long = chain_of(&mem, &[(0x10_0000, len, 0), (0x20_0000, len, 0)]).unwrap();
    assert_eq!(
        frame::read_tx(&mem, &long, all, &mut buf),
        Err(TxDrop::Long)
    );
    // 4 GiB of chain is a structural error, caught before us.
    assert!(chain_of(&mem, &[(0, u32::MAX, 0), (0, u32::MAX, 0)]).is_err());
    // Offloads the guest did not negotiate; an unknown GSO type.
    mem.write_slice(&[1, 0], GuestAddress(0x1_0000)).unwrap();
    let c = chain_of(&mem, &[(0x1_0000, 100, 0)]).unwrap();
    assert_eq!(
        frame::read_tx(&mem, &c, TxRules::default(), &mut buf),
        Err(TxDrop::Offload)
    );
    assert_eq!(frame::read_tx(&mem, &c, all, &mut buf), Ok(100));
    mem.write_slice(&[1, 1], GuestAddress(0x1_0000)).unwrap();
    let tso_off = TxRules {
        csum: true,
        tso4: false,
    };
    assert_eq!(
        frame::read_tx(&mem, &c, tso_off, &mut buf),
        Err(TxDrop::Offload)
    );
    mem.write_slice(&[1, 4], GuestAddress(0x1_0000)).unwrap();
    assert_eq!(
        frame::read_tx(&mem, &c, all, &mut buf),
        Err(TxDrop::Offload)
    );
}

#[test]
fn rx_frames_fill_buffers_in_order_or_are_refused() {
    let mem = test_mem();
    let w = VRING_DESC_F_WRITE as u16;
    let mut packet: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    packet[10] = 0xee;
    // One buffer too small: refused, nothing written.
    let small = chain_of(&mem, &[(0x1_0000, 1500, w)]).unwrap();
    mem.write_slice(&[0u8; 1500], GuestAddress(0x1_0000))
        .unwrap();
    assert_eq!(
        frame::write_rx(&mem, std::slice::from_ref(&small), &mut packet.clone()),
        Err(RxFill::NeedMore)
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1_0001)).unwrap(), 0);
    // A first buffer that cannot hold the header.
    let tiny = chain_of(&mem, &[(0x1_0000, VNET_HDR_LEN as u32 - 1, w)]).unwrap();
    let big = chain_of(&mem, &[(0x2_0000, 4000, w)]).unwrap();
    assert_eq!(
        frame::write_rx(&mem, &[tiny, big.clone()], &mut packet.clone()),
        Err(RxFill::NeedMore)
    );
    // Two buffers (MRG_RXBUF): spread in order, num_buffers = 2.
    let first = chain_of(&mem, &[(0x1_0000, 1000, w), (0x1_1000, 500, w)]).unwrap();
    let used = frame::write_rx(&mem, &[first, big], &mut packet).unwrap();
    assert_eq!(used, vec![1500, 1500]);
    let mut out = vec![0u8; 3000];
    mem.read_slice(&mut out[..1000], GuestAddress(0x1_0000))
        .unwrap();
    mem.read_slice(&mut out[1000..1500], GuestAddress(0x1_1000))
        .unwrap();
    mem.read_slice(&mut out[1500..], GuestAddress(0x2_0000))
        .unwrap();
    assert_eq!(u16::from_le_bytes([out[10], out[11]]), 2, "num_buffers");
    assert_eq!(&out[12..], &packet[12..]);
}

/// A guest queue driven from the driver side.
struct DriverQueue<'m> {
    mock: MockSplitQueue<'m, GuestMemoryMmap>,
    next_desc: u16,
    last_used: u16,
}

impl<'m> DriverQueue<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        Self {
            mock: MockSplitQueue::create(mem, GuestAddress(base), QSIZE),
            next_desc: 0,
            last_used: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q: Queue = self.mock.create_queue().unwrap();
        q.set_event_idx(true);
        q
    }

    fn add(&mut self, addr: u64, len: u32, flags: u16) {
        let head = self.next_desc;
        let d = Descriptor::new(addr, len, flags, 0);
        self.mock
            .desc_table()
            .store(head, RawDescriptor::from(d))
            .unwrap();
        self.next_desc = (head + 1) % QSIZE;
        let idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    fn take_used(&mut self) -> Vec<(u16, u32)> {
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
}

/// An AF_PACKET socket on interface `index`: the host's view of the tap's wire.
fn packet_socket(index: u32) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call; the fd is checked and owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
    fd
}

fn test_frame(src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len - 14).map(|i| (i % 251) as u8));
    f
}

#[test]
fn frames_cross_the_tap_both_ways_and_a_frame_waits_for_rx_buffers() {
    in_netns(|| {
        let mem = test_mem();
        let name = "bhnet-t5";
        let dev = Arc::new(Mutex::new(NetDevice::new(0).unwrap()));
        dev.lock()
            .unwrap()
            .attach(NetBackend::new(Tap::open(name).unwrap(), MAC))
            .unwrap();
        link_up(name);
        let sock = packet_socket(ifindex(name));
        let mut em = EventManager::<Arc<Mutex<NetDevice>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut rxq = DriverQueue::new(&mem, 0);
        let mut txq = DriverQueue::new(&mem, 0x1_0000);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let features =
            FEATURE_VERSION_1 | FEATURE_EVENT_IDX | FEATURE_MRG_RXBUF | FEATURE_GUEST_CSUM;
        dev.lock()
            .unwrap()
            .activate(
                mem.clone(),
                vec![rxq.queue(), txq.queue()],
                features,
                interrupt,
            )
            .unwrap();
        let kick = |q: usize| dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        let run = |em: &mut EventManager<_>| {
            for _ in 0..5 {
                em.run_with_timeout(20).unwrap();
            }
        };
        run(&mut em);

        // Guest → host.
        let out = test_frame(MAC, 300);
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(&out);
        mem.write_slice(&packet, GuestAddress(0x4_0000)).unwrap();
        txq.add(0x4_0000, packet.len() as u32, 0);
        kick(1);
        run(&mut em);
        assert_eq!(txq.take_used(), vec![(0, 0)]);
        let mut got = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: `got` is valid for its length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), got.as_mut_ptr().cast(), got.len(), 0) };
            if n > 0 && got[12..14] == ETHERTYPE {
                assert_eq!(&got[..n as usize], &out[..]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the guest's frame never reached the wire"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        // Host → guest with no RX buffer: the frame waits, nothing is dropped.
        let inbound = test_frame([2, 0, 0, 0, 0, 1], 1400);
        // SAFETY: `inbound` is valid for its length.
        let n = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
        assert_eq!(
            n,
            inbound.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
        run(&mut em);
        let m = dev.lock().unwrap().metrics().snapshot();
        assert_eq!((m.rx_packets, m.rx_too_big), (0, 0));
        // One 1 KiB buffer is not room enough: the frame keeps waiting, and the device asks for
        // a kick when the driver posts past it instead of retrying the buffer it has (which
        // spun the event loop for ever). A watchdog turns a spin into a failure.
        let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = returned.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !watch.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("virtio-net RX spins on too few buffers");
                std::process::abort();
            }
        });
        rxq.add(0x5_0000, 1024, VRING_DESC_F_WRITE as u16);
        kick(0);
        run(&mut em);
        returned.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(rxq.take_used(), vec![]);
        let used_ring = rxq.mock.used().start();
        let avail_event: u16 = mem
            // `start()` is the ring array (after flags and idx); avail_event follows it.
            .read_obj(GuestAddress(used_ring.0 + 8 * u64::from(QSIZE)))
            .unwrap();
        assert_eq!(avail_event, 1, "a kick is asked for past the posted buffer");
        // A second buffer: the frame is spread over both.
        rxq.add(0x6_0000, 1024, VRING_DESC_F_WRITE as u16);
        kick(0);
        run(&mut em);
        let used = rxq.take_used();
        assert_eq!(
            used,
            vec![(0, 1024), (1, (VNET_HDR_LEN + 1400 - 1024) as u32)]
        );
        let mut data = vec![0u8; 2048];
        mem.read_slice(&mut data[..1024], GuestAddress(0x5_0000))
            .unwrap();
        mem.read_slice(&mut data[1024..], GuestAddress(0x6_0000))
            .unwrap();
        assert_eq!(u16::from_le_bytes([data[10], data[11]]), 2, "num_buffers");
        assert_eq!(&data[VNET_HDR_LEN..VNET_HDR_LEN + 1400], &inbound[..]);
        assert!(irq.read().unwrap() >= 1, "no interrupt");
        let m = dev.lock().unwrap().metrics().snapshot();
        assert_eq!((m.tx_packets, m.rx_packets, m.rx_buffers), (1, 1, 2));
        assert_eq!((m.tx_malformed, m.tx_tap_errors, m.rx_too_big), (0, 0, 0));

        // A guest frame too short for a header is dropped and its chain returned.
        txq.add(0x4_0000, 5, 0);
        kick(1);
        run(&mut em);
        assert_eq!(txq.take_used().len(), 1);
        assert_eq!(dev.lock().unwrap().metrics().snapshot().tx_malformed, 1);
        drop(em);
        drop(dev);
        assert!(vanishes(name), "the tap outlived its device");
    });
}

#[test]
fn empty_slots_round_trip_through_a_snapshot_and_take_a_tap_after_restore() {
    use crate::layout::{virtio_mmio_slot, VIRTIO_IRQ_BASE};
    use crate::snapshot::format::{decode, encode};
    use crate::snapshot::state::{DeviceState, Invalid, VirtioSlotState, VmSnapshot};
    in_netns(|| {
        let mem = test_mem();
        let saved_slots = [slot(&mem, 0), slot(&mem, 1)];
        // A guest poking at an empty slot changes nothing a restore would refuse.
        set_reg(&saved_slots[0].transport, 0x070, 1 | 2);
        let mut snap = VmSnapshot::sample();
        for s in &saved_slots {
            let i = snap.virtio.len() as u64;
            let index = s.device.lock().unwrap().index();
            snap.virtio.push(VirtioSlotState {
                index: i,
                addr: virtio_mmio_slot(i),
                irq: VIRTIO_IRQ_BASE + i as u32,
                transport: s.transport.lock().unwrap().save_state(),
                device: DeviceState::Net { index },
            });
        }
        let back = decode(&encode(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        back.validate(4).unwrap();
        // NIC slots keep their numbers (they name the guest's devices).
        let mut swapped = back.clone();
        let n = swapped.virtio.len();
        swapped.virtio[n - 1].device = DeviceState::Net { index: 0 };
        assert_eq!(swapped.validate(4), Err(Invalid("nic slot numbers")));

        let restored = [slot(&mem, 0), slot(&mem, 1)];
        for (s, saved) in restored.iter().zip(&back.virtio[n - 2..]) {
            let start = vec![Default::default(); saved.transport.queues.len()];
            s.transport
                .lock()
                .unwrap()
                .restore_state(&saved.transport, &start)
                .unwrap();
            assert_eq!(reg(&s.transport, 0x008), 0);
        }
        let info = attach(
            &restored,
            NetBackend::new(Tap::open("bhnet-t6").unwrap(), MAC),
        )
        .unwrap();
        assert_eq!(info.device_name, "virtio-mmio.32");
        assert_eq!(reg(&restored[0].transport, 0x008), 1);
        assert_eq!(reg(&restored[0].transport, 0x070), 0);

        // An attached slot's registers never restore into an empty one.
        let attached = restored[0].transport.lock().unwrap().save_state();
        let fresh = slot(&mem, 0);
        let start = vec![Default::default(); 2];
        assert!(fresh
            .transport
            .lock()
            .unwrap()
            .restore_state(&attached, &start)
            .is_err());
    });
}

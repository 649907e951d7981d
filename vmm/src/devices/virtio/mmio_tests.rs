//! Register-level tests of the transport, driven the way Linux's virtio_mmio driver drives it.

use super::*;
use crate::devices::virtio::{INTERRUPT_CONFIG, INTERRUPT_USED};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const FEATURE_X: u64 = 1 << 5;

/// A device that records what the transport does to it.
struct Fake {
    sizes: Vec<u16>,
    events: Vec<EventFd>,
    activated: Option<(Vec<Queue>, u64)>,
    resets: u32,
    fail_activation: bool,
    config: [u8; 8],
}

impl Fake {
    fn new(queues: usize) -> Self {
        Self {
            sizes: vec![16; queues],
            events: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            activated: None,
            resets: 0,
            fail_activation: false,
            config: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
        }
    }
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1 | FEATURE_EVENT_IDX | FEATURE_X
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.events
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        _interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.activated = Some((queues, features));
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.activated = None;
    }
}

struct Setup {
    dev: Arc<Mutex<Fake>>,
    t: MmioTransport,
    irq: EventFd,
}

fn setup(queues: usize) -> Setup {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Fake::new(queues)));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(mem, dev.clone(), irq.try_clone().unwrap()).unwrap();
    Setup { dev, t, irq }
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn set_features(t: &mut MmioTransport, features: u64) {
    w(t, REG_DRIVER_FEATURES_SEL, 0);
    w(t, REG_DRIVER_FEATURES, features as u32);
    w(t, REG_DRIVER_FEATURES_SEL, 1);
    w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
}

/// Configures queue `i` of size `size` at `base` (desc, avail, used one page apart).
fn setup_queue(t: &mut MmioTransport, i: u32, size: u32, base: u64) {
    w(t, REG_QUEUE_SEL, i);
    assert_eq!(r(t, REG_QUEUE_READY), 0);
    w(t, REG_QUEUE_NUM, size);
    w(t, REG_QUEUE_DESC_LOW, base as u32);
    w(t, REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
    w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, REG_QUEUE_DRIVER_HIGH, 0);
    w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, REG_QUEUE_DEVICE_HIGH, 0);
    w(t, REG_QUEUE_READY, 1);
}

fn drive_to_features_ok(t: &mut MmioTransport, features: u64) {
    w(t, REG_STATUS, 0);
    w(t, REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(
        t,
        REG_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    set_features(t, features);
    w(
        t,
        REG_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
}

const S_ALL: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;

#[test]
fn identifies_itself() {
    let mut s = setup(2);
    assert_eq!(r(&mut s.t, REG_MAGIC), 0x7472_6976);
    assert_eq!(r(&mut s.t, REG_VERSION), 2);
    assert_eq!(r(&mut s.t, REG_DEVICE_ID), 19);
    w(&mut s.t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(
        r(&mut s.t, REG_DEVICE_FEATURES),
        (FEATURE_EVENT_IDX | FEATURE_X) as u32
    );
    w(&mut s.t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut s.t, REG_DEVICE_FEATURES), 1);
    w(&mut s.t, REG_DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut s.t, REG_DEVICE_FEATURES), 0);
    w(&mut s.t, REG_QUEUE_SEL, 1);
    assert_eq!(r(&mut s.t, REG_QUEUE_NUM_MAX), 16);
    w(&mut s.t, REG_QUEUE_SEL, 2);
    assert_eq!(r(&mut s.t, REG_QUEUE_NUM_MAX), 0);
    assert_eq!(r(&mut s.t, REG_SHM_LEN_LOW), u32::MAX);
    // Config space at any width, out of range reads zero.
    let mut b = [0u8; 2];
    s.t.read(CONFIG_OFFSET + 6, &mut b);
    assert_eq!(b, [7, 8]);
    s.t.read(CONFIG_OFFSET + 7, &mut b);
    assert_eq!(b, [8, 0]);
    // Registers only answer aligned 32-bit accesses.
    let mut b = [0xffu8; 2];
    s.t.read(REG_MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    s.t.read(REG_MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn full_handshake_activates_with_the_configured_queues() {
    let mut s = setup(2);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
    assert_eq!(
        r(&mut s.t, REG_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        VIRTIO_CONFIG_S_FEATURES_OK
    );
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    setup_queue(&mut s.t, 1, 16, 0x2_0000);
    assert_eq!(r(&mut s.t, REG_QUEUE_READY), 1);
    assert!(s.dev.lock().unwrap().activated.is_none());
    w(&mut s.t, REG_STATUS, S_ALL);
    assert_eq!(r(&mut s.t, REG_STATUS), S_ALL);

    let dev = s.dev.lock().unwrap();
    let (queues, features) = dev.activated.as_ref().unwrap();
    assert_eq!(*features, FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
    assert_eq!(queues.len(), 2);
    assert_eq!(queues[0].size(), 8);
    assert_eq!(queues[0].desc_table(), 0x1_0000);
    assert_eq!(queues[0].avail_ring(), 0x1_1000);
    assert_eq!(queues[0].used_ring(), 0x1_2000);
    assert_eq!(queues[1].size(), 16);
    assert!(queues.iter().all(|q| q.ready() && q.event_idx_enabled()));
}

#[test]
fn queue_registers_are_locked_outside_setup() {
    let mut s = setup(1);
    // Before FEATURES_OK: ignored.
    w(&mut s.t, REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(&mut s.t, REG_QUEUE_SEL, 0);
    w(&mut s.t, REG_QUEUE_READY, 1);
    assert_eq!(r(&mut s.t, REG_QUEUE_READY), 0);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    // Ready queue: address writes ignored.
    w(&mut s.t, REG_QUEUE_DESC_LOW, 0x5_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    // After DRIVER_OK: ignored, and QueueReady cannot be cleared.
    w(&mut s.t, REG_QUEUE_NUM, 4);
    w(&mut s.t, REG_QUEUE_READY, 0);
    assert_eq!(r(&mut s.t, REG_QUEUE_READY), 1);
    let dev = s.dev.lock().unwrap();
    let (queues, _) = dev.activated.as_ref().unwrap();
    assert_eq!((queues[0].size(), queues[0].desc_table()), (8, 0x1_0000));
}

#[test]
fn invalid_queues_are_refused_with_needs_reset() {
    for (size, base) in [
        (6, 0x1_0000),        // not a power of two
        (32, 0x1_0000),       // above the maximum
        (0, 0x1_0000),        // zero
        (0x1_0008, 0x1_0000), // above u16
        (8, 0xf_f000),        // avail/used rings past the end of memory
        (8, 0x1_0004),        // descriptor table misaligned
    ] {
        let mut s = setup(1);
        drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
        setup_queue(&mut s.t, 0, size, base);
        assert_eq!(
            r(&mut s.t, REG_QUEUE_READY),
            0,
            "size {size} base {base:#x}"
        );
        assert_ne!(r(&mut s.t, REG_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(r(&mut s.t, REG_INTERRUPT_STATUS), INTERRUPT_CONFIG);
        assert_eq!(s.irq.read().unwrap(), 1);
        // Reset clears the error.
        w(&mut s.t, REG_STATUS, 0);
        assert_eq!(r(&mut s.t, REG_STATUS), 0);
        assert_eq!(r(&mut s.t, REG_INTERRUPT_STATUS), 0);
    }
}

#[test]
fn feature_negotiation() {
    // An unoffered feature or a legacy (no VERSION_1) driver: FEATURES_OK stays clear.
    for features in [FEATURE_VERSION_1 | (1 << 40), FEATURE_X] {
        let mut s = setup(1);
        drive_to_features_ok(&mut s.t, features);
        assert_eq!(
            r(&mut s.t, REG_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
    }
    // Features cannot change after FEATURES_OK.
    let mut s = setup(1);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
    set_features(&mut s.t, FEATURE_VERSION_1 | FEATURE_X);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    assert_eq!(
        s.dev.lock().unwrap().activated.as_ref().unwrap().1,
        FEATURE_VERSION_1
    );
}

#[test]
fn status_bits_only_move_forward_in_order() {
    let mut s = setup(1);
    // DRIVER without ACKNOWLEDGE, DRIVER_OK without FEATURES_OK: ignored.
    w(&mut s.t, REG_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(r(&mut s.t, REG_STATUS), 0);
    w(&mut s.t, REG_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(
        &mut s.t,
        REG_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    // DRIVER is accepted, DRIVER_OK is not (FEATURES_OK missing).
    assert_eq!(r(&mut s.t, REG_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(
        &mut s.t,
        REG_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    // Clearing a bit without a reset is ignored.
    w(&mut s.t, REG_STATUS, VIRTIO_CONFIG_S_DRIVER);
    assert_eq!(
        r(&mut s.t, REG_STATUS),
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
    );
    // FAILED sticks and blocks progress until reset.
    w(
        &mut s.t,
        REG_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FAILED,
    );
    set_features(&mut s.t, FEATURE_VERSION_1);
    w(&mut s.t, REG_STATUS, 0x8f);
    assert_eq!(r(&mut s.t, REG_STATUS), 0x83);
    assert!(s.dev.lock().unwrap().activated.is_none());
}

#[test]
fn activation_without_ready_queues_or_failing_device_needs_reset() {
    let mut s = setup(1);
    s.dev.lock().unwrap().fail_activation = true;
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    assert_eq!(r(&mut s.t, REG_STATUS), S_ALL | VIRTIO_CONFIG_S_NEEDS_RESET);
}

#[test]
fn reset_clears_everything_and_resets_the_device() {
    let mut s = setup(1);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    s.t.interrupt().signal_used().unwrap();
    assert_eq!(r(&mut s.t, REG_INTERRUPT_STATUS), INTERRUPT_USED);
    w(&mut s.t, REG_STATUS, 0);
    assert_eq!(r(&mut s.t, REG_STATUS), 0);
    assert_eq!(r(&mut s.t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(r(&mut s.t, REG_QUEUE_READY), 0);
    let dev = s.dev.lock().unwrap();
    assert!(dev.activated.is_none());
    // One reset starts the handshake (as Linux does), one ends it.
    assert_eq!(dev.resets, 2);
}

#[test]
fn interrupt_status_and_ack() {
    let s = setup(1);
    let mut t = s.t;
    t.interrupt().signal_used().unwrap();
    t.interrupt().set_needs_reset();
    assert_eq!(
        r(&mut t, REG_INTERRUPT_STATUS),
        INTERRUPT_USED | INTERRUPT_CONFIG
    );
    assert_eq!(s.irq.read().unwrap(), 2);
    w(&mut t, REG_INTERRUPT_ACK, INTERRUPT_USED);
    assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INTERRUPT_CONFIG);
    assert_eq!(t.interrupt().raised(), 2);
}

#[test]
fn a_restored_status_the_driver_has_not_acknowledged_raises_the_line_again() {
    let s = setup(1);
    let t = s.t;
    // Nothing pending: no interrupt.
    t.interrupt().restore(0, false);
    t.interrupt().raise_if_pending().unwrap();
    assert!(s.irq.read().is_err(), "no interrupt for an empty status");
    // A raise whose injection the saved interrupt controller may have missed.
    t.interrupt().restore(INTERRUPT_USED, false);
    assert!(s.irq.read().is_err(), "restore alone raises nothing");
    t.interrupt().raise_if_pending().unwrap();
    assert_eq!(s.irq.read().unwrap(), 1);
    assert_eq!(
        t.interrupt().status(),
        INTERRUPT_USED,
        "the status stays for the driver"
    );
}

#[test]
fn notify_reaches_the_queue_eventfd() {
    let mut s = setup(2);
    w(&mut s.t, NOTIFY_OFFSET, 1);
    w(&mut s.t, NOTIFY_OFFSET, 1);
    w(&mut s.t, NOTIFY_OFFSET, 7);
    let dev = s.dev.lock().unwrap();
    assert_eq!(dev.events[1].read().unwrap(), 2);
    assert!(dev.events[0].read().is_err());
    assert_eq!(s.t.metrics().notify_writes.load(Ordering::Relaxed), 3);
    assert_eq!(s.t.queue_events().len(), 2);
}

#[test]
fn hostile_register_writes_never_panic() {
    let mut s = setup(2);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x >> 8) % 0x140;
        let val = (x >> 32) as u32;
        let len = [1usize, 2, 4, 8][(x & 3) as usize];
        if x & 0x10 == 0 {
            s.t.write(off, &val.to_le_bytes().repeat(2)[..len]);
        } else {
            let mut b = vec![0u8; len];
            s.t.read(off, &mut b);
        }
    }
}

#[test]
fn state_saved_from_a_running_driver_reactivates_a_new_transport_at_its_positions() {
    let mut s = setup(2);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    setup_queue(&mut s.t, 1, 16, 0x2_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    s.t.interrupt().restore(INTERRUPT_USED, false);
    let saved = s.t.save_state();
    assert_eq!(saved.status, S_ALL);
    assert_eq!(saved.queues[1].size, 16);

    let mut c = setup(2);
    let positions = [
        QueuePosition {
            next_avail: 3,
            next_used: 2,
        },
        QueuePosition {
            next_avail: 7,
            next_used: 7,
        },
    ];
    c.t.restore_state(&saved, &positions).unwrap();
    assert_eq!(c.t.save_state(), saved);
    assert_eq!(r(&mut c.t, REG_STATUS), S_ALL);
    assert_eq!(r(&mut c.t, REG_INTERRUPT_STATUS), INTERRUPT_USED);
    let dev = c.dev.lock().unwrap();
    let (queues, features) = dev.activated.as_ref().expect("reactivated");
    assert_eq!(*features, FEATURE_VERSION_1 | FEATURE_EVENT_IDX);
    assert_eq!(queues[0].next_avail(), 3);
    assert_eq!(queues[0].next_used(), 2);
    assert_eq!(queues[1].size(), 16);
    assert_eq!(queues[1].next_avail(), 7);
    drop(dev);
    drop(s.irq);
}

#[test]
fn restore_refuses_state_that_does_not_fit() {
    let mut s = setup(2);
    drive_to_features_ok(&mut s.t, FEATURE_VERSION_1);
    setup_queue(&mut s.t, 0, 8, 0x1_0000);
    setup_queue(&mut s.t, 1, 8, 0x2_0000);
    w(&mut s.t, REG_STATUS, S_ALL);
    let good = s.t.save_state();
    let pos = [QueuePosition::default(); 2];
    let refuse = |edit: &dyn Fn(&mut TransportState), positions: &[QueuePosition]| {
        let mut state = good.clone();
        edit(&mut state);
        let mut c = setup(2);
        assert!(matches!(
            c.t.restore_state(&state, positions),
            Err(MmioError::BadState(_))
        ));
        assert!(c.dev.lock().unwrap().activated.is_none(), "nothing applied");
        assert_eq!(r(&mut c.t, REG_STATUS), 0, "nothing applied");
    };
    refuse(&|st| st.device_type = 26, &pos);
    refuse(&|st| st.queues.pop().map_or((), drop), &pos);
    refuse(&|st| st.status |= VIRTIO_CONFIG_S_NEEDS_RESET, &pos);
    refuse(&|st| st.driver_features |= 1 << 40, &pos);
    refuse(&|st| st.interrupt_status = 4, &pos);
    refuse(&|st| st.queues[0].size = 9, &pos);
    refuse(&|st| st.queues[1].device = 0xff_f000, &pos);
    refuse(&|st| st.queues[0].desc = u64::MAX - 4, &pos);
    refuse(&|_| {}, &pos[..1]);
}

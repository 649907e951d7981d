//! Virtio devices and the virtio-mmio transport they sit behind.
//!
//! The split follows the spec's own layering:
//! - [`mmio::MmioTransport`] is the register window the guest sees (a [`super::BusDevice`]); it
//!   runs the status state machine, negotiates features, collects the queue configuration and
//!   hands finished [`Queue`]s to the device when the driver says DRIVER_OK;
//! - a [`VirtioDevice`] (one folder per device, e.g. [`vsock`]) owns its queues once activated
//!   and does its work on the event loop thread, woken by one eventfd per queue;
//! - [`Interrupt`] is the only thing both share after activation: the interrupt-status register
//!   and the irqfd that raises the device's IRQ line.
//!
//! Everything in a queue is written by the guest, so [`chain`] re-validates every descriptor
//! chain before a device touches the buffers it names.

pub mod chain;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};

/// Guest memory as the devices see it. One alias so a change of backend is a one-line change.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: the modern (virtio 1.x) interface; the only one we speak.
pub const FEATURE_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event`/`avail_event` notification suppression.
pub const FEATURE_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables.
pub const FEATURE_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Interrupt-status bit: a queue has new used buffers.
pub const INTERRUPT_USED: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt-status bit: the configuration (or DEVICE_NEEDS_RESET) changed.
pub const INTERRUPT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a different set of queues than the device needs.
    #[error("device needs {expected} ready queues, driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    /// A queue the device needs was not made ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The transport could not rebuild a queue from its registers.
    #[error("queue {0} configuration is invalid")]
    InvalidQueue(usize),
    /// The device has no backend (an empty NIC slot).
    #[error("device has no backend")]
    NoBackend,
    /// Waking the device's event loop failed.
    #[error("cannot signal the device thread")]
    Signal(#[source] io::Error),
}

/// A virtio device behind a transport.
///
/// Called from vCPU threads (through the transport, with the transport's lock held and then the
/// device's) for configuration, and from the event loop for the actual work. Lock order is
/// always transport → device; a device never reaches back into its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the slice's length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers, transport bits (`VIRTIO_F_VERSION_1`, ring features)
    /// included.
    fn avail_features(&self) -> u64;

    /// One eventfd per queue, written on every guest notification of that queue (by an
    /// ioeventfd in KVM, or by the transport when a notify write reaches it).
    fn queue_events(&self) -> &[EventFd];

    /// Reads `data.len()` bytes of the device-specific configuration space at `offset`.
    /// Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space. The default ignores the write: most
    /// devices have a read-only configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Starts the device after the driver set DRIVER_OK. `queues` has one entry per queue in
    /// [`Self::queue_max_sizes`] order, event-index mode already set from `features`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        features: u64,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;

    /// Stops the device and forgets the driver's state (status register written with 0). Must
    /// not block; work that needs the event loop (closing backends) may be deferred to it.
    fn reset(&mut self);
}

/// The interrupt line of one device and its interrupt-status register.
///
/// Shared by the transport (which reads and acknowledges the status from vCPU threads) and the
/// device (which raises interrupts from the event loop), so all state is atomic.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
    raised: AtomicU64,
}

impl Interrupt {
    /// Wraps `irq`, an eventfd registered as the device's irqfd (or read by a test).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
            raised: AtomicU64::new(0),
        }
    }

    /// The eventfd behind the interrupt line (the irqfd).
    pub fn event(&self) -> &EventFd {
        &self.irq
    }

    /// Tells the driver that a queue has new used buffers.
    pub fn signal_used(&self) -> io::Result<()> {
        self.raise(INTERRUPT_USED)
    }

    /// Marks the device broken (DEVICE_NEEDS_RESET in the status register) and tells the driver
    /// with a configuration-change interrupt, as the spec asks.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.raise(INTERRUPT_CONFIG) {
                tracing::warn!("virtio: cannot raise config interrupt: {e}");
            }
        }
    }

    /// Whether the device has declared itself broken since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The interrupt-status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged the bits in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// How many times the interrupt line was raised: each one costs the guest an interrupt
    /// plus a status read and an acknowledge, i.e. at least three exits.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// Sets the status register and the broken flag saved in a snapshot, without raising the
    /// line ([`Self::raise_if_pending`] does, once the interrupt controller is restored).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Raises the line again if the status register has a bit the driver has not
    /// acknowledged; for a restored VM, after its interrupt controller and LAPICs are (setting
    /// them would overwrite an interrupt injected earlier). The restored controller may not
    /// have that interrupt: KVM injects an irqfd routed to an IOAPIC pin from a kernel work
    /// item after the eventfd write, so a raise just before the pause can be in the saved
    /// status register but not yet in the saved IOAPIC or LAPIC, and the guest would wait for
    /// it for ever. A second interrupt for a status the driver already handled reads as nothing
    /// to do (Linux's virtio-mmio handler returns IRQ_NONE).
    pub fn raise_if_pending(&self) -> io::Result<()> {
        if self.status() == 0 {
            return Ok(());
        }
        self.raised.fetch_add(1, Ordering::Relaxed);
        self.irq.write(1)
    }

    /// Clears the status register and the broken flag (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.raised.fetch_add(1, Ordering::Relaxed);
        self.irq.write(1)
    }
}

/// A queue the driver broke (malformed ring or chain): the device stops using it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Reading or writing the rings failed, or the available index jumped too far.
    #[error("queue ring access failed")]
    Ring(#[source] virtio_queue::Error),
    /// A descriptor chain failed validation.
    #[error("malformed descriptor chain")]
    Chain(#[from] chain::ChainError),
}

/// Copies `config[offset..]` into `data` for a guest read of a device's config space; bytes past
/// the end (or an offset the guest made up) read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}

/// Takes the head index of the next available chain, if any.
///
/// Unlike `Queue::pop_descriptor_chain`, this reports a corrupt available index instead of
/// treating it as an empty queue, so the device can declare itself broken rather than stall.
pub fn pop_avail(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<Option<u16>, QueueError> {
    let mut iter = queue.iter(mem).map_err(QueueError::Ring)?;
    Ok(iter.next().map(|chain| chain.head_index()))
}

/// Puts a popped-but-unused chain back at the head of the available ring.
pub fn unpop_avail(queue: &mut Queue) {
    queue.go_to_previous_position();
}

/// Drains a queue's notification eventfd and returns how many notifications it counted
/// (each is one guest exit; an eventfd sums the writes it got since the last read).
pub fn drain_event(evt: &EventFd) -> u64 {
    match evt.read() {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => {
            tracing::warn!("virtio: cannot read queue eventfd: {e}");
            0
        }
    }
}

/// Returns true if the driver must be interrupted for the used buffers added since the last
/// call (always true without EVENT_IDX).
pub fn needs_interrupt(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
    queue.needs_notification(mem).map_err(QueueError::Ring)
}

//! The virtio-mmio transport, modern register layout (version 2, virtio 1.x spec 4.2.2).
//!
//! One [`MmioTransport`] per device slot sits on the MMIO bus. It owns everything the driver
//! configures through registers (status, features, queue addresses) and hands the finished
//! queues to its [`VirtioDevice`] at DRIVER_OK. Queue notifications should never reach it: the
//! device manager registers [`MmioTransport::queue_events`] as ioeventfds at
//! `base + NOTIFY_OFFSET` (datamatch = queue index) so KVM signals the device directly; a
//! notify write that does arrive here (no ioeventfd, tests) is forwarded to the same eventfd.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, GuestMemoryMmap, Interrupt, VirtioDevice, FEATURE_EVENT_IDX, FEATURE_VERSION_1,
    INTERRUPT_CONFIG, INTERRUPT_USED, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use crate::devices::BusDevice;

/// "virt", little endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
const VERSION: u32 = 2;
/// We are not a PCI vendor; Linux ignores the value.
const VENDOR_ID: u32 = 0;

/// Offset of the QueueNotify register, where queue ioeventfds go.
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device-specific configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;

// Register offsets (virtio 1.2, 4.2.2).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Duplicating a queue eventfd failed.
    #[error("cannot clone a queue eventfd")]
    CloneEvent(#[source] std::io::Error),
    /// Saved transport state that does not fit this device (or is corrupt).
    #[error("saved virtio-mmio state does not fit the device: {0}")]
    BadState(&'static str),
    /// The device refused the restored queues.
    #[error("cannot reactivate the device")]
    Activate(#[source] ActivateError),
}

/// The registers the driver wrote for one queue, as saved in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegsState {
    /// Queue size as written.
    pub size: u32,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub driver: u64,
    /// Used ring.
    pub device: u64,
}

/// Where a running device stood in one of its queues: the next available entry it will take
/// and the next used entry it will write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePosition {
    /// Next available-ring index to read.
    pub next_avail: u16,
    /// Next used-ring index to write.
    pub next_used: u16,
}

impl QueuePosition {
    /// The position of `queue`.
    pub fn of(queue: &Queue) -> Self {
        Self {
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
        }
    }
}

/// Everything a transport holds, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device behind it (checked on restore).
    pub device_type: u32,
    /// The status register (without DEVICE_NEEDS_RESET, which is `needs_reset`).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Per queue, in device order.
    pub queues: Vec<QueueRegsState>,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device had declared itself broken.
    pub needs_reset: bool,
}

/// Status bits a driver can set (DEVICE_NEEDS_RESET is ours and kept apart).
const KNOWN_STATUS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED;

/// What the driver wrote for one queue; turned into a `Queue` at DRIVER_OK.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    max_size: u16,
    /// As written; validated when the queue is made ready.
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: u32::from(max_size),
            ..Self::default()
        }
    }

    /// Builds the `Queue` these registers describe, checking size, alignment and that all three
    /// rings lie in guest memory.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(u16::try_from(self.size).ok()?).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        let n = u64::from(q.size());
        // Descriptor table; avail ring incl. used_event; used ring incl. avail_event.
        let rings = [
            (self.desc, 16 * n),
            (self.driver, 6 + 2 * n),
            (self.device, 6 + 8 * n),
        ];
        for (addr, len) in rings {
            let addr = GuestAddress(addr);
            if addr.checked_add(len).is_none() || !mem.check_range(addr, len as usize) {
                return None;
            }
        }
        q.set_event_idx(event_idx);
        q.set_ready(self.ready);
        Some(q)
    }
}

/// Counters for the register window; each access is one guest exit.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Register reads and writes that reached the VMM.
    pub accesses: AtomicU64,
    /// Queue notifications that reached the VMM instead of an ioeventfd.
    pub notify_writes: AtomicU64,
}

/// A virtio-mmio register window in front of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_events: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
    status: u32,
    metrics: Arc<TransportMetrics>,
}

impl MmioTransport {
    /// Puts `device` behind a register window. `irq` is the eventfd the device manager
    /// registered as the slot's irqfd; [`Self::queue_events`] are to be registered as
    /// ioeventfds.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: EventFd,
    ) -> Result<Self, MmioError> {
        let (device_type, avail_features, queues, queue_events) = {
            let dev = lock(&device);
            let events = dev
                .queue_events()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(MmioError::CloneEvent)?;
            let queues = dev.queue_max_sizes().iter().map(|&m| QueueRegs::new(m));
            (
                dev.device_type(),
                dev.avail_features(),
                queues.collect(),
                events,
            )
        };
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            queue_events,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            status: 0,
            metrics: Arc::new(TransportMetrics::default()),
        })
    }

    /// The queue notification eventfds, in queue order: register each as an ioeventfd at
    /// `base + NOTIFY_OFFSET` with the queue index as datamatch.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The eventfd that raises the slot's interrupt (the irqfd given to [`Self::new`]).
    pub fn interrupt_event(&self) -> &EventFd {
        self.interrupt.event()
    }

    /// The device's interrupt state (tests and metrics).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Register-access counters of this slot.
    pub fn metrics(&self) -> Arc<TransportMetrics> {
        self.metrics.clone()
    }

    /// Whether a driver runs the device (DRIVER_OK set, not failed).
    pub fn driver_ok(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_DRIVER_OK) && !self.has(VIRTIO_CONFIG_S_FAILED)
    }

    /// The register state, for a snapshot (the device's own state is saved by the device).
    pub fn save_state(&self) -> TransportState {
        TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            queues: (0..self.queues.len())
                .filter_map(|i| self.queue_regs(i))
                .collect(),
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
        }
    }

    /// The registers of queue `index` as the driver set them, if it exists.
    pub fn queue_regs(&self, index: usize) -> Option<QueueRegsState> {
        self.queues.get(index).map(|q| QueueRegsState {
            size: q.size,
            ready: q.ready,
            desc: q.desc,
            driver: q.driver,
            device: q.device,
        })
    }

    /// Loads `state` (from [`Self::save_state`] of the same kind of device, read from an
    /// untrusted file) into this fresh transport and, if the driver was running the device,
    /// activates the device with its queues at `positions` — as if the driver had just set
    /// DRIVER_OK, minus the notifications. Everything is checked before anything changes.
    pub fn restore_state(
        &mut self,
        state: &TransportState,
        positions: &[QueuePosition],
    ) -> Result<(), MmioError> {
        let bad = MmioError::BadState;
        if state.device_type != self.device_type {
            return Err(bad("another device type"));
        }
        if state.queues.len() != self.queues.len() {
            return Err(bad("queue count"));
        }
        if state.status & !KNOWN_STATUS != 0 {
            return Err(bad("status bits"));
        }
        if state.driver_features & !self.avail_features != 0 {
            return Err(bad("features the device does not offer"));
        }
        if state.interrupt_status & !(INTERRUPT_USED | INTERRUPT_CONFIG) != 0 {
            return Err(bad("interrupt status bits"));
        }
        let event_idx = state.driver_features & FEATURE_EVENT_IDX != 0;
        let mut regs = Vec::with_capacity(state.queues.len());
        for (saved, current) in state.queues.iter().zip(&self.queues) {
            let q = QueueRegs {
                max_size: current.max_size,
                size: saved.size,
                ready: saved.ready,
                desc: saved.desc,
                driver: saved.driver,
                device: saved.device,
            };
            if q.ready && q.build(&self.mem, event_idx).is_none() {
                return Err(bad("a ready queue outside guest memory or of a bad size"));
            }
            regs.push(q);
        }
        let running = state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && state.status & VIRTIO_CONFIG_S_FAILED == 0;
        if running && positions.len() != regs.len() {
            return Err(bad("queue positions"));
        }
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.queues = regs;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if running && !state.needs_reset {
            self.activate_at(Some(positions))
                .map_err(MmioError::Activate)?;
        }
        Ok(())
    }

    /// Resets the transport and its device as a driver's write of 0 to the status register
    /// would (before a NIC is attached to an empty slot).
    pub fn reset_device(&mut self) {
        self.reset();
    }

    /// Re-reads the device's type and features after its backend changed (a tap attached to
    /// an empty NIC slot). Call after [`Self::reset_device`]: the driver probes afresh.
    pub fn reload_device(&mut self) {
        let dev = lock(&self.device);
        self.device_type = dev.device_type();
        self.avail_features = dev.avail_features();
    }

    fn status_register(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, while the queue is
    /// not ready (spec 4.2.3.2).
    fn queue_config_open(&mut self) -> Option<&mut QueueRegs> {
        let open = self.has(VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.has(VIRTIO_CONFIG_S_DRIVER_OK)
            && !self.has(VIRTIO_CONFIG_S_FAILED);
        self.selected_queue().filter(|q| open && !q.ready)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status_register(),
            // No shared memory regions: length (and base) read as all ones.
            REG_SHM_LEN_LOW..=REG_SHM_BASE_HIGH => u32::MAX,
            // The configuration never changes under the driver's feet.
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.queue_config_open() {
                    q.size = value;
                }
            }
            REG_QUEUE_READY => self.write_queue_ready(value),
            NOTIFY_OFFSET => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.queue_config_open() {
                    set_half(&mut q.desc, offset == REG_QUEUE_DESC_HIGH, value);
                }
            }
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.queue_config_open() {
                    set_half(&mut q.driver, offset == REG_QUEUE_DRIVER_HIGH, value);
                }
            }
            REG_QUEUE_DEVICE_LOW | REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.queue_config_open() {
                    set_half(&mut q.device, offset == REG_QUEUE_DEVICE_HIGH, value);
                }
            }
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has(VIRTIO_CONFIG_S_DRIVER) || self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, false, value),
            1 => set_half(&mut self.driver_features, true, value),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let mem = self.mem.clone();
        if value == 0 {
            if !self.has(VIRTIO_CONFIG_S_DRIVER_OK) {
                if let Some(q) = self.selected_queue() {
                    q.ready = false;
                }
            }
            return;
        }
        let Some(q) = self.queue_config_open() else {
            return;
        };
        let mut candidate = *q;
        candidate.ready = true;
        if candidate.build(&mem, false).is_some() {
            q.ready = true;
        } else {
            tracing::warn!("virtio-mmio: driver readied an invalid queue");
            self.interrupt.set_needs_reset();
        }
    }

    fn notify(&mut self, value: u32) {
        self.metrics.notify_writes.fetch_add(1, Ordering::Relaxed);
        if let Some(evt) = self.queue_events.get(value as usize) {
            if let Err(e) = evt.write(1) {
                tracing::warn!("virtio-mmio: cannot signal queue {value}: {e}");
            }
        }
    }

    /// The device status state machine (spec 3.1.1): bits are only ever added, in order,
    /// until the driver writes 0 to reset.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if self.status & !value != 0 {
            tracing::debug!("virtio-mmio: driver tried to clear status bits");
            return;
        }
        let added = value & !self.status;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        if self.has(VIRTIO_CONFIG_S_FAILED) {
            return;
        }
        let mut next = self.status;
        let steps = [
            (VIRTIO_CONFIG_S_ACKNOWLEDGE, 0),
            (VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_ACKNOWLEDGE),
            (VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER),
            (VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if next & needs != needs {
                tracing::debug!("virtio-mmio: status bit {bit:#x} set out of order");
                return;
            }
            match bit {
                VIRTIO_CONFIG_S_FEATURES_OK if !self.features_acceptable() => {
                    // Leave FEATURES_OK clear: the driver reads it back and gives up.
                    tracing::warn!(
                        "virtio-mmio: refusing driver features {:#x}",
                        self.driver_features
                    );
                    self.status = next;
                    return;
                }
                VIRTIO_CONFIG_S_DRIVER_OK => {
                    if let Err(e) = self.activate() {
                        tracing::warn!("virtio-mmio: device activation failed: {e}");
                        self.interrupt.set_needs_reset();
                    }
                }
                _ => {}
            }
            next |= bit;
        }
        self.status = next;
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.avail_features == 0
            && self.driver_features & FEATURE_VERSION_1 != 0
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        self.activate_at(None)
    }

    /// Activates the device; a restored one starts at its saved `positions`.
    fn activate_at(&mut self, positions: Option<&[QueuePosition]>) -> Result<(), ActivateError> {
        let event_idx = self.driver_features & FEATURE_EVENT_IDX != 0;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, regs)| {
                if !regs.ready {
                    return Queue::new(regs.max_size).map_err(|_| ActivateError::InvalidQueue(i));
                }
                let mut q = regs
                    .build(&self.mem, event_idx)
                    .ok_or(ActivateError::InvalidQueue(i))?;
                if let Some(p) = positions.and_then(|p| p.get(i)) {
                    q.set_next_avail(p.next_avail);
                    q.set_next_used(p.next_used);
                }
                Ok(q)
            })
            .collect::<Result<Vec<_>, _>>()?;
        lock(&self.device).activate(
            self.mem.clone(),
            queues,
            self.driver_features,
            self.interrupt.clone(),
        )
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.interrupt.reset();
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        tracing::info!(
            device = self.device_type,
            register_accesses = self.metrics.accesses.load(Ordering::Relaxed),
            notify_writes = self.metrics.notify_writes.load(Ordering::Relaxed),
            interrupts = self.interrupt.raised(),
            "virtio-mmio: transport closed"
        );
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.metrics.accesses.fetch_add(1, Ordering::Relaxed);
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            // Registers are 32 bits wide and must be accessed as such (4.2.2.2).
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.metrics.accesses.fetch_add(1, Ordering::Relaxed);
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

fn set_half(target: &mut u64, high: bool, value: u32) {
    if high {
        *target = (*target & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *target = (*target & !0xffff_ffff) | u64::from(value);
    }
}

/// Locks a device, carrying on after a panic elsewhere: its state is plain data, and a wedged
/// VM is worse than one that sees a half-updated device.
fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;

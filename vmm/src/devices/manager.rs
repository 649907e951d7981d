//! The device manager: the one place devices are wired to the guest.
//!
//! A port or MMIO device goes on its bus; a virtio-mmio device additionally gets the next free
//! slot (register window + IRQ from [`crate::layout`]), an ioeventfd per queue on its
//! QueueNotify register, an irqfd on its IRQ, a `virtio_mmio.device=` entry for the kernel
//! command line, and optionally an event-loop subscriber. Devices never touch the `VmFd`.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusError, SharedDevice};
use super::BusDevice;
use crate::boot::cmdline::MmioDeviceParam;
use crate::event_loop::{EventLoop, Subscriber};
use crate::layout::{virtio_mmio_slot, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SLOTS};

/// Offset of the QueueNotify register in a virtio-mmio window (virtio spec 4.2.2).
pub const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// What the device manager needs from a virtio-mmio transport to wire it.
pub trait VirtioMmioDevice: BusDevice {
    /// One eventfd per queue, by queue index: the guest writing the index to QueueNotify
    /// signals it (in the kernel, without an exit to us).
    fn queue_events(&self) -> &[EventFd];
    /// The eventfd the device writes to raise its interrupt.
    fn interrupt_event(&self) -> &EventFd;
}

/// Where a virtio-mmio device was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Slot number.
    pub index: u64,
    /// Guest-physical base of its register window.
    pub addr: u64,
    /// Its IRQ (GSI).
    pub irq: u32,
}

/// Errors from wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The address range is taken or invalid.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// All virtio-mmio slots are in use.
    #[error("no free virtio-mmio slot")]
    NoSlot,
    /// KVM refused an ioeventfd or irqfd.
    #[error("cannot register {what}")]
    Kvm {
        /// "an ioeventfd" or "an irqfd".
        what: &'static str,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be created or duplicated.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DeviceError {
    move |source| DeviceError::Kvm { what, source }
}

/// Builds the buses and the event loop while the VM is assembled.
pub struct DeviceManager {
    pio: Bus,
    mmio: Bus,
    event_loop: EventLoop,
    next_slot: u64,
    virtio_devices: Vec<MmioDeviceParam>,
    /// Eventfds that must live as long as the VM (e.g. the I/O-delay port sink).
    keep_alive: Vec<EventFd>,
}

impl DeviceManager {
    /// An empty manager registering its devices' subscribers with `event_loop`.
    pub fn new(event_loop: EventLoop) -> Self {
        Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            event_loop,
            next_slot: 0,
            virtio_devices: Vec::new(),
            keep_alive: Vec::new(),
        }
    }

    /// Puts `device` on the port bus at `[base, base + len)`.
    pub fn add_pio_device(
        &mut self,
        device: SharedDevice,
        base: u16,
        len: u16,
    ) -> Result<(), DeviceError> {
        Ok(self.pio.insert(device, u64::from(base), u64::from(len))?)
    }

    /// Puts `device` on the MMIO bus at `[base, base + len)`.
    pub fn add_mmio_device(
        &mut self,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        Ok(self.mmio.insert(device, base, len)?)
    }

    /// Registers an event-loop subscriber.
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.event_loop.add_subscriber(subscriber);
    }

    /// An irqfd for `gsi`: writing the returned eventfd raises the interrupt in the kernel.
    pub fn irqfd(&mut self, vm: &VmFd, gsi: u32) -> Result<EventFd, DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&evt, gsi).map_err(kvm("an irqfd"))?;
        Ok(evt)
    }

    /// Makes guest writes to `port` vanish inside KVM: no exit reaches us. For ports the kernel
    /// writes often and we ignore (the 0x80 I/O-delay port).
    pub fn sink_pio_writes(&mut self, vm: &VmFd, port: u16) -> Result<(), DeviceError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_ioevent(&evt, &IoEventAddress::Pio(u64::from(port)), NoDatamatch)
            .map_err(kvm("an ioeventfd"))?;
        self.keep_alive.push(evt);
        Ok(())
    }

    /// Wires a virtio-mmio device into the next free slot; see the module docs.
    pub fn attach_virtio_mmio<D: VirtioMmioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        device: Arc<Mutex<D>>,
        subscriber: Option<Subscriber>,
    ) -> Result<MmioSlot, DeviceError> {
        if self.next_slot >= VIRTIO_MMIO_SLOTS {
            return Err(DeviceError::NoSlot);
        }
        let index = self.next_slot;
        let slot = MmioSlot {
            index,
            addr: virtio_mmio_slot(index),
            irq: VIRTIO_IRQ_BASE + index as u32,
        };
        {
            let dev = device.lock().unwrap_or_else(|p| p.into_inner());
            let notify = IoEventAddress::Mmio(slot.addr + VIRTIO_MMIO_QUEUE_NOTIFY);
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                vm.register_ioevent(evt, &notify, queue as u32)
                    .map_err(kvm("an ioeventfd"))?;
            }
            vm.register_irqfd(dev.interrupt_event(), slot.irq)
                .map_err(kvm("an irqfd"))?;
        }
        let shared: SharedDevice = device;
        self.mmio
            .insert(shared, slot.addr, crate::layout::MMIO_SLOT_SIZE)?;
        if let Some(subscriber) = subscriber {
            self.event_loop.add_subscriber(subscriber);
        }
        self.virtio_devices.push(MmioDeviceParam {
            addr: slot.addr,
            irq: slot.irq,
        });
        self.next_slot += 1;
        Ok(slot)
    }

    /// The virtio-mmio devices, for the kernel command line.
    pub fn virtio_devices(&self) -> &[MmioDeviceParam] {
        &self.virtio_devices
    }

    /// Hands over the finished buses, the event loop and the fds to keep alive.
    pub fn finish(self) -> Devices {
        Devices {
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            event_loop: self.event_loop,
            keep_alive: self.keep_alive,
        }
    }
}

/// The wired devices of a built VM.
pub struct Devices {
    /// The port bus.
    pub pio: Arc<Bus>,
    /// The MMIO bus.
    pub mmio: Arc<Bus>,
    /// The event loop, not yet started.
    pub event_loop: EventLoop,
    /// Fds that live as long as the VM.
    pub keep_alive: Vec<EventFd>,
}

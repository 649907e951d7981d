//! The device manager: the one place devices are wired to the guest.
//!
//! A port or MMIO device goes on its bus; a virtio-mmio device additionally gets the next free
//! slot (register window + IRQ from [`crate::layout`]) with an irqfd on its IRQ, an ioeventfd
//! per queue on its QueueNotify register, a `virtio_mmio.device=` entry for the kernel command
//! line, and optionally an event-loop subscriber. Devices never touch the `VmFd`.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusError, SharedDevice};
use super::BusDevice;
use crate::boot::cmdline::MmioDeviceParam;
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_OFFSET};
use crate::event_loop::{EventLoop, Subscriber};
use crate::layout::{virtio_mmio_slot, MMIO_SLOT_SIZE, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SLOTS};

/// What the device manager needs from a virtio-mmio transport to wire it: its register window
/// (a [`BusDevice`]) and its queue notification eventfds.
pub trait VirtioMmioDevice: BusDevice {
    /// One eventfd per queue, by queue index: the guest writing the index to QueueNotify
    /// signals it (in the kernel, without an exit to us).
    fn queue_events(&self) -> &[EventFd];
}

impl VirtioMmioDevice for MmioTransport {
    fn queue_events(&self) -> &[EventFd] {
        MmioTransport::queue_events(self)
    }
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

    /// The event loop's pause switch.
    pub fn loop_pause(&self) -> Arc<crate::event_loop::LoopPause> {
        self.event_loop.pause_switch()
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

    /// Takes the next free virtio-mmio slot and registers an irqfd for its IRQ; build the
    /// transport with the returned eventfd, then [`DeviceManager::attach_virtio_mmio`] it.
    pub fn allocate_virtio_slot(&mut self, vm: &VmFd) -> Result<(MmioSlot, EventFd), DeviceError> {
        if self.next_slot >= VIRTIO_MMIO_SLOTS {
            return Err(DeviceError::NoSlot);
        }
        let index = self.next_slot;
        let slot = MmioSlot {
            index,
            addr: virtio_mmio_slot(index),
            irq: VIRTIO_IRQ_BASE + index as u32,
        };
        let irq = self.irqfd(vm, slot.irq)?;
        self.next_slot += 1;
        Ok((slot, irq))
    }

    /// Wires a virtio-mmio transport into `slot`: an ioeventfd per queue on QueueNotify
    /// (datamatch = queue index), the register window on the MMIO bus, the event-loop
    /// `subscriber` (the device's), and the `virtio_mmio.device=` command-line entry, with
    /// `platform_id` as the guest's platform-device id if given.
    pub fn attach_virtio_mmio<D: VirtioMmioDevice + 'static>(
        &mut self,
        vm: &VmFd,
        slot: MmioSlot,
        transport: Arc<Mutex<D>>,
        subscriber: Option<Subscriber>,
        platform_id: Option<u32>,
    ) -> Result<(), DeviceError> {
        {
            let dev = transport.lock().unwrap_or_else(|p| p.into_inner());
            let notify = IoEventAddress::Mmio(slot.addr + NOTIFY_OFFSET);
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                vm.register_ioevent(evt, &notify, queue as u32)
                    .map_err(kvm("an ioeventfd"))?;
            }
        }
        let shared: SharedDevice = transport;
        self.mmio.insert(shared, slot.addr, MMIO_SLOT_SIZE)?;
        if let Some(subscriber) = subscriber {
            self.event_loop.add_subscriber(subscriber);
        }
        self.virtio_devices.push(MmioDeviceParam {
            addr: slot.addr,
            irq: slot.irq,
            id: platform_id,
        });
        Ok(())
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

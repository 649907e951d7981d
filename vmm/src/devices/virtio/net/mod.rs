//! virtio-net (device id 1) backed by a tap, in pre-wired slots that are probed late.
//!
//! A VM is built with `net_slots` NIC slots after all its other devices: each is a complete
//! virtio-mmio transport (register window, irqfd, ioeventfds, event-loop subscriber, a
//! `virtio_mmio.device=` entry with the explicit platform-device id
//! [`PLATFORM_ID_BASE`]` + slot`), but with no backend it shows DeviceID 0, so the guest's
//! boot-time probe ends with -ENODEV and the guest sees no NIC. [`attach`] (reached through
//! [`crate::VmHandle::attach_net`], also on a VM restored from a template) installs a tap in
//! the next free slot; the guest then binds `virtio-mmio.<id>` to the virtio-mmio driver
//! through sysfs, which probes it as a net device.
//!
//! - [`device`]: the virtio device: queues, frames, interrupts, event-loop glue;
//! - [`frame`]: TX chains into frames and frames into RX chains (guest memory only);
//! - [`tap`]: the tap itself (hand-written ioctls);
//! - [`metrics`]: frame, drop, kick and interrupt counters.

pub mod device;
pub mod frame;
pub mod metrics;
pub mod tap;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

pub use device::NetDevice;
pub use metrics::{NetCounters, NetMetrics, NetMetricsSnapshot};
pub use tap::{Tap, TapError};

use crate::devices::virtio::mmio::MmioTransport;

/// Size of the RX and TX queues.
pub const QUEUE_SIZE: u16 = 256;
/// The guest platform-device id of NIC slot 0 (`virtio-mmio.32`); slot N is `32 + N`. Linux
/// numbers command-line devices without an id from 0 up, one per device, and there are at most
/// [`crate::layout::VIRTIO_MMIO_SLOTS`] (19) devices, so ids from 32 never collide.
pub const PLATFORM_ID_BASE: u32 = 32;
/// The MTU a NIC gets unless told otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU a guest accepts for IPv4 (RFC 791).
pub const MIN_MTU: u16 = 68;
/// Largest MTU we accept: a frame must fit [`frame::MAX_FRAME_LEN`].
pub const MAX_MTU: u16 = 65_500;

/// Errors creating a NIC slot or attaching a tap to one.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An eventfd could not be created or written.
    #[error("cannot create or signal an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The VM is not running (not started, or ended).
    #[error("the vm is not running")]
    NotRunning,
    /// Every NIC slot of the VM has a tap (or it has none: `net_slots` is 0).
    #[error("no free nic slot (the vm has {0})")]
    NoFreeSlot(usize),
    /// The slot already has a tap.
    #[error("nic slot {0} is in use")]
    InUse(u8),
    /// The MTU is outside [`MIN_MTU`]..=[`MAX_MTU`].
    #[error("mtu {0} is out of range")]
    Mtu(u16),
    /// Not six hex bytes, or a multicast or all-zero MAC address.
    #[error("invalid mac address {0} (want a unicast aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    /// The tap.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// What a NIC is attached to and what the guest sees of it.
#[derive(Debug)]
pub struct NetBackend {
    /// The tap (opened in the network namespace it belongs to).
    pub tap: Tap,
    /// The guest's MAC address (unicast).
    pub mac: [u8; 6],
    /// The guest's MTU (VIRTIO_NET_F_MTU).
    pub mtu: u16,
    /// Offer checksum and TCPv4 segmentation offloads (default). Off only to measure.
    pub offloads: bool,
}

impl NetBackend {
    /// A backend with the default MTU and offloads on.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            mtu: DEFAULT_MTU,
            offloads: true,
        }
    }
}

/// Where an attached NIC is, for whoever tells the guest to probe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSlotInfo {
    /// The slot's number among the VM's NIC slots (0 = the first).
    pub slot: u8,
    /// The guest platform device: write it to `/sys/bus/platform/drivers/virtio-mmio/bind`.
    pub device_name: String,
    /// The register window's guest-physical address.
    pub mmio_addr: u64,
    /// The slot's IRQ (GSI).
    pub irq: u32,
    /// The tap's name.
    pub tap_name: String,
}

/// The guest platform-device name of NIC slot `slot`.
pub fn device_name(slot: u8) -> String {
    format!("virtio-mmio.{}", PLATFORM_ID_BASE + u32::from(slot))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::Mac(text.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn check_backend(backend: &NetBackend) -> Result<(), NetError> {
    if !(MIN_MTU..=MAX_MTU).contains(&backend.mtu) {
        return Err(NetError::Mtu(backend.mtu));
    }
    let mac = backend.mac;
    if mac[0] & 1 != 0 || mac == [0; 6] {
        let text = mac.map(|b| format!("{b:02x}")).join(":");
        return Err(NetError::Mac(text));
    }
    Ok(())
}

/// One NIC slot of a VM: its transport and its device.
#[derive(Clone)]
pub(crate) struct NetSlot {
    pub transport: Arc<Mutex<MmioTransport>>,
    pub device: Arc<Mutex<NetDevice>>,
    pub mmio_addr: u64,
    pub irq: u32,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Attaches `backend` to the first free slot of `slots`: the transport is reset (whatever a
/// guest wrote to the empty slot is forgotten), the device takes the tap, and the transport
/// re-reads the device's type and features, so the guest's next probe finds a net device.
/// Lock order transport → device, as everywhere.
pub(crate) fn attach(slots: &[NetSlot], backend: NetBackend) -> Result<NetSlotInfo, NetError> {
    check_backend(&backend)?;
    let slot = slots
        .iter()
        .find(|s| !lock(&s.device).is_attached())
        .ok_or(NetError::NoFreeSlot(slots.len()))?;
    let tap_name = backend.tap.name().to_owned();
    let mut transport = lock(&slot.transport);
    transport.reset_device();
    let index = {
        let mut device = lock(&slot.device);
        device.attach(backend)?;
        device.index()
    };
    transport.reload_device();
    drop(transport);
    let info = NetSlotInfo {
        slot: index,
        device_name: device_name(index),
        mmio_addr: slot.mmio_addr,
        irq: slot.irq,
        tap_name,
    };
    tracing::info!(?info, "virtio-net: tap attached");
    Ok(info)
}

/// The counters of NIC slot `index`, if the VM has it.
pub(crate) fn counters(slots: &[NetSlot], index: u8) -> Option<NetCounters> {
    let slot = slots.iter().find(|s| lock(&s.device).index() == index)?;
    let transport = lock(&slot.transport).metrics();
    Some(lock(&slot.device).counters(transport))
}

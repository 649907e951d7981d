//! Bulkhead's micro-VM monitor.
//!
//! A library first: the `bulkhead` shim links it to run one container's VM inside its sandbox
//! monitor process, and the thin `bulkhead-vmm` binary runs a VM by hand. The VMM knows nothing
//! about containers or the agent's API; its vsock device only moves bytes.
//!
//! Module map (see `docs/DESIGN-NOTES.md`):
//! - [`layout`]: the guest-physical memory map and the MMIO/IRQ slots for devices;
//! - [`devices`]: the `BusDevice` seam, the PIO/MMIO buses, legacy devices and virtio devices.

pub mod devices;
pub mod layout;

//! The x86_64 guest-physical memory map.
//!
//! Guest RAM starts at 0 and is split around a hole below 4 GiB that holds the MMIO devices,
//! the IOAPIC and the local APIC, the same shape a PC has so an unmodified kernel finds
//! nothing surprising. Everything that places something in guest memory takes its address from
//! here, so two pieces can never disagree about where a thing lives.

/// Start of the 32-bit MMIO hole. RAM above this address continues at [`HIGH_RAM_START`].
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First byte after the 32-bit MMIO hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Window for virtio-mmio devices, one [`MMIO_SLOT_SIZE`] page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device's register window.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// How many virtio-mmio slots there are: one per free IOAPIC pin from [`VIRTIO_IRQ_BASE`] on.
pub const VIRTIO_MMIO_SLOTS: u64 = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as u64;

/// First IRQ (GSI) handed to virtio-mmio devices; 0-4 belong to the PIT, keyboard, cascade and
/// the COM ports.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ usable for devices on the in-kernel IOAPIC (24 pins, 0-23).
pub const IRQ_MAX: u32 = 23;

/// COM1: port and IRQ of the serial console.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;
/// The i8042 keyboard controller's command/status port; a write of 0xFE here is a reset.
pub const I8042_PORT: u16 = 0x60;

/// The guest-physical address of virtio-mmio slot `index`.
pub const fn virtio_mmio_slot(index: u64) -> u64 {
    VIRTIO_MMIO_START + index * MMIO_SLOT_SIZE
}

// The layout is checked when the crate compiles, not when a test happens to run.
const _: () = assert!(VIRTIO_MMIO_START >= MMIO_HOLE_START);
const _: () = assert!(
    virtio_mmio_slot(VIRTIO_MMIO_SLOTS) <= 0xfec0_0000,
    "overlaps the IOAPIC"
);
const _: () = assert!(VIRTIO_IRQ_BASE + VIRTIO_MMIO_SLOTS as u32 - 1 == IRQ_MAX);

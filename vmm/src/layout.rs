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
/// First port of the i8042 keyboard controller: data at 0x60, command/status at 0x64
/// ([`I8042_PORT`] + 4). A write of 0xFE to the command port is a CPU reset, which is how a
/// guest booted with `reboot=k` says it is done.
pub const I8042_PORT: u16 = 0x60;
/// Ports covered by the i8042 device (0x60..=0x64).
pub const I8042_PORT_LEN: u16 = 5;
/// The port Linux writes to for a short I/O delay; swallowed in the kernel by an ioeventfd.
pub const IO_DELAY_PORT: u16 = 0x80;

/// Where the local APIC and the IOAPIC sit (architectural defaults).
pub const APIC_START: u64 = 0xfee0_0000;
/// The IOAPIC's register window.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Address KVM uses for the three pages of the real-mode TSS (Intel needs it; harmless on AMD).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// Address of KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

// Boot structures in low memory, below the kernel (all inside the first 1 MiB).
/// The GDT the vCPUs start with.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before it enables interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The Linux zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT and one page directory mapping the first 1 GiB.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory of the boot identity map (512 2-MiB pages).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, terminating NUL included (x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table goes (Linux scans the last KiB of base memory for it).
/// Low RAM in the e820 map ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high memory": the kernel loads at or above this; RAM resumes here in the e820 map.
pub const HIMEM_START: u64 = 0x10_0000;

/// Smallest guest memory we accept. The guest kernel, its initramfs and the boot structures fit
/// comfortably in 32 MiB; below that a boot fails in ways that are hard to diagnose.
pub const MIN_MEM_MIB: u64 = 32;

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
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
const _: () = assert!(PDE_START + 0x1000 <= CMDLINE_START);
const _: () = assert!(KVM_IDENTITY_MAP_START + 0x1000 == KVM_TSS_START);

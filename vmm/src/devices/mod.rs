//! Devices the guest sees, and the one seam they all plug into: [`BusDevice`].
//!
//! A vCPU thread that exits on a port or MMIO access looks the address up on a [`bus::Bus`] and
//! calls the device with the offset into its range. Devices never see absolute addresses, so the
//! same device works wherever the layout puts it.

pub mod bus;
pub mod i8042;
pub mod manager;
pub mod serial;
pub mod virtio;

/// A device on the port-I/O or MMIO bus.
///
/// Called from vCPU threads with the device's lock held; a call must be quick and must never
/// block on the guest. Both methods get guest-controlled `offset` and `data` lengths: bounds-check
/// them, and answer an access you do not understand by ignoring a write and reading zeros.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let _ = offset;
    }

    /// Guest write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
}

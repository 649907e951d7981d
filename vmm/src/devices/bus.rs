//! Address → device dispatch for port I/O and MMIO exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::BusDevice;

/// A device shared between the bus (vCPU threads) and whoever else drives it (event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
///
/// Built before the vCPUs start and read-only afterwards, so vCPU threads share it without a lock
/// around the map itself; each device has its own lock.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::InvalidRange { base, len });
        };
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` into its range.
    fn resolve(&self, addr: u64) -> Option<(&Entry, u64)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Dispatches a guest read; returns false (and leaves `data` untouched) if nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((entry, offset)) = self.resolve(addr) else {
            return false;
        };
        lock(&entry.device).read(offset, data);
        true
    }

    /// Dispatches a guest write; returns false if nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((entry, offset)) = self.resolve(addr) else {
            return false;
        };
        lock(&entry.device).write(offset, data);
        true
    }
}

/// Locks a device, carrying on if another thread panicked while holding it: a device's state is
/// plain registers, and a wedged VM is worse than one that sees a half-updated register.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset_and_rejects_overlaps() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 0x9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        assert!(bus.insert(dev.clone(), 0x110, 1).is_ok());
        assert_eq!(
            bus.insert(dev.clone(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );

        let mut buf = [0u8; 2];
        assert!(bus.read(0x103, &mut buf));
        assert_eq!(buf, [3, 3]);
        assert!(bus.write(0x10e, &[9]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0xe, vec![9])));
        assert!(!bus.read(0xff, &mut buf));
        assert!(!bus.write(0x111, &[1]));
    }
}

//! Validated descriptor chains and byte I/O over the buffers they name.
//!
//! `virtio-queue`'s own chain iterator ends a chain silently when a descriptor is bad (index out
//! of range, a loop cut short by its TTL, a broken indirect table), so a device cannot tell a
//! malformed chain from a short one. [`parse`] walks the chain itself and names every violation,
//! so the device can declare the queue broken instead of acting on half a request. Every buffer
//! is checked against guest memory before any byte is touched; after that, I/O goes through
//! `vm-memory` slices, never raw pointers.

use std::io;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, ReadVolatile, VolatileMemoryError,
    WriteVolatile,
};

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;

/// A descriptor chain the driver got wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor index is not below the size of the table it indexes.
    #[error("descriptor index {0} out of range")]
    IndexOutOfRange(u16),
    /// More descriptors than the queue size: the chain loops.
    #[error("descriptor chain longer than the queue")]
    TooLong,
    /// The descriptor itself could not be read from guest memory.
    #[error("descriptor at {0:#x} is outside guest memory")]
    TableOutOfRange(u64),
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BufferOutOfRange { addr: u64, len: u32 },
    /// The buffers add up to more than 4 GiB.
    #[error("descriptor chain length overflows")]
    LengthOverflow,
    /// An indirect descriptor although the feature was not negotiated.
    #[error("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect descriptor")]
    NestedIndirect,
    /// An indirect descriptor that also has the NEXT flag.
    #[error("indirect descriptor with the next flag")]
    IndirectWithNext,
    /// An indirect table whose length is zero or not a whole number of descriptors.
    #[error("indirect table length {0} is invalid")]
    IndirectBadLength(u32),
    /// A device-readable buffer after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
}

/// One guest buffer of a chain, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain: the device-readable buffers, then the device-writable ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    head: u16,
    segments: Vec<Segment>,
    readable: usize,
}

impl Chain {
    /// The head index, to be returned in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The buffers the device may read (the driver's request).
    pub fn readable(&self) -> Buffers<'_> {
        Buffers::new(&self.segments[..self.readable])
    }

    /// The buffers the device may write (room for the device's answer).
    pub fn writable(&self) -> Buffers<'_> {
        Buffers::new(&self.segments[self.readable..])
    }
}

/// Walks and validates the chain starting at `head`.
///
/// `table` and `queue_size` describe the queue's descriptor table; `indirect_allowed` is whether
/// VIRTIO_RING_F_INDIRECT_DESC was negotiated. A chain may hold at most `queue_size`
/// descriptors in total (spec 2.7.5.3.1), which is also what catches loops.
pub fn parse<M: GuestMemory>(
    mem: &M,
    table: GuestAddress,
    queue_size: u16,
    head: u16,
    indirect_allowed: bool,
) -> Result<Chain, ChainError> {
    let mut table = table;
    let mut table_len = queue_size;
    let mut index = head;
    let mut in_indirect = false;
    let mut visited: u32 = 0;
    let mut total: u32 = 0;
    let mut segments = Vec::with_capacity(2);
    let mut readable = 0;

    loop {
        if index >= table_len {
            return Err(ChainError::IndexOutOfRange(index));
        }
        visited += 1;
        if visited > u32::from(queue_size) {
            return Err(ChainError::TooLong);
        }
        let addr = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::TableOutOfRange(table.raw_value()))?;
        let desc: Descriptor = mem
            .read_obj(addr)
            .map_err(|_| ChainError::TableOutOfRange(addr.raw_value()))?;
        let flags = u32::from(desc.flags());

        if flags & VRING_DESC_F_INDIRECT != 0 {
            if !indirect_allowed {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if in_indirect {
                return Err(ChainError::NestedIndirect);
            }
            if flags & VRING_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let len = desc.len();
            let entries = u64::from(len) / DESC_SIZE;
            if len == 0
                || !u64::from(len).is_multiple_of(DESC_SIZE)
                || entries > u64::from(u16::MAX)
            {
                return Err(ChainError::IndirectBadLength(len));
            }
            check_range(mem, desc.addr(), len)?;
            table = desc.addr();
            // Checked just above: at most u16::MAX entries.
            table_len = entries as u16;
            index = 0;
            in_indirect = true;
            continue;
        }

        check_range(mem, desc.addr(), desc.len())?;
        total = total
            .checked_add(desc.len())
            .ok_or(ChainError::LengthOverflow)?;
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if flags & VRING_DESC_F_WRITE != 0 {
            segments.push(segment);
        } else {
            if segments.len() != readable {
                return Err(ChainError::ReadableAfterWritable);
            }
            segments.push(segment);
            readable += 1;
        }

        if flags & VRING_DESC_F_NEXT == 0 {
            break;
        }
        index = desc.next();
    }

    Ok(Chain {
        head,
        segments,
        readable,
    })
}

fn check_range<M: GuestMemory>(mem: &M, addr: GuestAddress, len: u32) -> Result<(), ChainError> {
    let in_memory = addr.checked_add(u64::from(len)).is_some()
        && (len == 0 || mem.check_range(addr, len as usize));
    if in_memory {
        Ok(())
    } else {
        Err(ChainError::BufferOutOfRange {
            addr: addr.raw_value(),
            len,
        })
    }
}

/// A byte view over some buffers of a chain (all readable or all writable ones).
#[derive(Debug, Clone, Copy)]
pub struct Buffers<'a> {
    segments: &'a [Segment],
    len: usize,
}

impl<'a> Buffers<'a> {
    fn new(segments: &'a [Segment]) -> Self {
        // Cannot overflow: parse() bounded the sum by u32::MAX.
        let len = segments.iter().map(|s| s.len as usize).sum();
        Self { segments, len }
    }

    /// Total bytes in these buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest ranges covering bytes `[offset, offset + count)` of the view (clipped to its
    /// end), empty buffers skipped.
    pub fn pieces(
        &self,
        offset: usize,
        count: usize,
    ) -> impl Iterator<Item = (GuestAddress, usize)> + 'a {
        let mut skip = offset;
        let mut left = count;
        self.segments.iter().filter_map(move |s| {
            let len = s.len as usize;
            if skip >= len {
                skip -= len;
                return None;
            }
            if left == 0 {
                return None;
            }
            let take = (len - skip).min(left);
            // In range: parse() checked addr + len.
            let addr = s.addr.unchecked_add(skip as u64);
            skip = 0;
            left -= take;
            Some((addr, take))
        })
    }

    /// Copies bytes `[offset, offset + buf.len())` of the view into `buf`.
    pub fn read_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(offset, buf.len()) {
            mem.read_slice(&mut buf[done..done + len], addr)?;
            done += len;
        }
        if done == buf.len() {
            Ok(())
        } else {
            Err(GuestMemoryError::PartialBuffer {
                expected: buf.len(),
                completed: done,
            })
        }
    }

    /// Copies `buf` into bytes `[offset, offset + buf.len())` of the view.
    pub fn write_at<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &[u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in self.pieces(offset, buf.len()) {
            mem.write_slice(&buf[done..done + len], addr)?;
            done += len;
        }
        if done == buf.len() {
            Ok(())
        } else {
            Err(GuestMemoryError::PartialBuffer {
                expected: buf.len(),
                completed: done,
            })
        }
    }

    /// Writes bytes `[offset, offset + count)` of the view to `dst` straight from guest memory,
    /// one `write` per guest range, stopping at the first short write.
    ///
    /// Returns how many bytes went out; `WouldBlock` only if none did.
    pub fn write_to<M: GuestMemory, W: WriteVolatile>(
        &self,
        mem: &M,
        offset: usize,
        count: usize,
        dst: &mut W,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, len) in self.pieces(offset, count) {
            for slice in mem.get_slices(addr, len) {
                let slice = slice.map_err(io::Error::other)?;
                match dst.write_volatile(&slice) {
                    Ok(n) => {
                        done += n;
                        if n < slice.len() {
                            return Ok(done);
                        }
                    }
                    Err(e) if done > 0 => {
                        tracing::trace!("vsock: short write: {e}");
                        return Ok(done);
                    }
                    Err(e) => return Err(volatile_to_io(e)),
                }
            }
        }
        Ok(done)
    }

    /// Reads up to `count` bytes from `src` into the view at `offset`, straight into guest
    /// memory, one `read` per guest range, stopping at the first short read.
    ///
    /// Returns how many bytes came in (0 at end of file); `WouldBlock` only if none did.
    pub fn read_from<M: GuestMemory, R: ReadVolatile>(
        &self,
        mem: &M,
        offset: usize,
        count: usize,
        src: &mut R,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, len) in self.pieces(offset, count) {
            for slice in mem.get_slices(addr, len) {
                let mut slice = slice.map_err(io::Error::other)?;
                match src.read_volatile(&mut slice) {
                    Ok(n) => {
                        done += n;
                        if n < slice.len() {
                            return Ok(done);
                        }
                    }
                    Err(e) if done > 0 => {
                        tracing::trace!("vsock: short read: {e}");
                        return Ok(done);
                    }
                    Err(e) => return Err(volatile_to_io(e)),
                }
            }
        }
        Ok(done)
    }
}

fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestMemoryMmap;

    const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
    const TABLE: u64 = 0x1000;
    const SIZE: u16 = 8;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, table: u64, index: u16, d: Descriptor) {
        let raw = RawDescriptor::from(d);
        mem.write_obj(raw, GuestAddress(table + u64::from(index) * DESC_SIZE))
            .unwrap();
    }

    fn parse_at(mem: &GuestMemoryMmap, head: u16, indirect: bool) -> Result<Chain, ChainError> {
        parse(mem, GuestAddress(TABLE), SIZE, head, indirect)
    }

    #[test]
    fn splits_readable_and_writable() {
        let m = mem();
        put(&m, TABLE, 0, Descriptor::new(0x8000, 44, F_NEXT, 3));
        put(&m, TABLE, 3, Descriptor::new(0x9000, 100, F_NEXT, 5));
        put(&m, TABLE, 5, Descriptor::new(0xa000, 200, F_WRITE, 0));
        let c = parse_at(&m, 0, false).unwrap();
        assert_eq!(c.head(), 0);
        assert_eq!(c.readable().len(), 144);
        assert_eq!(c.writable().len(), 200);

        m.write_slice(b"hello", GuestAddress(0x8000 + 42)).unwrap();
        let mut b = [0u8; 5];
        c.readable().read_at(&m, 42, &mut b).unwrap();
        assert_eq!(&b[..2], b"he");
        c.writable().write_at(&m, 198, b"xy").unwrap();
        assert!(c.writable().write_at(&m, 199, b"xy").is_err());
    }

    #[test]
    fn rejects_every_malformation() {
        let m = mem();
        // Loop: 0 -> 1 -> 0.
        put(&m, TABLE, 0, Descriptor::new(0x8000, 8, F_NEXT, 1));
        put(&m, TABLE, 1, Descriptor::new(0x8000, 8, F_NEXT, 0));
        assert_eq!(parse_at(&m, 0, false), Err(ChainError::TooLong));
        // Self loop.
        put(&m, TABLE, 2, Descriptor::new(0x8000, 8, F_NEXT, 2));
        assert_eq!(parse_at(&m, 2, false), Err(ChainError::TooLong));
        // Next index out of range; head out of range.
        put(&m, TABLE, 3, Descriptor::new(0x8000, 8, F_NEXT, SIZE));
        assert_eq!(
            parse_at(&m, 3, false),
            Err(ChainError::IndexOutOfRange(SIZE))
        );
        assert_eq!(
            parse_at(&m, 200, false),
            Err(ChainError::IndexOutOfRange(200))
        );
        // Buffer outside memory, straddling the end, address wrapping around.
        put(&m, TABLE, 4, Descriptor::new(0x20_0000, 8, 0, 0));
        assert!(matches!(
            parse_at(&m, 4, false),
            Err(ChainError::BufferOutOfRange { .. })
        ));
        put(&m, TABLE, 4, Descriptor::new(0xf_fff0, 0x20, 0, 0));
        assert!(matches!(
            parse_at(&m, 4, false),
            Err(ChainError::BufferOutOfRange { .. })
        ));
        put(&m, TABLE, 4, Descriptor::new(u64::MAX - 4, 0x20, 0, 0));
        assert!(matches!(
            parse_at(&m, 4, false),
            Err(ChainError::BufferOutOfRange { .. })
        ));
        // Readable after writable.
        put(
            &m,
            TABLE,
            5,
            Descriptor::new(0x8000, 8, F_WRITE | F_NEXT, 6),
        );
        put(&m, TABLE, 6, Descriptor::new(0x8000, 8, 0, 0));
        assert_eq!(
            parse_at(&m, 5, false),
            Err(ChainError::ReadableAfterWritable)
        );
        // Table outside memory.
        assert!(matches!(
            parse(&m, GuestAddress(0x20_0000), SIZE, 0, false),
            Err(ChainError::TableOutOfRange(_))
        ));
    }

    #[test]
    fn length_overflow_is_caught() {
        // 8192 descriptors of 960 KiB each, all naming the same memory: more than 4 GiB.
        let m = mem();
        let size = 8192u16;
        for i in 0..size {
            let (flags, next) = if i + 1 < size {
                (F_NEXT, i + 1)
            } else {
                (0, 0)
            };
            put(&m, TABLE, i, Descriptor::new(0, 0xf_0000, flags, next));
        }
        assert_eq!(
            parse(&m, GuestAddress(TABLE), size, 0, false),
            Err(ChainError::LengthOverflow)
        );
    }

    #[test]
    fn indirect_tables() {
        let m = mem();
        let ind = 0x4000;
        put(&m, ind, 0, Descriptor::new(0x8000, 44, F_NEXT, 1));
        put(&m, ind, 1, Descriptor::new(0x9000, 64, F_WRITE, 0));
        put(&m, TABLE, 0, Descriptor::new(ind, 32, F_INDIRECT, 0));
        assert_eq!(
            parse_at(&m, 0, false),
            Err(ChainError::IndirectNotNegotiated)
        );
        let c = parse_at(&m, 0, true).unwrap();
        assert_eq!((c.readable().len(), c.writable().len()), (44, 64));

        put(&m, TABLE, 1, Descriptor::new(ind, 33, F_INDIRECT, 0));
        assert_eq!(
            parse_at(&m, 1, true),
            Err(ChainError::IndirectBadLength(33))
        );
        put(&m, TABLE, 1, Descriptor::new(ind, 0, F_INDIRECT, 0));
        assert_eq!(parse_at(&m, 1, true), Err(ChainError::IndirectBadLength(0)));
        put(
            &m,
            TABLE,
            1,
            Descriptor::new(ind, 32, F_INDIRECT | F_NEXT, 2),
        );
        assert_eq!(parse_at(&m, 1, true), Err(ChainError::IndirectWithNext));
        put(&m, TABLE, 1, Descriptor::new(0xf_fff0, 32, F_INDIRECT, 0));
        assert!(matches!(
            parse_at(&m, 1, true),
            Err(ChainError::BufferOutOfRange { .. })
        ));

        // Nested indirect and a loop inside the indirect table.
        let ind2 = 0x5000;
        put(&m, ind2, 0, Descriptor::new(ind, 32, F_INDIRECT, 0));
        put(&m, TABLE, 2, Descriptor::new(ind2, 16, F_INDIRECT, 0));
        assert_eq!(parse_at(&m, 2, true), Err(ChainError::NestedIndirect));
        let ind3 = 0x6000;
        put(&m, ind3, 0, Descriptor::new(0x8000, 4, F_NEXT, 1));
        put(&m, ind3, 1, Descriptor::new(0x8000, 4, F_NEXT, 0));
        put(&m, TABLE, 3, Descriptor::new(ind3, 32, F_INDIRECT, 0));
        assert_eq!(parse_at(&m, 3, true), Err(ChainError::TooLong));
    }
}

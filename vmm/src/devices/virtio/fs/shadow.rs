//! The seam between our validated chains and `fuse-backend-rs`.
//!
//! The FUSE server reads requests through its `Reader` and writes replies through its
//! `VirtioFsWriter`, and both can only be built from a `virtio_queue::DescriptorChain`, which in
//! turn only comes out of a `Queue`. Building them from the guest's own queue would make the
//! crate walk the guest's descriptor table a second time after [`chain::parse`] checked it, and
//! read the request header a second time after we checked it; the guest could change either in
//! between. Instead, [`ShadowQueue`] keeps a small private queue in host memory that the guest
//! cannot reach, writes into it the buffers we already validated (and clipped), with the first
//! one pointing at *our copy* of the request header, and pops the chain from there. The server
//! sees exactly the buffers and the header we checked.
//!
//! The private memory is one extra region appended above guest memory in a memory map of our
//! own (the guest's regions are shared, not copied). Guest buffers never point into it: every
//! guest address was checked against the guest's map alone by [`chain::parse`].
//!
//! [`chain::parse`]: crate::devices::virtio::chain::parse

use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestRegionMmap};

use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::GuestMemoryMmap;

/// Most descriptors one replayed chain holds (the header copy included). A guest chain never
/// holds more descriptors than its queue size, which the device caps below this.
pub const SHADOW_SIZE: u16 = 2048;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;

const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x8000;
const USED_RING: u64 = 0xa000;
const HEADER: u64 = 0xf000;
const PRIVATE_BYTES: usize = 0x1_0000;
/// Gap between the end of guest memory and the private region.
const GAP: u64 = 2 << 20;

/// Why a chain could not be replayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShadowError {
    /// The private queue could not be set up.
    #[error("cannot set up the shadow queue")]
    Setup,
    /// More buffers than the shadow queue holds.
    #[error("chain has more than {SHADOW_SIZE} buffers")]
    TooManyBuffers,
    /// Writing the private queue failed (cannot happen with the fixed layout).
    #[error("cannot write the shadow queue")]
    Write,
}

/// A private split queue whose only job is to hand validated chains to the FUSE server.
pub struct ShadowQueue {
    /// Guest memory plus the private region.
    mem: GuestMemoryMmap,
    base: u64,
    queue: Queue,
}

impl std::fmt::Debug for ShadowQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowQueue")
            .field("base", &format_args!("{:#x}", self.base))
            .finish_non_exhaustive()
    }
}

impl ShadowQueue {
    /// Sets up the private region (64 KiB) above `guest` memory.
    pub fn new(guest: &GuestMemoryMmap) -> Result<Self, ShadowError> {
        let base = guest
            .last_addr()
            .raw_value()
            .checked_add(GAP + 1)
            .and_then(|a| a.checked_next_multiple_of(GAP))
            .ok_or(ShadowError::Setup)?;
        let region = GuestRegionMmap::from_range(GuestAddress(base), PRIVATE_BYTES, None)
            .map_err(|_| ShadowError::Setup)?;
        let mem = guest
            .insert_region(Arc::new(region))
            .map_err(|_| ShadowError::Setup)?;
        let mut queue = Queue::new(SHADOW_SIZE).map_err(|_| ShadowError::Setup)?;
        queue.set_size(SHADOW_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(base + DESC_TABLE);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(base + AVAIL_RING);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(base + USED_RING);
        queue.set_used_ring_address(lo, hi);
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err(ShadowError::Setup);
        }
        Ok(Self { mem, base, queue })
    }

    /// Replays `chain` as: our copy of its request `header`, the rest of its readable bytes,
    /// then its writable bytes, each direction clipped to `limit` bytes (the header counts).
    ///
    /// Returns the chain and the memory to read its buffers with.
    pub fn replay(
        &mut self,
        chain: &Chain,
        header: &[u8; IN_HEADER_SIZE],
        limit: usize,
    ) -> Result<(DescriptorChain<&GuestMemoryMmap>, &GuestMemoryMmap), ShadowError> {
        let header_addr = GuestAddress(self.base + HEADER);
        self.mem
            .write_slice(header, header_addr)
            .map_err(|_| ShadowError::Write)?;
        let body = chain
            .readable()
            .pieces(IN_HEADER_SIZE, limit.saturating_sub(IN_HEADER_SIZE));
        let reply = chain.writable().pieces(0, limit);
        let pieces = std::iter::once((header_addr, IN_HEADER_SIZE))
            .chain(body)
            .map(|p| (p, 0))
            .chain(reply.map(|p| (p, VRING_DESC_F_WRITE as u16)));

        let mut count: u16 = 0;
        for ((addr, len), flags) in pieces {
            if count >= SHADOW_SIZE {
                return Err(ShadowError::TooManyBuffers);
            }
            // Every piece lies within one descriptor of the chain, so it fits in a u32.
            let flags = flags | VRING_DESC_F_NEXT as u16;
            self.put(count, Descriptor::new(addr.0, len as u32, flags, count + 1))?;
            count += 1;
        }
        // Terminate the chain at the last descriptor (there is at least the header).
        let last = count - 1;
        let d = self.get(last)?;
        let flags = d.flags() & !(VRING_DESC_F_NEXT as u16);
        self.put(last, Descriptor::new(d.addr().0, d.len(), flags, 0))?;

        // avail.ring[0] = 0 (the head), avail.idx = 1, and the device side starts at 0 again.
        let avail = self.base + AVAIL_RING;
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4))
            .map_err(|_| ShadowError::Write)?;
        self.mem
            .write_obj(1u16, GuestAddress(avail + 2))
            .map_err(|_| ShadowError::Write)?;
        self.queue.set_next_avail(0);
        let mem = &self.mem;
        let chain = self
            .queue
            .pop_descriptor_chain(mem)
            .ok_or(ShadowError::Write)?;
        Ok((chain, mem))
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        GuestAddress(self.base + DESC_TABLE + u64::from(index) * 16)
    }

    fn put(&self, index: u16, desc: Descriptor) -> Result<(), ShadowError> {
        self.mem
            .write_obj(RawDescriptor::from(desc), self.desc_addr(index))
            .map_err(|_| ShadowError::Write)
    }

    fn get(&self, index: u16) -> Result<Descriptor, ShadowError> {
        self.mem
            .read_obj::<RawDescriptor>(self.desc_addr(index))
            .map(Descriptor::from)
            .map_err(|_| ShadowError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::chain;

    const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put_guest(mem: &GuestMemoryMmap, index: u16, d: Descriptor) {
        mem.write_obj(RawDescriptor::from(d), GuestAddress(u64::from(index) * 16))
            .unwrap();
    }

    #[test]
    fn replays_our_header_and_the_validated_buffers() {
        let mem = guest();
        put_guest(&mem, 0, Descriptor::new(0x8000, 48, F_NEXT, 5));
        put_guest(&mem, 5, Descriptor::new(0x9000, 0, F_NEXT, 2));
        put_guest(&mem, 2, Descriptor::new(0xa000, 100, F_NEXT | F_WRITE, 3));
        put_guest(&mem, 3, Descriptor::new(0xb000, 50, F_WRITE, 0));
        let c = chain::parse(&mem, GuestAddress(0), 8, 0, false).unwrap();
        // The guest rewrites its table after validation: the replay must not care.
        put_guest(&mem, 0, Descriptor::new(0xdead_0000, 4096, 0, 0));

        let mut shadow = ShadowQueue::new(&mem).unwrap();
        let private = shadow.base + HEADER;
        let header = [7u8; IN_HEADER_SIZE];
        let (descs, m) = shadow.replay(&c, &header, usize::MAX).unwrap();
        let seen: Vec<_> = descs
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        // The header copy is readable through the memory the server gets.
        let mut back = [0u8; IN_HEADER_SIZE];
        m.read_slice(&mut back, GuestAddress(private)).unwrap();
        assert_eq!(back, header);
        // Header copy, the 8 body bytes after the guest's header, the empty buffer skipped.
        assert_eq!(
            seen,
            [
                (private, 40, false),
                (0x8000 + 40, 8, false),
                (0xa000, 100, true),
                (0xb000, 50, true)
            ]
        );

        // Clipping: at most 44 bytes each way.
        let seen: Vec<_> = shadow
            .replay(&c, &header, 44)
            .unwrap()
            .0
            .map(|d| (d.addr().0, d.len()))
            .collect();
        assert_eq!(seen, [(private, 40), (0x8000 + 40, 4), (0xa000, 44)]);
        // A second replay starts fresh.
        assert_eq!(shadow.replay(&c, &header, usize::MAX).unwrap().0.count(), 4);
    }

    #[test]
    fn private_region_is_outside_guest_memory() {
        let mem = guest();
        let shadow = ShadowQueue::new(&mem).unwrap();
        assert!(mem.find_region(GuestAddress(shadow.base)).is_none());
        assert!(shadow.base > mem.last_addr().0 + GAP);
    }
}

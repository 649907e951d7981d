//! The virtio-vsock packet: a 44-byte header, then `len` bytes of stream data (spec 5.10.6).
//!
//! A TX packet is the device-readable part of a TX chain; an RX packet is written into the
//! device-writable part of an RX chain. The header may be split over several descriptors, and
//! the data may follow it in the same descriptor (Linux ≥ 6.2, and its RX buffers) or in others;
//! [`Buffers`] hides that. The header is decoded once into plain integers, so nothing the guest
//! changes afterwards can race with our checks.

use super::super::chain::{Buffers, Chain};
use super::super::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload we accept in one TX packet (Linux never sends more:
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: u32 = 64 * 1024;

/// The host's CID (`VMADDR_CID_HOST`): every packet the guest sends us goes to it.
pub const HOST_CID: u64 = 2;

/// Stream socket type, the only one we offer.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_OP_*`.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset (refused, aborted, or the last word of a clean close).
pub const OP_RST: u16 = 3;
/// The sender will no longer receive and/or send (flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Stream data.
pub const OP_RW: u16 = 5;
/// Unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A decoded `struct virtio_vsock_hdr` (all fields little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the wire form.
    pub fn decode(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the wire form.
    pub fn encode(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the device drops (the chain itself was well formed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// A TX chain with device-writable buffers, or an RX chain with device-readable ones.
    #[error("descriptor direction is wrong for this queue")]
    WrongDirection,
    /// Fewer bytes than a header.
    #[error("buffer of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The header's `len` is larger than we ever accept.
    #[error("payload length {0} exceeds the maximum")]
    TooLong(u32),
    /// The header's `len` is larger than the buffers that follow it.
    #[error("payload length {len} exceeds the {avail} bytes present")]
    Truncated { len: u32, avail: usize },
    /// Guest memory went away under us (cannot happen with fixed memory; reported anyway).
    #[error("guest memory access failed")]
    Memory,
}

/// A packet the guest sent: the decoded header and a view of its payload in guest memory.
#[derive(Debug)]
pub struct TxPacket<'a> {
    /// The header, copied out of guest memory.
    pub hdr: Header,
    /// The payload, `hdr.len` bytes.
    pub data: TxData<'a>,
}

impl<'a> TxPacket<'a> {
    /// Parses the device-readable part of a TX chain.
    pub fn parse(mem: &'a GuestMemoryMmap, chain: &'a Chain) -> Result<Self, PacketError> {
        if !chain.writable().is_empty() {
            return Err(PacketError::WrongDirection);
        }
        let bufs = chain.readable();
        if bufs.len() < HDR_SIZE {
            return Err(PacketError::TooShort(bufs.len()));
        }
        let mut raw = [0u8; HDR_SIZE];
        bufs.read_at(mem, 0, &mut raw)
            .map_err(|_| PacketError::Memory)?;
        let hdr = Header::decode(&raw);
        if hdr.len > MAX_PKT_DATA {
            return Err(PacketError::TooLong(hdr.len));
        }
        let avail = bufs.len() - HDR_SIZE;
        if hdr.len as usize > avail {
            return Err(PacketError::Truncated {
                len: hdr.len,
                avail,
            });
        }
        Ok(Self {
            hdr,
            data: TxData {
                mem,
                bufs,
                offset: HDR_SIZE,
                end: HDR_SIZE + hdr.len as usize,
            },
        })
    }
}

/// The not yet consumed part of a TX packet's payload.
#[derive(Debug)]
pub struct TxData<'a> {
    mem: &'a GuestMemoryMmap,
    bufs: Buffers<'a>,
    offset: usize,
    end: usize,
}

impl TxData<'_> {
    /// Bytes left.
    pub fn len(&self) -> usize {
        self.end - self.offset
    }

    /// True if all bytes were consumed.
    pub fn is_empty(&self) -> bool {
        self.offset == self.end
    }

    /// Writes as much as `dst` takes without blocking, straight from guest memory.
    pub fn write_to<W: vm_memory::WriteVolatile>(&mut self, dst: &mut W) -> std::io::Result<usize> {
        let n = self.bufs.write_to(self.mem, self.offset, self.len(), dst)?;
        self.offset += n;
        Ok(n)
    }

    /// Copies the next `buf.len()` bytes into `buf`.
    pub fn copy_to(&mut self, buf: &mut [u8]) -> Result<(), PacketError> {
        if buf.len() > self.len() {
            return Err(PacketError::Memory);
        }
        self.bufs
            .read_at(self.mem, self.offset, buf)
            .map_err(|_| PacketError::Memory)?;
        self.offset += buf.len();
        Ok(())
    }
}

/// Room for one packet to the guest: the device-writable part of an RX chain.
#[derive(Debug)]
pub struct RxBuffer<'a> {
    mem: &'a GuestMemoryMmap,
    bufs: Buffers<'a>,
}

impl<'a> RxBuffer<'a> {
    /// Checks that an RX chain can hold at least a header.
    pub fn new(mem: &'a GuestMemoryMmap, chain: &'a Chain) -> Result<Self, PacketError> {
        if !chain.readable().is_empty() {
            return Err(PacketError::WrongDirection);
        }
        let bufs = chain.writable();
        if bufs.len() < HDR_SIZE {
            return Err(PacketError::TooShort(bufs.len()));
        }
        Ok(Self { mem, bufs })
    }

    /// Payload bytes that fit after the header.
    pub fn data_capacity(&self) -> usize {
        self.bufs.len() - HDR_SIZE
    }

    /// Reads up to `max` bytes of payload from `src` into guest memory (one read per guest
    /// range). Returns 0 at end of file; `WouldBlock` if nothing was there.
    pub fn read_data_from<R: vm_memory::ReadVolatile>(
        &self,
        src: &mut R,
        max: usize,
    ) -> std::io::Result<usize> {
        let count = max.min(self.data_capacity());
        self.bufs.read_from(self.mem, HDR_SIZE, count, src)
    }

    /// Writes the header (the payload, `hdr.len` bytes, is already in place).
    pub fn finish(&self, hdr: &Header) -> Result<(), PacketError> {
        self.bufs
            .write_at(self.mem, 0, &hdr.encode())
            .map_err(|_| PacketError::Memory)
    }
}

/// The used length to report for a packet with this header: header plus payload.
pub fn used_len(hdr: &Header) -> u32 {
    // Payloads we write are bounded by an RX buffer (< 4 GiB in total, parse() checked).
    (HDR_SIZE as u32).saturating_add(hdr.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_layout() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 0x4_0000,
            fwd_cnt: 99,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), h);
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[40..44], &[99, 0, 0, 0]);
    }
}

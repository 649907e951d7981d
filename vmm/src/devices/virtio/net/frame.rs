//! The guest's frames in guest memory: TX chains read into one contiguous frame for the tap,
//! and tap frames spread over RX chains. Pure functions over guest memory and validated chains,
//! so unit tests and the fuzz target drive them without a device.
//!
//! Everything here is guest-controlled: lengths are bounded before anything is copied, and a
//! bad chain or header drops the frame (counted by the caller), never panics.

use vm_memory::GuestMemory;

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::chain::{Buffers, Chain};

/// Longest frame after the header that we move either way: a 64 KiB GSO packet plus its
/// link-layer headers, with room to spare.
pub const MAX_FRAME_LEN: usize = 65_536 + 64;
/// Longest TX chain we accept, and the size of each bounce buffer.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;

/// What the guest may put in a TX header, from the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxRules {
    /// VIRTIO_NET_F_CSUM: partial checksums allowed.
    pub csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4: TCPv4 GSO allowed.
    pub tso4: bool,
}

/// Why a TX chain was dropped (for a debug log; the caller counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxDrop {
    /// Shorter than the header.
    #[error("chain shorter than the header")]
    Short,
    /// Longer than [`MAX_PACKET_LEN`].
    #[error("chain longer than a frame can be")]
    Long,
    /// A device-writable buffer in a TX chain.
    #[error("writable buffer in a tx chain")]
    Writable,
    /// Guest memory could not be read (cannot happen for a validated chain).
    #[error("cannot read the chain")]
    Read,
    /// An offload the guest did not negotiate, or an unknown GSO type.
    #[error("header asks for an offload not negotiated")]
    Offload,
}

/// Copies the TX chain (header + frame) into `buf` and checks the header against `rules`;
/// returns the packet length. `buf` must hold [`MAX_PACKET_LEN`] bytes.
pub fn read_tx<M: GuestMemory>(
    mem: &M,
    chain: &Chain,
    rules: TxRules,
    buf: &mut [u8],
) -> Result<usize, TxDrop> {
    if !chain.writable().is_empty() {
        return Err(TxDrop::Writable);
    }
    let readable = chain.readable();
    let len = readable.len();
    if len < VNET_HDR_LEN {
        return Err(TxDrop::Short);
    }
    if len > MAX_PACKET_LEN || len > buf.len() {
        return Err(TxDrop::Long);
    }
    readable
        .read_at(mem, 0, &mut buf[..len])
        .map_err(|_| TxDrop::Read)?;
    check_tx_header(&buf[..VNET_HDR_LEN], rules)?;
    Ok(len)
}

/// The offloads a TX header asks for must have been negotiated; the host kernel checks the
/// rest (offsets inside the frame) when the tap parses it.
fn check_tx_header(hdr: &[u8], rules: TxRules) -> Result<(), TxDrop> {
    let (flags, gso_type) = (hdr[0], hdr[1]);
    if flags & HDR_F_NEEDS_CSUM != 0 && !rules.csum {
        return Err(TxDrop::Offload);
    }
    match gso_type {
        GSO_NONE => Ok(()),
        GSO_TCPV4 if rules.tso4 => Ok(()),
        _ => Err(TxDrop::Offload),
    }
}

/// Why a frame could not be put into the RX buffers offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFill {
    /// The buffers offered so far are too small: offer more (MRG_RXBUF) or drop the frame.
    NeedMore,
    /// Guest memory could not be written (cannot happen for validated chains).
    Write,
}

/// Spreads `packet` (header + frame, as read from the tap) over the writable buffers of
/// `chains`, in order, setting the header's `num_buffers` to the number of chains used.
/// Returns the bytes written to each chain (the used lengths). The first chain must hold the
/// whole header.
pub fn write_rx<M: GuestMemory>(
    mem: &M,
    chains: &[Chain],
    packet: &mut [u8],
) -> Result<Vec<u32>, RxFill> {
    let room: usize = chains.iter().map(|c| c.writable().len()).sum();
    let first = chains.first().map_or(0, |c| c.writable().len());
    if room < packet.len() || first < VNET_HDR_LEN || packet.len() < VNET_HDR_LEN {
        return Err(RxFill::NeedMore);
    }
    let mut used = Vec::with_capacity(chains.len());
    let mut offset = 0;
    for chain in chains {
        if offset == packet.len() {
            break;
        }
        let w: Buffers<'_> = chain.writable();
        let n = w.len().min(packet.len() - offset);
        used.push(n as u32);
        offset += n;
    }
    let num_buffers = used.len() as u16;
    packet[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    let mut offset = 0;
    for (chain, &n) in chains.iter().zip(&used) {
        let n = n as usize;
        chain
            .writable()
            .write_at(mem, 0, &packet[offset..offset + n])
            .map_err(|_| RxFill::Write)?;
        offset += n;
    }
    Ok(used)
}

//! One descriptor chain → one FUSE request → one reply, on the monitor's side.
//!
//! We copy the request out of guest memory once, header first, and check the header from our
//! copy: a chain too short for a header is dropped, an opcode the server does not dispatch
//! (or one we do not serve, DAX mappings) is answered with `ENOSYS` here, and so is never sent.
//! `fuse-backend-rs` turns opcodes into its `Opcode` enum with a `transmute` when trace logging
//! is on, which is undefined for the holes in the opcode space (0, 7, 19), so it must never see
//! those. A request longer than [`MAX_MESSAGE`] (the largest the server accepts, which no
//! honest guest sends) is answered with `EINVAL` without being read. The rest of the readable
//! bytes follow the header into the link's fixed buffer, and the server process gets exactly
//! that copy: it never reads guest memory, so a guest that rewrites its buffers after we
//! checked them changes nothing.
//!
//! The reply comes back as bytes, at most the chain's writable length (clipped to
//! [`MAX_MESSAGE`]): we scatter them into the writable descriptors and report their length.
//! Whatever the server could not answer (it fails to decode a body, a name is not a C string,
//! a reply does not fit), we answer with `EINVAL` unless the opcode takes no reply.

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use vm_memory::ByteValued;

use super::link::{Answer, LinkError, ServerLink};
use super::metrics::{add, FsMetrics};
pub use super::wire::MAX_MESSAGE;
use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::GuestMemoryMmap;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = 16;

const FORGET: u32 = 2;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

/// Opcodes the server dispatches and we let it answer: everything from LOOKUP (1) to LSEEK (46)
/// except the unassigned 7 and 19. Not COPY_FILE_RANGE (47), SETUPMAPPING/REMOVEMAPPING (48,
/// 49: no DAX window) or anything newer.
pub fn served(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=46)
}

/// Opcodes the guest expects no reply to.
fn no_reply(opcode: u32) -> bool {
    matches!(opcode, FORGET | INTERRUPT | BATCH_FORGET)
}

/// The server's link and what is needed to answer one request.
pub struct Handler<'a> {
    pub link: &'a mut ServerLink,
    pub mem: &'a GuestMemoryMmap,
    pub metrics: &'a FsMetrics,
}

impl Handler<'_> {
    /// Serves the request in `chain` and returns how many bytes of reply it wrote (the used
    /// length for the used ring). An error means the server is gone or broke the protocol:
    /// the chain is unanswered and the device must stop.
    pub fn handle(&mut self, chain: &Chain) -> Result<u32, LinkError> {
        let mut raw = [0u8; IN_HEADER_SIZE];
        let readable = chain.readable();
        if readable.len() < IN_HEADER_SIZE || readable.read_at(self.mem, 0, &mut raw).is_err() {
            add(&self.metrics.dropped, 1);
            return Ok(0);
        }
        let mut header = InHeader::default();
        header.as_mut_slice().copy_from_slice(&raw);
        self.metrics.count_request(header.opcode);
        if !served(header.opcode) {
            add(&self.metrics.refused, 1);
            tracing::debug!("virtio-fs: opcode {} refused", header.opcode);
            return Ok(self.reply_error(chain, &header, libc::ENOSYS));
        }
        let len = readable.len();
        if len > MAX_MESSAGE {
            add(&self.metrics.refused, 1);
            tracing::debug!("virtio-fs: request of {len} bytes refused");
            return Ok(self.reply_error(chain, &header, libc::EINVAL));
        }
        let buf = self.link.request_buffer();
        buf[..IN_HEADER_SIZE].copy_from_slice(&raw);
        if readable
            .read_at(self.mem, IN_HEADER_SIZE, &mut buf[IN_HEADER_SIZE..len])
            .is_err()
        {
            add(&self.metrics.dropped, 1);
            return Ok(0);
        }
        let writable = chain.writable();
        match self.link.exchange(len, writable.len().min(MAX_MESSAGE))? {
            Answer::Served(reply) => {
                if writable.write_at(self.mem, 0, reply).is_err() {
                    add(&self.metrics.dropped, 1);
                    return Ok(0);
                }
                // At most MAX_MESSAGE bytes: fits.
                Ok(u32::try_from(reply.len()).unwrap_or(0))
            }
            Answer::Failed => {
                add(&self.metrics.server_errors, 1);
                tracing::debug!(
                    "virtio-fs: request {} (opcode {}) failed",
                    header.unique,
                    header.opcode
                );
                Ok(self.reply_error(chain, &header, libc::EINVAL))
            }
        }
    }

    /// Answers `header` with `-errno`, if it takes a reply and there is room for one.
    fn reply_error(&self, chain: &Chain, header: &InHeader, errno: i32) -> u32 {
        if no_reply(header.opcode) {
            return 0;
        }
        let out = OutHeader {
            len: OUT_HEADER_SIZE as u32,
            error: -errno,
            unique: header.unique,
        };
        let writable = chain.writable();
        if writable.len() < OUT_HEADER_SIZE
            || writable.write_at(self.mem, 0, out.as_slice()).is_err()
        {
            add(&self.metrics.dropped, 1);
            return 0;
        }
        OUT_HEADER_SIZE as u32
    }
}

//! One descriptor chain → one FUSE request → one reply.
//!
//! Before the FUSE server sees a request we copy its header out of guest memory and check it:
//! a chain too short for a header is dropped, an opcode the server does not dispatch (or one we
//! do not serve, DAX mappings) is answered with `ENOSYS` here. `fuse-backend-rs` turns opcodes
//! into its `Opcode` enum with a `transmute` when trace logging is on, which is undefined for
//! the holes in the opcode space (0, 7, 19), so it must never see those. The server then gets
//! the chain through the [`ShadowQueue`], with our copy of the header, each direction clipped
//! to the largest message it accepts; its allocations are bounded by that.
//!
//! Whatever the server does not answer itself (it fails to decode a body, a name is not a C
//! string, a reply does not fit), we answer with `EINVAL` unless the opcode takes no reply.

use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vm_memory::ByteValued;

use super::filesystem::ShareFs;
use super::metrics::{add, FsMetrics};
use super::shadow::{ShadowQueue, IN_HEADER_SIZE};
use crate::devices::virtio::chain::Chain;
use crate::devices::virtio::GuestMemoryMmap;

/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = 16;
/// The most bytes we hand the server in either direction: its largest message (1 MiB of data
/// plus 4 KiB of headers, what `max_pages = 256` lets the guest send).
pub const MAX_MESSAGE: usize = MAX_BUFFER_SIZE as usize + 0x1000;

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

/// The server and what it needs to answer one request.
pub struct Handler<'a> {
    pub server: &'a Server<Arc<ShareFs>>,
    pub mem: &'a GuestMemoryMmap,
    pub shadow: &'a mut ShadowQueue,
    pub metrics: &'a FsMetrics,
}

impl Handler<'_> {
    /// Serves the request in `chain` and returns how many bytes of reply it wrote (the used
    /// length for the used ring).
    pub fn handle(&mut self, chain: &Chain) -> u32 {
        let mut raw = [0u8; IN_HEADER_SIZE];
        let readable = chain.readable();
        if readable.len() < IN_HEADER_SIZE || readable.read_at(self.mem, 0, &mut raw).is_err() {
            add(&self.metrics.dropped, 1);
            return 0;
        }
        let mut header = InHeader::default();
        header.as_mut_slice().copy_from_slice(&raw);
        self.metrics.count_request(header.opcode);
        if !served(header.opcode) {
            add(&self.metrics.refused, 1);
            tracing::debug!("virtio-fs: opcode {} refused", header.opcode);
            return self.reply_error(chain, &header, libc::ENOSYS);
        }

        match self.serve(chain, &raw) {
            Ok(n) => u32::try_from(n).unwrap_or(0),
            Err(e) => {
                add(&self.metrics.server_errors, 1);
                tracing::debug!(
                    "virtio-fs: request {} (opcode {}) failed: {e}",
                    header.unique,
                    header.opcode
                );
                self.reply_error(chain, &header, libc::EINVAL)
            }
        }
    }

    fn serve(&mut self, chain: &Chain, header: &[u8; IN_HEADER_SIZE]) -> Result<usize, String> {
        let (desc, mem) = self
            .shadow
            .replay(chain, header, MAX_MESSAGE)
            .map_err(|e| e.to_string())?;
        let reader = Reader::from_descriptor_chain(mem, desc.clone()).map_err(|e| e.to_string())?;
        let writer = VirtioFsWriter::new(mem, desc).map_err(|e| e.to_string())?;
        self.server
            .handle_message(reader, writer.into(), None, None)
            .map_err(|e| e.to_string())
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

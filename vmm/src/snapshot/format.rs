//! The state file's framing: a fixed header, then the [`VmSnapshot`] in postcard.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "BHVMSNAP"
//! 8       4     format version (u32 LE): bumped whenever VmSnapshot's layout changes
//! 12      4     reserved, 0
//! 16      8     payload length (u64 LE)
//! 24      4     CRC-32 (IEEE) of the payload (u32 LE)
//! 28      …     payload: postcard encoding of VmSnapshot
//! ```
//!
//! Reading checks, in this order and before decoding anything: the size bound, the magic, the
//! format version (so an older or newer snapshot gets a version error, not a checksum error),
//! that the file is exactly header + payload long, and the checksum. Only then is the payload
//! decoded, and it must be consumed exactly.

use std::io::Read;
use std::path::Path;

use super::state::VmSnapshot;

/// The file's magic.
pub const MAGIC: [u8; 8] = *b"BHVMSNAP";
/// The layout of [`VmSnapshot`] this VMM reads and writes.
pub const FORMAT_VERSION: u32 = 2;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 28;
/// Largest state file we read (a few KiB per vCPU; 254 vCPUs fit many times over).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read.
    #[error("cannot read the state file")]
    Io(#[source] std::io::Error),
    /// Too large to be ours.
    #[error("state file is {0} bytes, more than a snapshot can be")]
    TooLarge(u64),
    /// Shorter than the header, or not our magic.
    #[error("not a bulkhead-vmm snapshot")]
    NotASnapshot,
    /// Another format version.
    #[error("snapshot format {found}, this bulkhead-vmm reads format {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// File size and header disagree.
    #[error("state file is {actual} bytes, its header says {expected} (truncated or padded)")]
    Size {
        /// What the header implies.
        expected: u64,
        /// What the file has.
        actual: u64,
    },
    /// Checksum mismatch.
    #[error("state file checksum mismatch (corrupted)")]
    Checksum,
    /// The payload does not decode (a VMM bug, or corruption the checksum missed).
    #[error("state file does not decode")]
    Decode(#[source] postcard::Error),
    /// The payload decodes but leaves bytes over.
    #[error("state file has trailing bytes")]
    Trailing,
    /// Encoding failed (a VMM bug).
    #[error("cannot encode the snapshot state")]
    Encode(#[source] postcard::Error),
}

/// The complete state file for `snapshot`.
pub fn encode(snapshot: &VmSnapshot) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(snapshot).map_err(FormatError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Decodes a complete state file (see the module docs for the checks).
pub fn decode(bytes: &[u8]) -> Result<VmSnapshot, FormatError> {
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(bytes.len() as u64));
    }
    if bytes.len() < HEADER_LEN || bytes[..8] != MAGIC {
        return Err(FormatError::NotASnapshot);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let payload_len = u64::from_le_bytes(len);
    let expected = payload_len.saturating_add(HEADER_LEN as u64);
    if expected != bytes.len() as u64 {
        return Err(FormatError::Size {
            expected,
            actual: bytes.len() as u64,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if crc32fast::hash(payload) != u32_at(bytes, 24) {
        return Err(FormatError::Checksum);
    }
    let (snapshot, rest) =
        postcard::take_from_bytes::<VmSnapshot>(payload).map_err(FormatError::Decode)?;
    if !rest.is_empty() {
        return Err(FormatError::Trailing);
    }
    Ok(snapshot)
}

/// Reads and decodes the state file at `path`, refusing a file too large before reading it.
pub fn read(path: &Path) -> Result<VmSnapshot, FormatError> {
    let file = std::fs::File::open(path).map_err(FormatError::Io)?;
    let size = file.metadata().map_err(FormatError::Io)?.len();
    if size > MAX_STATE_BYTES {
        return Err(FormatError::TooLarge(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(FormatError::Io)?;
    decode(&bytes)
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;

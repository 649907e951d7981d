//! The header that opens every stdio connection to the agent's stream port.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "BHST"
//! 4       1     version, 1
//! 5       1     kind: 1 stdin, 2 stdout, 3 stderr, 4 terminal (both directions)
//! 6       2     length N of the process id, big-endian, 1..=1024
//! 8       N     process id (UTF-8, see crate::validate_id)
//! ```
//!
//! After the header the connection is the raw byte stream: host→guest for stdin, guest→host for
//! stdout/stderr, both ways for a terminal. The agent does not answer the header; it starts the
//! process only once every stream declared in the create call is attached, and closes a
//! connection whose header is malformed or names no waiting stream. A shutdown of the host's
//! writing side is EOF on the process's stdin.

use crate::IdError;

/// First bytes of every stream connection.
pub const MAGIC: [u8; 4] = *b"BHST";
/// Header version written by this crate.
pub const VERSION: u8 = 1;
/// Bytes before the process id.
pub const FIXED_LEN: usize = 8;
/// Longest possible header.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + crate::MAX_ID_LEN;

/// Which stdio stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin = 1,
    Stdout = 2,
    Stderr = 3,
    /// The pseudo-terminal: input host→guest and output guest→host on one connection.
    Terminal = 4,
}

impl StreamKind {
    fn from_u8(v: u8) -> Option<StreamKind> {
        match v {
            1 => Some(StreamKind::Stdin),
            2 => Some(StreamKind::Stdout),
            3 => Some(StreamKind::Stderr),
            4 => Some(StreamKind::Terminal),
            _ => None,
        }
    }
}

/// A decoded stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub process_id: String,
    pub kind: StreamKind,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a stream header")]
    BadMagic,
    #[error("unsupported stream header version {0}")]
    Version(u8),
    #[error("unknown stream kind {0}")]
    Kind(u8),
    #[error("bad process id")]
    Id(#[from] IdError),
}

impl StreamHeader {
    pub fn new(process_id: impl Into<String>, kind: StreamKind) -> Self {
        StreamHeader {
            process_id: process_id.into(),
            kind,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        crate::validate_id(&self.process_id)?;
        let id = self.process_id.as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + id.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        // validate_id bounds the length by MAX_ID_LEN, which fits in u16.
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        Ok(out)
    }

    /// Decodes a header from the start of `buf`: `Ok(None)` if more bytes are needed, else the
    /// header and how many bytes it took (what follows is stream data). Errors are detected as
    /// early as possible, so a wrong magic is refused after 4 bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(StreamHeader, usize)>, HeaderError> {
        let magic_len = buf.len().min(MAGIC.len());
        if buf[..magic_len] != MAGIC[..magic_len] {
            return Err(HeaderError::BadMagic);
        }
        let Some(fixed) = buf.get(..FIXED_LEN) else {
            return Ok(None);
        };
        if fixed[4] != VERSION {
            return Err(HeaderError::Version(fixed[4]));
        }
        let kind = StreamKind::from_u8(fixed[5]).ok_or(HeaderError::Kind(fixed[5]))?;
        let len = u16::from_be_bytes([fixed[6], fixed[7]]) as usize;
        if len == 0 || len > crate::MAX_ID_LEN {
            return Err(IdError::Length(len).into());
        }
        let Some(id) = buf.get(FIXED_LEN..FIXED_LEN + len) else {
            return Ok(None);
        };
        let id = std::str::from_utf8(id).map_err(|_| IdError::Utf8)?;
        crate::validate_id(id)?;
        Ok(Some((StreamHeader::new(id, kind), FIXED_LEN + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_trailing_data() {
        let h = StreamHeader::new("exec-1", StreamKind::Stdin);
        let mut bytes = h.encode().unwrap();
        assert_eq!(&bytes[..8], b"BHST\x01\x01\x00\x06");
        let header_len = bytes.len();
        bytes.extend_from_slice(b"stdin data");
        for cut in 0..header_len {
            assert_eq!(StreamHeader::decode(&bytes[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(StreamHeader::decode(&bytes), Ok(Some((h, header_len))));
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in [
            StreamKind::Stdin,
            StreamKind::Stdout,
            StreamKind::Stderr,
            StreamKind::Terminal,
        ] {
            let h = StreamHeader::new("c", kind);
            let bytes = h.encode().unwrap();
            assert_eq!(StreamHeader::decode(&bytes).unwrap().unwrap().0, h);
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(StreamHeader::decode(b"GET "), Err(HeaderError::BadMagic));
        assert_eq!(StreamHeader::decode(b"BX"), Err(HeaderError::BadMagic));
        assert_eq!(
            StreamHeader::decode(b"BHST\x02\x01\x00\x01a"),
            Err(HeaderError::Version(2))
        );
        assert_eq!(
            StreamHeader::decode(b"BHST\x01\x09\x00\x01a"),
            Err(HeaderError::Kind(9))
        );
        assert_eq!(
            StreamHeader::decode(b"BHST\x01\x01\x00\x00"),
            Err(HeaderError::Id(IdError::Length(0)))
        );
        assert_eq!(
            StreamHeader::decode(b"BHST\x01\x01\xff\xff"),
            Err(HeaderError::Id(IdError::Length(0xffff)))
        );
        assert_eq!(
            StreamHeader::decode(b"BHST\x01\x01\x00\x02\xff\xfe"),
            Err(HeaderError::Id(IdError::Utf8))
        );
        assert_eq!(
            StreamHeader::decode(b"BHST\x01\x01\x00\x02a/"),
            Err(HeaderError::Id(IdError::Char('/')))
        );
        assert!(StreamHeader::new("", StreamKind::Stdout).encode().is_err());
    }
}

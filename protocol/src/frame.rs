//! ttrpc framing: a 10-byte header (payload length u32, stream id u32, both big-endian; message
//! type u8; flags u8) followed by the payload.
//!
//! The decoder is fed whatever bytes arrive and hands out complete frames. It is the first code
//! to touch what the other side sends (for the host: a possibly hostile guest), so it checks the
//! declared length against [`MAX_PAYLOAD`] before buffering a byte of the payload and never
//! panics; `fuzz/fuzz_targets/frame.rs` holds it to that.

/// Header length in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest payload accepted, as in ttrpc (4 MiB).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Message type of a request frame.
pub const KIND_REQUEST: u8 = 1;
/// Message type of a response frame.
pub const KIND_RESPONSE: u8 = 2;
/// Message type of a streaming data frame (part of ttrpc, unused by Bulkhead).
pub const KIND_DATA: u8 = 3;

/// One complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Pairs a response with its request; clients use odd numbers.
    pub stream_id: u32,
    /// One of the `KIND_*` constants (anything else is the receiver's to reject).
    pub kind: u8,
    /// ttrpc stream flags; zero for unary calls.
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Errors of the framing layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame declares (or would carry) a payload over [`MAX_PAYLOAD`].
    #[error("frame payload of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Appends one frame to `out`.
pub fn encode(
    stream_id: u32,
    kind: u8,
    flags: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    out.reserve(HEADER_LEN + payload.len());
    // MAX_PAYLOAD fits in u32, checked above.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(payload);
    Ok(())
}

/// Rewrites the stream id of an encoded frame (e.g. one encoded before its id was known).
/// Does nothing to a buffer too short to hold a header.
pub fn set_stream_id(encoded: &mut [u8], stream_id: u32) {
    if let Some(field) = encoded.get_mut(4..8) {
        field.copy_from_slice(&stream_id.to_be_bytes());
    }
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` before this offset are already handed out.
    start: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the stream
    /// is out of sync; the caller must drop the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        let Some(header) = avail.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let Some(payload) = avail.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let frame = Frame {
            stream_id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            kind: header[8],
            flags: header[9],
            payload: payload.to_vec(),
        };
        self.start += HEADER_LEN + len;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut wire = Vec::new();
        encode(1, KIND_REQUEST, 0, b"hello", &mut wire).unwrap();
        encode(3, KIND_RESPONSE, 2, b"", &mut wire).unwrap();
        encode(0xdead_beef, KIND_DATA, 0, &[7; 300], &mut wire).unwrap();
        for chunk in [1, 2, 9, 10, 11, 64, wire.len()] {
            let mut dec = Decoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                while let Some(frame) = dec.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[0].payload, b"hello");
            assert_eq!((got[0].stream_id, got[0].kind), (1, KIND_REQUEST));
            assert_eq!((got[1].stream_id, got[1].flags), (3, 2));
            assert!(got[1].payload.is_empty());
            assert_eq!(got[2].stream_id, 0xdead_beef);
            assert_eq!(got[2].payload.len(), 300);
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn header_layout_is_ttrpc() {
        let mut wire = Vec::new();
        encode(5, KIND_RESPONSE, 1, b"ab", &mut wire).unwrap();
        assert_eq!(wire, [0, 0, 0, 2, 0, 0, 0, 5, 2, 1, b'a', b'b']);
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut dec = Decoder::new();
        dec.push(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0]);
        assert_eq!(dec.next_frame(), Err(FrameError::TooLarge(0xffff_ffff)));
        let mut out = Vec::new();
        let big = vec![0; MAX_PAYLOAD + 1];
        assert_eq!(
            encode(1, KIND_REQUEST, 0, &big, &mut out),
            Err(FrameError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn partial_input_waits() {
        let mut dec = Decoder::new();
        dec.push(&[0, 0, 0, 4, 0, 0, 0, 1, 1, 0, b'x']);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(b"yz");
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(b"w");
        assert_eq!(dec.next_frame().unwrap().unwrap().payload, b"xyzw");
    }
}

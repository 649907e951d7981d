//! One vsock stream between a guest socket and a host Unix stream, with credit flow control.
//!
//! Directions are named from the guest's side of the wire: data the guest *sends* reaches us
//! in TX packets and goes to the host stream; data we *send* to the guest is read from the host
//! stream straight into RX buffers.
//!
//! Flow control (spec 5.10.6.3), both ways:
//! - guest → host: we advertise `buf_alloc` and count `fwd_cnt`, the bytes we handed to the host
//!   stream. The guest never has more than `buf_alloc` bytes outstanding, so what the host stream
//!   does not take at once fits in a [`TxBuf`] of that size; a guest that overruns it is reset.
//!   Credit updates go out only when the guest's view of our free space has fallen below half
//!   the window and we really have freed half of it, so a fast stream costs one update per half
//!   window rather than one per packet.
//! - host → guest: we read from the host stream only as much as the guest's advertised credit
//!   allows and only into an RX buffer we already hold. A guest that reads slowly therefore
//!   leaves the data in the host socket, and the host writer blocks, instead of us buffering.

use std::io;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{
    Header, RxBuffer, TxData, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};
use super::txbuf::TxBuf;
use super::unix;

/// Identifies a connection: our (host) port and the guest's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host-side port (the guest's `dst_port`).
    pub local_port: u32,
    /// The guest-side port (the guest's `src_port`).
    pub peer_port: u32,
}

/// What the muxer must do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing special.
    Keep,
    /// Forget it; the guest side is already gone (it sent RST).
    Close,
    /// Forget it and tell the guest with an RST.
    Reset,
    /// The guest is gone but the host has not read everything yet: keep writing, then close.
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent or pending, waiting for the guest's RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
}

/// The result of asking a connection to fill an RX buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Fill {
    /// The header of the packet written into the buffer, if one was produced.
    pub sent: Option<Header>,
    /// What to do with the connection afterwards.
    pub verdict: Verdict,
}

/// One stream.
#[derive(Debug)]
pub struct Connection {
    key: ConnKey,
    stream: UnixStream,
    state: State,
    /// Set while the connection sits in the muxer's ready queue.
    pub(super) queued: bool,

    // Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    credit_requested: bool,
    shutdown_sent: u32,

    // Host side.
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,
    host_write_closed: bool,

    // Guest → host.
    peer_shutdown: u32,
    buf_alloc: u32,
    recv_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    txbuf: TxBuf,

    // Host → guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    sent_cnt: Wrapping<u32>,
}

impl Connection {
    fn new(key: ConnKey, stream: UnixStream, state: State, buf_alloc: u32) -> Self {
        Self {
            key,
            stream,
            state,
            queued: false,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            credit_requested: false,
            shutdown_sent: 0,
            // Bytes may already wait (they can follow the CONNECT line in the same write).
            host_readable: true,
            host_eof: false,
            host_hup: false,
            host_write_closed: false,
            peer_shutdown: 0,
            buf_alloc,
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            txbuf: TxBuf::new(buf_alloc as usize),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            sent_cnt: Wrapping(0),
        }
    }

    /// A host process asked (`CONNECT <port>`) for the guest's `key.peer_port`.
    pub fn host_initiated(key: ConnKey, stream: UnixStream, buf_alloc: u32) -> Self {
        let mut c = Self::new(key, stream, State::Connecting, buf_alloc);
        c.send_request = true;
        c
    }

    /// The guest connected to host port `key.local_port` and we reached its Unix socket.
    pub fn guest_initiated(key: ConnKey, stream: UnixStream, buf_alloc: u32, req: &Header) -> Self {
        let mut c = Self::new(key, stream, State::Established, buf_alloc);
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = Wrapping(req.fwd_cnt);
        c.send_response = true;
        c
    }

    /// The connection's key.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// The host stream (for event registration).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Guest → host bytes waiting for the host to read them.
    pub fn buffered(&self) -> usize {
        self.txbuf.len()
    }

    /// How many more bytes the guest can take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn may_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// SHUTDOWN flags the guest has not heard yet: RCV once the host closed its end, SEND
    /// once every byte the host wrote was delivered (or can never be, because the guest
    /// itself stopped receiving).
    fn shutdown_due(&self) -> u32 {
        if self.state != State::Established {
            return 0;
        }
        let mut want = 0;
        if self.host_hup {
            want |= SHUTDOWN_RCV;
        }
        if self.host_eof || (self.host_hup && self.peer_shutdown & SHUTDOWN_RCV != 0) {
            want |= SHUTDOWN_SEND;
        }
        want & !self.shutdown_sent
    }

    fn credit_request_due(&self) -> bool {
        self.may_send_data() && self.peer_credit() == 0 && !self.credit_requested
    }

    /// True if the connection has a packet for the guest (or may have: host data is probed
    /// by reading).
    pub fn has_work(&self) -> bool {
        self.send_request
            || self.send_response
            || self.send_credit_update
            || self.shutdown_due() != 0
            || self.credit_request_due()
            || (self.may_send_data() && self.peer_credit() > 0)
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, hdr: &Header, data: &mut TxData<'_>) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (_, OP_RST) => {
                if self.txbuf.is_empty() {
                    Verdict::Close
                } else {
                    Verdict::Drain
                }
            }
            (State::Connecting, OP_RESPONSE) => {
                self.state = State::Established;
                match unix::write_ok(&self.stream, self.key.local_port) {
                    Ok(()) => Verdict::Keep,
                    Err(e) => {
                        tracing::debug!("vsock: host went away before OK: {e}");
                        Verdict::Reset
                    }
                }
            }
            (State::Connecting, _) => Verdict::Reset,
            (State::Established, OP_RW) => self.recv_data(data),
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.progress()
            }
            (State::Established, OP_CREDIT_UPDATE) => Verdict::Keep,
            (State::Established, OP_CREDIT_REQUEST) => {
                self.send_credit_update = true;
                Verdict::Keep
            }
            // REQUEST or RESPONSE on an established stream, or an unknown op.
            (State::Established, _) => Verdict::Reset,
        }
    }

    fn recv_data(&mut self, data: &mut TxData<'_>) -> Verdict {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Verdict::Reset;
        }
        let len = data.len();
        let outstanding = (self.recv_cnt - self.fwd_cnt).0;
        if len > (self.buf_alloc - outstanding) as usize {
            tracing::warn!("vsock: guest overran its credit on {:?}", self.key);
            return Verdict::Reset;
        }
        // Bounded by buf_alloc (a u32) just above.
        self.recv_cnt += Wrapping(len as u32);
        if self.txbuf.is_empty() {
            match data.write_to(&mut unix::NoSigPipe(&self.stream)) {
                Ok(n) => self.fwd_cnt += Wrapping(n as u32),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("vsock: host stream write failed: {e}");
                    return Verdict::Reset;
                }
            }
        }
        if !data.is_empty() {
            if let Err(e) = self.txbuf.push(data) {
                tracing::warn!("vsock: cannot buffer guest data: {e}");
                return Verdict::Reset;
            }
        }
        self.check_credit_update();
        Verdict::Keep
    }

    /// Queues a credit update once the guest believes less than half the window is free but
    /// at least half really is.
    fn check_credit_update(&mut self) {
        let window = self.buf_alloc.min(self.peer_buf_alloc);
        let seen_free = window.saturating_sub((self.recv_cnt - self.last_fwd_sent).0);
        let real_free = window.saturating_sub((self.recv_cnt - self.fwd_cnt).0);
        if seen_free < window / 2 && real_free >= window / 2 && real_free > seen_free {
            self.send_credit_update = true;
        }
    }

    /// Finishes a clean close once everything the guest sent reached the host.
    fn progress(&mut self) -> Verdict {
        if !self.txbuf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_closed {
            self.host_write_closed = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest is done both ways: our RST is the last word of a clean close.
            return Verdict::Reset;
        }
        Verdict::Keep
    }

    /// Handles readiness of the host stream.
    pub fn on_host_event(
        &mut self,
        readable: bool,
        writable: bool,
        hup: bool,
        err: bool,
    ) -> Verdict {
        if err {
            return Verdict::Reset;
        }
        if self.state == State::Connecting && hup {
            // The host gave up before the guest answered; the guest needs an RST only if it
            // already saw our REQUEST.
            return if self.send_request {
                Verdict::Close
            } else {
                Verdict::Reset
            };
        }
        if readable || hup {
            self.host_readable = true;
        }
        if hup {
            self.host_hup = true;
        }
        if writable && !self.txbuf.is_empty() {
            if let Err(e) = self.flush() {
                tracing::debug!("vsock: host stream write failed: {e}");
                return Verdict::Reset;
            }
        }
        self.progress()
    }

    fn flush(&mut self) -> io::Result<()> {
        let n = self.txbuf.flush_to(&mut unix::NoSigPipe(&self.stream))?;
        // At most buf_alloc bytes are ever buffered.
        self.fwd_cnt += Wrapping(n as u32);
        self.check_credit_update();
        Ok(())
    }

    /// Host writability for a connection whose guest side is gone. Returns true when done.
    pub fn drain(&mut self) -> bool {
        match self.flush() {
            Ok(()) => self.txbuf.is_empty(),
            Err(_) => true,
        }
    }

    fn header(&self, guest_cid: u64, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet for the guest into `buf`, most urgent first: handshake, data,
    /// shutdown, credit traffic. Data is read from the host stream straight into the buffer,
    /// as much as both the buffer and the guest's credit allow.
    pub fn fill(&mut self, buf: &RxBuffer<'_>, guest_cid: u64) -> Fill {
        let mut hdr = if self.send_request {
            self.send_request = false;
            self.header(guest_cid, OP_REQUEST)
        } else if self.send_response {
            self.send_response = false;
            self.header(guest_cid, OP_RESPONSE)
        } else {
            match self.read_host(buf, guest_cid) {
                Ok(Some(hdr)) => hdr,
                Ok(None) => match self.control_packet(guest_cid) {
                    Some(hdr) => hdr,
                    None => {
                        return Fill {
                            sent: None,
                            verdict: Verdict::Keep,
                        }
                    }
                },
                Err(e) => {
                    tracing::debug!("vsock: host stream read failed: {e}");
                    return Fill {
                        sent: None,
                        verdict: Verdict::Reset,
                    };
                }
            }
        };
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.last_fwd_sent = self.fwd_cnt;
        self.send_credit_update = false;
        match buf.finish(&hdr) {
            Ok(()) => Fill {
                sent: Some(hdr),
                verdict: Verdict::Keep,
            },
            Err(_) => Fill {
                sent: None,
                verdict: Verdict::Reset,
            },
        }
    }

    /// Reads host data for an RW packet. `Ok(None)`: nothing to send (no data, no credit, EOF).
    fn read_host(&mut self, buf: &RxBuffer<'_>, guest_cid: u64) -> io::Result<Option<Header>> {
        let max = (self.peer_credit() as usize).min(buf.data_capacity());
        if !self.may_send_data() || max == 0 {
            return Ok(None);
        }
        match buf.read_data_from(&mut &self.stream, max) {
            Ok(0) => {
                self.host_eof = true;
                self.host_readable = false;
                Ok(None)
            }
            Ok(n) => {
                // n <= credit, a u32.
                self.sent_cnt += Wrapping(n as u32);
                let mut hdr = self.header(guest_cid, OP_RW);
                hdr.len = n as u32;
                Ok(Some(hdr))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_readable = false;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn control_packet(&mut self, guest_cid: u64) -> Option<Header> {
        let shutdown = self.shutdown_due();
        if shutdown != 0 {
            self.shutdown_sent |= shutdown;
            let mut hdr = self.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = self.shutdown_sent;
            return Some(hdr);
        }
        if self.credit_request_due() {
            self.credit_requested = true;
            return Some(self.header(guest_cid, OP_CREDIT_REQUEST));
        }
        if self.send_credit_update {
            return Some(self.header(guest_cid, OP_CREDIT_UPDATE));
        }
        None
    }

    /// The RST that tells the guest this connection is gone.
    pub fn rst_header(&self, guest_cid: u64) -> Header {
        self.header(guest_cid, OP_RST)
    }
}

/// An RST answering a guest packet that belongs to no connection.
pub fn rst_reply(hdr: &Header) -> Header {
    Header {
        src_cid: hdr.dst_cid,
        dst_cid: hdr.src_cid,
        src_port: hdr.dst_port,
        dst_port: hdr.src_port,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_RST,
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    }
}

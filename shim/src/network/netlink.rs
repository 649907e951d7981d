//! A blocking rtnetlink socket in the calling thread's network namespace: requests that are
//! acknowledged, and dumps. The messages are `netlink-packet-route`'s; this module only moves
//! them and turns a kernel NACK into an `io::Error` with its errno.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Large enough for any single kernel reply of a dump (the kernel fills up to a page, or 32 KiB
/// with large pages, per datagram).
const RECV_BUFFER: usize = 64 * 1024;

/// How long a reply may take.
const REPLY_TIMEOUT_SECS: i64 = 10;
/// How often a dump the kernel marks as interrupted (the table changed under it) is tried.
const DUMP_TRIES: usize = 3;

/// One rtnetlink socket; bound to the namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // The kernel answers at once; a reply that never comes (a lost datagram) must not hang
        // the monitor's start.
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT_SECS, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUFFER],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Sends `msg` (with `flags` added to REQUEST|ACK) and waits for its acknowledgement.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        let mut done = false;
        self.receive(seq, |_, payload| match payload {
            NetlinkPayload::Error(e) => {
                done = true;
                match e.code {
                    None => Ok(true),
                    Some(_) => Err(e.to_io()),
                }
            }
            _ => Ok(false),
        })?;
        if done {
            Ok(())
        } else {
            Err(io::Error::other("netlink: no acknowledgement"))
        }
    }

    /// Sends a dump request and returns every message of the reply. A dump the kernel cut
    /// short is an error; one it marks inconsistent (`NLM_F_DUMP_INTR`) is tried again.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 1..DUMP_TRIES {
            match self.dump_once(msg.clone())? {
                (out, false) => return Ok(out),
                (_, true) => continue,
            }
        }
        match self.dump_once(msg)? {
            (out, false) => Ok(out),
            (_, true) => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "netlink: the dump kept changing",
            )),
        }
    }

    /// One dump: its messages, and whether the kernel marked it interrupted.
    fn dump_once(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        self.receive(seq, |flags, payload| {
            interrupted |= flags & NLM_F_DUMP_INTR != 0;
            match payload {
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    Ok(false)
                }
                NetlinkPayload::Done(d) if d.code < 0 => Err(io::Error::from_raw_os_error(-d.code)),
                NetlinkPayload::Done(_) => Ok(true),
                NetlinkPayload::Error(e) => Err(e.to_io()),
                _ => Ok(false),
            }
        })?;
        Ok((out, interrupted))
    }

    /// Reads replies to `seq` until `each` says the exchange is complete.
    fn receive(
        &mut self,
        seq: u32,
        mut each: impl FnMut(u16, NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink: empty message",
                    ));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                if each(msg.header.flags, msg.payload)? {
                    return Ok(());
                }
            }
        }
    }
}

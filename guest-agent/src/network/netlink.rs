//! rtnetlink over one blocking socket, built for few syscalls: every guest syscall is emulated
//! kernel work on PVM hosts.
//!
//! - A batch of requests goes out in one `send` (the kernel runs the messages of one datagram
//!   in order, synchronously, and carries on after a failed one), and all their ACKs come back
//!   with one `recvmmsg`, since they are queued by the time the send returns.
//! - A link dump is one `send` and one `recvmmsg` for a guest's few links (the kernel fills
//!   the next datagram, or the DONE, while the previous one is being received).
//! - Every request carries `NLM_F_ACK`; each answer is matched to its request by sequence
//!   number, so the caller learns which step failed and why.
//! - Requests are built with `netlink-packet-route`; answers (ACKs, the link dump) are read
//!   with `netlink-packet-core`'s buffers only: the route crate's parsers cover every message
//!   family there is, and leaving them out keeps 0.3 MB out of the agent (each MiB of
//!   initramfs costs ~1.6 s of emulated unpacking on PVM hosts).

use std::io;
use std::net::IpAddr;
use std::num::NonZeroI32;
use std::os::fd::{AsRawFd, RawFd};

use netlink_packet_core::{
    DecodeError, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlaBuffer, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

/// `RTM_NEWLINK`, and the `IFLA_*` attributes a dump is read for.
const RTM_NEWLINK: u16 = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFF_UP: u32 = 1;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use super::request::{Mac, Network, Route};

/// Most requests in one datagram: their ACKs (~1 KiB of receive buffer each, counting the
/// kernel's overhead) must fit the socket's default receive buffer (~208 KiB).
const MAX_BATCH: usize = 64;
/// Room for one ACK: a failed request's ACK carries the request back (ours are < 200 bytes).
const ACK_SLOT: usize = 1024;
/// Room for one datagram of a dump and how many at once. The kernel sizes a dump's datagrams
/// to the reader's buffer (the first one to a page), so they always fit; four take a guest's
/// few links and the DONE in one `recvmmsg`.
const DUMP_SLOT: usize = 16 * 1024;
const DUMP_SLOTS: usize = 4;

/// Errors of talking to the kernel (a refused request is not one: see [`Netlink::run`]).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open a netlink socket")]
    Open(#[source] io::Error),
    #[error("send to the kernel")]
    Send(#[source] io::Error),
    #[error("the kernel took {sent} of {len} bytes")]
    ShortSend { sent: usize, len: usize },
    #[error("receive from the kernel")]
    Receive(#[source] io::Error),
    #[error("the kernel's answer did not fit {0} bytes")]
    Truncated(usize),
    #[error("the kernel's answer does not parse")]
    Decode(#[source] DecodeError),
    #[error("list the network interfaces")]
    Dump(#[source] io::Error),
}

/// One request: a message and its `NLM_F_*` flags (`NLM_F_REQUEST | NLM_F_ACK` are added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub message: RouteNetlinkMessage,
    pub flags: u16,
}

/// What a link dump says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
}

/// A blocking rtnetlink socket of the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens the socket (one syscall; the kernel binds it on the first send).
    pub fn open() -> Result<Netlink, NetlinkError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let sent = self.socket.send(bytes, 0).map_err(NetlinkError::Send)?;
        if sent != bytes.len() {
            return Err(NetlinkError::ShortSend {
                sent,
                len: bytes.len(),
            });
        }
        Ok(())
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        emit(
            &RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            &mut out,
        );
        self.send(&out)?;
        let mut buf = vec![0u8; DUMP_SLOT * DUMP_SLOTS];
        let mut links = Vec::new();
        loop {
            for datagram in receive(self.socket.as_raw_fd(), &mut buf, DUMP_SLOT)? {
                for msg in messages(datagram) {
                    let msg = msg.map_err(NetlinkError::Decode)?;
                    if msg.seq != seq {
                        continue;
                    }
                    match msg.kind {
                        RTM_NEWLINK => links.push(link(msg.payload)?),
                        NLMSG_DONE => return Ok(links),
                        NLMSG_ERROR => {
                            if let Some(code) = ack_code(msg.payload)? {
                                return Err(NetlinkError::Dump(os_error(code)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Sends `requests` in order, in as few datagrams as it can, and returns for each the
    /// errno the kernel refused it with (`None`: done). Later requests still run after a
    /// refused one.
    pub fn run<'a>(
        &mut self,
        requests: impl ExactSizeIterator<Item = &'a Request>,
    ) -> Result<Vec<Option<i32>>, NetlinkError> {
        let requests: Vec<&Request> = requests.collect();
        let mut results = Vec::with_capacity(requests.len());
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for chunk in requests.chunks(MAX_BATCH) {
            out.clear();
            let first = self.seq.wrapping_add(1);
            for r in chunk {
                let seq = self.next_seq();
                emit(
                    &r.message,
                    r.flags | NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    &mut out,
                );
            }
            self.send(&out)?;
            let mut acks: Vec<Option<Option<i32>>> = vec![None; chunk.len()];
            let mut left = chunk.len();
            buf.resize(chunk.len() * ACK_SLOT, 0);
            while left > 0 {
                let slots = left * ACK_SLOT;
                for datagram in receive(self.socket.as_raw_fd(), &mut buf[..slots], ACK_SLOT)? {
                    for msg in messages(datagram) {
                        let msg = msg.map_err(NetlinkError::Decode)?;
                        if msg.kind != NLMSG_ERROR {
                            continue;
                        }
                        let code = ack_code(msg.payload)?;
                        let i = msg.seq.wrapping_sub(first) as usize;
                        if let Some(slot @ None) = acks.get_mut(i) {
                            *slot = Some(code.map(|c| c.get().abs()));
                            left -= 1;
                        }
                    }
                }
            }
            results.extend(acks.into_iter().map(Option::flatten));
        }
        Ok(results)
    }
}

fn os_error(code: NonZeroI32) -> io::Error {
    io::Error::from_raw_os_error(code.get().abs())
}

/// The error code of an `NLMSG_ERROR` payload (`None`: an ACK).
fn ack_code(payload: &[u8]) -> Result<Option<NonZeroI32>, NetlinkError> {
    let buf = ErrorBuffer::new_checked(payload).map_err(NetlinkError::Decode)?;
    Ok(buf.code())
}

/// What a `RTM_NEWLINK` payload says about its link.
fn link(payload: &[u8]) -> Result<Link, NetlinkError> {
    let short = || NetlinkError::Decode(DecodeError::from("link message shorter than its header"));
    let header = payload.get(..IFINFOMSG_LEN).ok_or_else(short)?;
    let word = |at: usize| {
        u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let mut link = Link {
        index: word(4),
        name: String::new(),
        mac: None,
        mtu: 0,
        up: word(8) & IFF_UP != 0,
    };
    for nla in NlasIterator::new(&payload[IFINFOMSG_LEN..]) {
        let nla: NlaBuffer<&[u8]> = nla.map_err(NetlinkError::Decode)?;
        let value = nla.value();
        match nla.kind() {
            IFLA_IFNAME => {
                let name = value.split(|&b| b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok().map(Mac),
            IFLA_MTU => {
                if let Ok(b) = <[u8; 4]>::try_from(value) {
                    link.mtu = u32::from_ne_bytes(b);
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Appends `message` with a header of `flags` and `seq` to `out`.
fn emit(message: &RouteNetlinkMessage, flags: u16, seq: u32, out: &mut Vec<u8>) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message.clone()));
    msg.finalize();
    let start = out.len();
    // Messages start 4-byte aligned (ours are whole multiples of 4 already).
    out.resize(start + msg.buffer_len().next_multiple_of(4), 0);
    msg.serialize(&mut out[start..]);
}

/// One netlink message of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The netlink messages of one datagram; a malformed one ends it with an error.
fn messages(datagram: &[u8]) -> impl Iterator<Item = Result<Answer<'_>, DecodeError>> + '_ {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let buf = match NetlinkBuffer::new_checked(rest) {
            Ok(buf) => buf,
            Err(e) => {
                rest = &[];
                return Some(Err(e));
            }
        };
        let len = buf.length() as usize;
        let answer = Answer {
            kind: buf.message_type(),
            seq: buf.sequence_number(),
            payload: buf.payload(),
        };
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok(answer))
    })
}

/// Receives up to `buf.len() / slot` datagrams with one `recvmmsg`: it waits for the first
/// and takes the others only if they are already queued.
fn receive(fd: RawFd, buf: &mut [u8], slot: usize) -> Result<Vec<&[u8]>, NetlinkError> {
    let mut iovs: Vec<libc::iovec> = buf
        .chunks_mut(slot)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: c.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let count = loop {
        // SAFETY: each header points at one iovec of `iovs`, which points into `buf`; both
        // outlive the call and the kernel writes at most `iov_len` bytes into each slot.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                u32::try_from(headers.len()).unwrap_or(u32::MAX),
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        match usize::try_from(n) {
            Ok(n) => break n,
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(NetlinkError::Receive(e));
                }
            }
        }
    };
    let lens: Vec<(usize, bool)> = headers[..count]
        .iter()
        .map(|h| {
            (
                h.msg_len as usize,
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            )
        })
        .collect();
    drop(headers);
    drop(iovs);
    let mut out = Vec::with_capacity(count);
    for (chunk, (len, truncated)) in buf.chunks(slot).zip(lens) {
        if truncated {
            return Err(NetlinkError::Truncated(slot));
        }
        out.push(&chunk[..len.min(chunk.len())]);
    }
    Ok(out)
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn set_link(index: u32, f: impl FnOnce(&mut LinkMessage)) -> Request {
    let mut m = LinkMessage::default();
    m.header.index = index;
    f(&mut m);
    Request {
        message: RouteNetlinkMessage::SetLink(m),
        flags: 0,
    }
}

/// Renames link `index` (the kernel refuses while it is up).
pub fn set_name(index: u32, name: &str) -> Request {
    set_link(index, |m| {
        m.attributes.push(LinkAttribute::IfName(name.to_owned()))
    })
}

pub fn set_mtu(index: u32, mtu: u32) -> Request {
    set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
}

pub fn set_up(index: u32) -> Request {
    set_link(index, |m| {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    })
}

/// Adds an address as `ip addr add` does (local = address), with the IPv4 network's broadcast
/// address; fails if the link has it already.
pub fn add_address(index: u32, net: Network) -> Request {
    let mut m = AddressMessage::default();
    m.header.family = family(net.address);
    m.header.prefix_len = net.prefix_len;
    m.header.scope = AddressScope::Universe;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(net.address));
    m.attributes.push(AddressAttribute::Address(net.address));
    if let Some(b) = net.broadcast() {
        m.attributes.push(AddressAttribute::Broadcast(b));
    }
    Request {
        message: RouteNetlinkMessage::NewAddress(m),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

/// Adds a unicast route of the main table (protocol "boot", as `ip route add`); `oif` is the
/// index of its device. Fails if the route exists.
pub fn add_route(route: &Route, oif: Option<u32>) -> Request {
    let mut m = RouteMessage::default();
    m.header.address_family = family(route.destination.address);
    m.header.destination_prefix_length = route.destination.prefix_len;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::from(route.scope);
    m.header.kind = RouteType::Unicast;
    if route.destination.prefix_len > 0 {
        m.attributes.push(RouteAttribute::Destination(route_address(
            route.destination.address,
        )));
    }
    if let Some(g) = route.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_address(g)));
    }
    if let Some(i) = oif {
        m.attributes.push(RouteAttribute::Oif(i));
    }
    if let Some(s) = route.source {
        m.attributes
            .push(RouteAttribute::PrefSource(route_address(s)));
    }
    if route.metric > 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    Request {
        message: RouteNetlinkMessage::NewRoute(m),
        flags: NLM_F_CREATE | NLM_F_EXCL,
    }
}

/// Adds a permanent neighbour entry, replacing one the kernel may have learnt already.
pub fn add_neighbor(index: u32, address: IpAddr, mac: Mac) -> Request {
    let mut m = NeighbourMessage::default();
    m.header.family = family(address);
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(match address {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    Request {
        message: RouteNetlinkMessage::NewNeighbour(m),
        flags: NLM_F_CREATE | NLM_F_REPLACE,
    }
}

#[cfg(test)]
mod tests;

//! The bytes of each request, read back by hand (not by the crate that wrote them), and the
//! parsing of the kernel's answers.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::network::request::{Mac, Network, Route};

fn bytes(request: &Request, seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    emit(&request.message, request.flags, seq, &mut out);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks the netlink header and returns the payload.
fn payload(b: &[u8], kind: u16, flags: u16, seq: u32) -> &[u8] {
    assert_eq!(u32_at(b, 0) as usize, b.len(), "nlmsg_len");
    assert_eq!(u16_at(b, 4), kind, "nlmsg_type");
    assert_eq!(u16_at(b, 6), flags, "nlmsg_flags");
    assert_eq!(u32_at(b, 8), seq, "nlmsg_seq");
    &b[16..]
}

/// The attributes after a fixed header of `fixed` bytes, as (type, value).
fn attributes(payload: &[u8], fixed: usize) -> Vec<(u16, Vec<u8>)> {
    let mut rest = &payload[fixed..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = u16_at(rest, 0) as usize;
        out.push((u16_at(rest, 2), rest[4..len].to_vec()));
        rest = &rest[len.next_multiple_of(4)..];
    }
    out
}

const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;
const RTM_SETLINK: u16 = 19;
const CREATE_EXCL: u16 = 0x400 | 0x200;

#[test]
fn rename_is_a_setlink_with_the_name() {
    let b = bytes(&set_name(3, "eth0"), 7);
    let p = payload(&b, RTM_SETLINK, 0, 7);
    assert_eq!(u32_at(p, 4), 3, "ifi_index");
    assert_eq!(u32_at(p, 8), 0, "ifi_flags");
    assert_eq!(u32_at(p, 12), 0, "ifi_change");
    // IFLA_IFNAME, NUL-terminated.
    assert_eq!(attributes(p, 16), vec![(3, b"eth0\0".to_vec())]);
}

#[test]
fn up_and_mtu_touch_only_their_part() {
    let b = bytes(&set_up(1), 1);
    let p = payload(&b, RTM_SETLINK, 0, 1);
    assert_eq!((u32_at(p, 4), u32_at(p, 8), u32_at(p, 12)), (1, 1, 1));
    assert!(attributes(p, 16).is_empty());
    let b = bytes(&set_mtu(4, 1400), 2);
    let p = payload(&b, RTM_SETLINK, 0, 2);
    assert_eq!((u32_at(p, 4), u32_at(p, 12)), (4, 0));
    // IFLA_MTU
    assert_eq!(attributes(p, 16), vec![(4, 1400u32.to_ne_bytes().to_vec())]);
}

#[test]
fn an_ipv4_address_gets_its_broadcast() {
    let net = Network {
        address: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
        prefix_len: 16,
    };
    let b = bytes(&add_address(3, net), 9);
    let p = payload(&b, RTM_NEWADDR, CREATE_EXCL, 9);
    // ifaddrmsg: family, prefix length, flags, scope, index
    assert_eq!(&p[..4], &[libc::AF_INET as u8, 16, 0, 0]);
    assert_eq!(u32_at(p, 4), 3);
    let a = vec![172, 17, 0, 2];
    // IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST
    assert_eq!(
        attributes(p, 8),
        vec![(2, a.clone()), (1, a), (4, vec![172, 17, 255, 255])]
    );
    let host = Network {
        prefix_len: 32,
        ..net
    };
    let b = bytes(&add_address(3, host), 9);
    assert_eq!(attributes(&b[16..], 8).len(), 2, "no broadcast for a /32");
}

#[test]
fn a_default_route_via_a_gateway() {
    let route = Route {
        destination: Network {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix_len: 0,
        },
        gateway: Some(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 1))),
        device: Some("eth0".into()),
        source: None,
        scope: 0,
        metric: 0,
    };
    let b = bytes(&add_route(&route, Some(3)), 5);
    let p = payload(&b, RTM_NEWROUTE, CREATE_EXCL, 5);
    // rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot), scope, type (unicast)
    assert_eq!(&p[..8], &[libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1]);
    assert_eq!(u32_at(p, 8), 0, "rtm_flags");
    // RTA_GATEWAY, RTA_OIF; no RTA_DST for the default route.
    assert_eq!(
        attributes(p, 12),
        vec![(5, vec![172, 17, 0, 1]), (4, 3u32.to_ne_bytes().to_vec())]
    );
}

#[test]
fn an_on_link_route_with_source_and_metric() {
    let route = Route {
        destination: Network {
            address: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
            prefix_len: 16,
        },
        gateway: None,
        device: Some("eth0".into()),
        source: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5))),
        scope: 253,
        metric: 100,
    };
    let b = bytes(&add_route(&route, Some(2)), 6);
    let p = payload(&b, RTM_NEWROUTE, CREATE_EXCL, 6);
    assert_eq!(&p[..8], &[libc::AF_INET as u8, 16, 0, 0, 254, 3, 253, 1]);
    // RTA_DST, RTA_OIF, RTA_PREFSRC, RTA_PRIORITY
    assert_eq!(
        attributes(p, 12),
        vec![
            (1, vec![10, 1, 0, 0]),
            (4, 2u32.to_ne_bytes().to_vec()),
            (7, vec![10, 1, 0, 5]),
            (6, 100u32.to_ne_bytes().to_vec()),
        ]
    );
}

#[test]
fn a_permanent_neighbor_replaces() {
    let mac = Mac([2, 0x42, 0xac, 0x11, 0, 1]);
    let b = bytes(
        &add_neighbor(3, IpAddr::V4(Ipv4Addr::new(172, 17, 0, 1)), mac),
        8,
    );
    let p = payload(&b, RTM_NEWNEIGH, 0x400 | 0x100, 8);
    assert_eq!(p[0], libc::AF_INET as u8);
    assert_eq!(u32_at(p, 4), 3, "ndm_ifindex");
    assert_eq!(u16_at(p, 8), 0x80, "NUD_PERMANENT");
    // NDA_DST, NDA_LLADDR
    assert_eq!(
        attributes(p, 12),
        vec![(1, vec![172, 17, 0, 1]), (2, mac.0.to_vec())]
    );
}

/// An NLMSG_ERROR datagram as the kernel sends it: header, errno (negative), the request's
/// header.
fn ack(seq: u32, errno: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&36u32.to_ne_bytes());
    b.extend_from_slice(&2u16.to_ne_bytes());
    b.extend_from_slice(&0x100u16.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&(-errno).to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]);
    b
}

#[test]
fn acks_and_errors_parse_and_garbage_does_not_panic() {
    let mut datagram = ack(4, 0);
    datagram.extend(ack(5, libc::EEXIST));
    let parsed: Vec<_> = messages(&datagram).map(|m| m.unwrap()).collect();
    assert_eq!(parsed.len(), 2);
    let codes: Vec<_> = parsed
        .iter()
        .map(|m| {
            assert_eq!(m.kind, NLMSG_ERROR);
            (m.seq, ack_code(m.payload).unwrap().map(|c| c.get()))
        })
        .collect();
    assert_eq!(codes, vec![(4, None), (5, Some(-libc::EEXIST))]);
    // A length past the end, or shorter than a header, is an error and ends the datagram.
    let mut bad = ack(6, 0);
    bad[0] = 200;
    assert!(messages(&bad).next().unwrap().is_err());
    assert_eq!(messages(&bad).count(), 1);
    bad[0] = 3;
    assert!(messages(&bad).next().unwrap().is_err());
    assert_eq!(
        messages(&[1, 2]).count(),
        1,
        "a torn header is an error too"
    );
    assert!(ack_code(&[0, 0]).is_err());
}

/// A `RTM_NEWLINK` as a dump brings it: the header, then attributes the reader does not know
/// (skipped) and the three it reads.
#[test]
fn a_dumped_link_reads_its_index_name_mac_mtu_and_state() {
    let mut p = Vec::new();
    p.extend_from_slice(&[0, 0, 1, 0]); // family, pad, type (ether)
    p.extend_from_slice(&7u32.to_ne_bytes()); // index
    p.extend_from_slice(&(0x1003u32).to_ne_bytes()); // UP | BROADCAST | MULTICAST
    p.extend_from_slice(&0u32.to_ne_bytes());
    let mut nla = |kind: u16, value: &[u8]| {
        let len = 4 + value.len();
        p.extend_from_slice(&(len as u16).to_ne_bytes());
        p.extend_from_slice(&kind.to_ne_bytes());
        p.extend_from_slice(value);
        p.resize(p.len().next_multiple_of(4), 0);
    };
    nla(13, &[0; 12]); // IFLA_QDISC-like: not read
    nla(3, b"eth0\0");
    nla(1, &[2, 0x42, 0xac, 0x11, 0, 2]);
    nla(4, &1400u32.to_ne_bytes());
    nla(0x8000 | 26, &[0; 8]); // a nested one (IFLA_AF_SPEC): not read
    let l = link(&p).unwrap();
    assert_eq!(
        l,
        Link {
            index: 7,
            name: "eth0".into(),
            mac: Some(Mac([2, 0x42, 0xac, 0x11, 0, 2])),
            mtu: 1400,
            up: true,
        }
    );
    assert!(link(&p[..12]).is_err());
}

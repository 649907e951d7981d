//! Joins the engine's interface and the VM's tap with tc (Kata's "tcfilter" model): an ingress
//! qdisc on each, and a filter matching every frame (u32 with an empty key: the `matchall`
//! classifier is often not built, u32 always is) whose mirred action redirects every frame
//! that arrives on one to the egress of the other. No bridge, no address on the tap, no change to
//! the namespace's routing: the namespace's own stack never sees the container's traffic.

use std::io;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::Netlink;

/// `TC_H_INGRESS`: the ingress qdisc's parent.
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff1,
};
/// `ffff:` — the ingress qdisc's handle, and the parent of its filters.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL` in network byte order, as tc's filter info wants it.
const ETH_P_ALL_BE: u32 = 0x0300;
/// The filter's priority.
const PRIORITY: u32 = 1;

/// Sets the tap up with `mtu` (a tap is created down; frames written to a down tap are refused).
pub fn tap_up(nl: &mut Netlink, tap: u32, mtu: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = tap;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}

/// The index of the link called `name`.
pub fn link_index(nl: &mut Netlink, name: &str) -> io::Result<u32> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    for reply in nl.dump(RouteNetlinkMessage::GetLink(m))? {
        if let RouteNetlinkMessage::NewLink(l) = reply {
            let named = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
            if named {
                return Ok(l.header.index);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no link {name}"),
    ))
}

/// Redirects everything arriving on `a` to `b` and everything arriving on `b` to `a`.
///
/// `a` may still carry the redirect of a VM that has ended (a namespace that outlives its
/// container: a pod's, or one the engine reuses), whose tap is gone: the monitor cannot remove
/// it when its VM ends (it has dropped CAP_NET_ADMIN by then), so it is replaced here. A
/// redirect to a device that still exists is another VM's: refused.
pub fn join(nl: &mut Netlink, a: u32, b: u32) -> io::Result<()> {
    match ingress(nl, a)? {
        Ingress::RedirectTo(target) if link_exists(nl, target)? => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the interface is already carried into another VM",
            ))
        }
        // A redirect to a device that is gone, or an ingress qdisc without filters (one left
        // half-removed): replaced.
        Ingress::RedirectTo(_) | Ingress::Empty => unjoin(nl, a)?,
        // Someone's own ingress rules: not ours to drop (the exclusive add would fail anyway).
        Ingress::Foreign => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the interface has tc ingress filters that are not Bulkhead's",
            ))
        }
    }
    let mut added = Vec::with_capacity(2);
    let mut add = |nl: &mut Netlink, from: u32, to: u32| -> io::Result<()> {
        nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        added.push(from);
        nl.request(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    };
    let joined = add(nl, a, b).and_then(|()| add(nl, b, a));
    if joined.is_err() {
        // Half a join would make every later one on this interface fail: undo it.
        for link in added {
            let _ = unjoin(nl, link);
        }
    }
    joined
}

/// Removes the ingress qdisc of `link` (and with it the filter): the engine's interface is as
/// the engine made it again. A missing qdisc is not an error.
pub fn unjoin(nl: &mut Netlink, link: u32) -> io::Result<()> {
    match nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(link)),
        0,
    ) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Removes the redirect on `link` if the device it sends to is gone (its VM ended); whether
/// there was one.
pub fn drop_stale(nl: &mut Netlink, link: u32) -> io::Result<bool> {
    match ingress(nl, link)? {
        Ingress::RedirectTo(target) if !link_exists(nl, target)? => {
            unjoin(nl, link)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Whether `link` is redirected to a device that exists: another VM's tap carries it.
pub fn carried(nl: &mut Netlink, link: u32) -> io::Result<bool> {
    match ingress(nl, link)? {
        Ingress::RedirectTo(target) => link_exists(nl, target),
        Ingress::Empty | Ingress::Foreign => Ok(false),
    }
}

/// What the ingress side of a link holds.
enum Ingress {
    /// No ingress qdisc, or one without filters.
    Empty,
    /// A mirred redirect (ours) to the device with this index.
    RedirectTo(u32),
    /// Filters, none of them a mirred redirect: someone else's.
    Foreign,
}

fn ingress(nl: &mut Netlink, link: u32) -> io::Result<Ingress> {
    let mut m = TcMessage::default();
    m.header.index = link as i32;
    m.header.parent = INGRESS_HANDLE;
    let filters = match nl.dump(RouteNetlinkMessage::GetTrafficFilter(m)) {
        Ok(f) => f,
        // No ingress qdisc: nothing there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
            return Ok(Ingress::Empty)
        }
        Err(e) => return Err(e),
    };
    let mut any = false;
    for f in filters {
        let RouteNetlinkMessage::NewTrafficFilter(f) = f else {
            continue;
        };
        any = true;
        for attr in &f.attributes {
            let TcAttribute::Options(options) = attr else {
                continue;
            };
            for option in options {
                let TcOption::U32(TcFilterU32Option::Action(actions)) = option else {
                    continue;
                };
                for action in actions {
                    for a in &action.attributes {
                        let TcActionAttribute::Options(opts) = a else {
                            continue;
                        };
                        for o in opts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = o {
                                return Ok(Ingress::RedirectTo(m.ifindex));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(if any {
        Ingress::Foreign
    } else {
        Ingress::Empty
    })
}

fn link_exists(nl: &mut Netlink, index: u32) -> io::Result<bool> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    match nl.dump(RouteNetlinkMessage::GetLink(m)) {
        Ok(links) => Ok(links
            .iter()
            .any(|l| matches!(l, RouteNetlinkMessage::NewLink(l) if l.header.index == index))),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

fn ingress_qdisc(link: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = link as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = INGRESS_PARENT;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = from as i32;
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (PRIORITY << 16) | ETH_P_ALL_BE;
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    // `u32 match u8 0 0`: one key that every frame matches.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

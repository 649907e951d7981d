//! Reads the network the engine gave the container: the interfaces of the monitor's network
//! namespace (the container's) with their addresses, the routes the engine added and the
//! permanent neighbours — what the guest must be given to look the same.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::Netlink;
use super::{HostNetwork, Interface, Ipv4Net, Neighbor, Route};

/// The main routing table (`RT_TABLE_MAIN`).
const MAIN_TABLE: u8 = 254;

/// Reads the calling thread's network namespace. Interfaces are the Ethernet links that are up
/// (the engine's veths); loopback, taps (ours among them) and the tunnel devices a namespace
/// may get from loaded modules (`tunl0`, `sit0`) are not the container's network.
pub fn discover(nl: &mut Netlink) -> io::Result<HostNetwork> {
    let links = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let mut interfaces: Vec<Interface> = links
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => interface(&l),
            _ => None,
        })
        .collect();
    interfaces.sort_by_key(|i| i.index);

    let mut by_index: HashMap<u32, usize> = HashMap::new();
    for (n, i) in interfaces.iter().enumerate() {
        by_index.insert(i.index, n);
    }

    let mut get_addr = AddressMessage::default();
    get_addr.header.family = AddressFamily::Inet;
    for m in nl.dump(RouteNetlinkMessage::GetAddress(get_addr))? {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        let Some(&n) = by_index.get(&a.header.index) else {
            continue;
        };
        if let Some(addr) = ipv4_address(&a) {
            interfaces[n].addresses.push(addr);
        }
    }

    let names: HashMap<u32, String> = interfaces
        .iter()
        .map(|i| (i.index, i.name.clone()))
        .collect();

    let mut get_route = RouteMessage::default();
    get_route.header.address_family = AddressFamily::Inet;
    let mut routes = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetRoute(get_route))? {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            routes.extend(route(&r, &names));
        }
    }

    routes.retain(|r| !is_subnet_route(r, &interfaces));

    let mut get_neigh = NeighbourMessage::default();
    get_neigh.header.family = AddressFamily::Inet;
    let mut neighbors = Vec::new();
    for m in nl.dump(RouteNetlinkMessage::GetNeighbour(get_neigh))? {
        if let RouteNetlinkMessage::NewNeighbour(n) = m {
            neighbors.extend(neighbor(&n, &names));
        }
    }

    Ok(HostNetwork {
        interfaces,
        routes,
        neighbors,
    })
}

fn interface(l: &LinkMessage) -> Option<Interface> {
    if l.header.link_layer_type != LinkLayerType::Ether || !l.header.flags.contains(LinkFlags::Up) {
        return None;
    }
    let mut name = None;
    let mut mac = None;
    let mut mtu = 1500;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(m) => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos)
                if infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun))) =>
            {
                return None;
            }
            _ => {}
        }
    }
    Some(Interface {
        name: name?,
        index: l.header.index,
        mac: mac?,
        mtu,
        addresses: Vec::new(),
    })
}

fn ipv4_address(a: &AddressMessage) -> Option<Ipv4Net> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(v4)) => address = Some(*v4),
            AddressAttribute::Address(IpAddr::V4(v4)) if address.is_none() => address = Some(*v4),
            _ => {}
        }
    }
    Some(Ipv4Net {
        address: address?,
        prefix_len: a.header.prefix_len,
    })
}

fn v4(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(v) => Some(*v),
        _ => None,
    }
}

/// The routes of the main table that someone added (not the kernel's own subnet routes, which
/// the guest's kernel makes itself when it gets the addresses), on the container's interfaces.
fn route(r: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
    let h = &r.header;
    if h.table != MAIN_TABLE || h.protocol == RouteProtocol::Kernel || h.kind != RouteType::Unicast
    {
        return None;
    }
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut device = None;
    let mut source = None;
    let mut metric = 0;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = v4(d)?,
            RouteAttribute::Gateway(g) => gateway = Some(v4(g)?),
            RouteAttribute::Oif(i) => device = Some(names.get(i)?.clone()),
            RouteAttribute::PrefSource(s) => source = v4(s),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Table(t) if *t != u32::from(MAIN_TABLE) => return None,
            _ => {}
        }
    }
    Some(Route {
        destination: Ipv4Net {
            address: destination,
            prefix_len: h.destination_prefix_length,
        },
        gateway,
        device: device?,
        source,
        scope: u8::from(h.scope),
        metric,
    })
}

/// Whether `r` is the route the guest's kernel makes by itself when the interface gets its
/// address (Docker's libnetwork re-adds it, so it is not marked `proto kernel` on the host):
/// on-link, to the address's own subnet. The guest must not be asked to add it again.
fn is_subnet_route(r: &Route, interfaces: &[Interface]) -> bool {
    let subnet = |a: &Ipv4Net| {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(a.prefix_len))
            .unwrap_or(0);
        Ipv4Net {
            address: Ipv4Addr::from(u32::from(a.address) & mask),
            prefix_len: a.prefix_len,
        }
    };
    r.gateway.is_none()
        && interfaces
            .iter()
            .filter(|i| i.name == r.device)
            .flat_map(|i| &i.addresses)
            .any(|a| subnet(a) == r.destination)
}

fn neighbor(n: &NeighbourMessage, names: &HashMap<u32, String>) -> Option<Neighbor> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let mut address = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => address = Some(*v),
            NeighbourAttribute::LinkLayerAddress(m) => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbor {
        address: address?,
        mac: mac?,
        device: names.get(&n.header.ifindex)?.clone(),
    })
}

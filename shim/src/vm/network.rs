//! Carries the container's network into its VM (see [`crate::network`] for the model): per
//! interface of the namespace a tap next to it, joined to it by tc redirects, attached to a NIC
//! slot of the VM with the interface's MAC and MTU; then the agent's request that makes the
//! guest's NICs look like the interfaces.

use bulkhead_protocol::api;
use bulkhead_vmm::devices::virtio::net::{NetBackend, NetSlotInfo, Tap};

use super::agent::Guest;
use crate::network::netlink::Netlink;
use crate::network::{
    discover, redirect, HostNetwork, Interface, Ipv4Net, NetworkError, Route, TAP_PREFIX,
};

/// Plugs every interface of the calling thread's namespace into the VM; `None` when there is
/// none (`--network none`: the guest keeps only its loopback). The taps belong to the VM from
/// here on and vanish with it; the redirects on the engine's interfaces go with them (a
/// redirect to a deleted device drops) or with the interface when the engine deletes it.
/// With the request, each interface's NIC slot.
pub fn plug(
    guest: &impl Guest,
) -> Result<Option<(api::ConfigureNetworkRequest, Vec<u8>)>, NetworkError> {
    let mut nl = Netlink::open().map_err(NetworkError::Discover)?;
    let net = discover(&mut nl).map_err(NetworkError::Discover)?;
    if net.interfaces.is_empty() {
        return Ok(None);
    }
    let mut devices = Vec::with_capacity(net.interfaces.len());
    let mut slots = Vec::with_capacity(net.interfaces.len());
    for iface in &net.interfaces {
        let tap = free_tap_name(&mut nl)?;
        let slot = plug_one(&mut nl, guest, iface, &tap)?;
        devices.push(slot.device_name);
        slots.push(slot.slot);
    }
    Ok(Some((request(&net, &devices), slots)))
}

/// The first `bh<N>` no link in the namespace has: another container's VM may already have taps
/// here (a namespace shared with `--network container:…`), and opening its tap would fail with
/// a less telling error than the join's.
fn free_tap_name(nl: &mut Netlink) -> Result<String, NetworkError> {
    for n in 0..1024 {
        let name = format!("{TAP_PREFIX}{n}");
        match redirect::link_index(nl, &name) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(name),
            Err(e) => return Err(NetworkError::Discover(e)),
            Ok(_) => {}
        }
    }
    Err(NetworkError::Discover(std::io::Error::other(
        "no free tap name in the namespace",
    )))
}

fn plug_one(
    nl: &mut Netlink,
    guest: &impl Guest,
    iface: &Interface,
    tap_name: &str,
) -> Result<NetSlotInfo, NetworkError> {
    let tap_err = |source: Box<dyn std::error::Error + Send + Sync>| NetworkError::Tap {
        name: tap_name.to_string(),
        source,
    };
    let join_err = |source| NetworkError::Join {
        interface: iface.name.clone(),
        tap: tap_name.to_string(),
        source,
    };
    let tap = Tap::open(tap_name).map_err(|e| tap_err(Box::new(e)))?;
    let tap_index = redirect::link_index(nl, tap_name).map_err(|e| tap_err(Box::new(e)))?;
    redirect::tap_up(nl, tap_index, iface.mtu).map_err(|e| tap_err(Box::new(e)))?;
    let mtu = u16::try_from(iface.mtu).map_err(|_| NetworkError::Mtu {
        interface: iface.name.clone(),
        mtu: iface.mtu,
    })?;
    let backend = NetBackend {
        tap,
        mac: iface.mac,
        mtu,
        offloads: true,
    };
    // Joined first: an interface another VM has (a shared namespace) is refused before it
    // takes a NIC slot.
    redirect::join(nl, iface.index, tap_index).map_err(join_err)?;
    match guest.attach_nic(backend) {
        Ok(slot) => Ok(slot),
        Err(source) => {
            let _ = redirect::unjoin(nl, iface.index);
            Err(NetworkError::Attach {
                interface: iface.name.clone(),
                source,
            })
        }
    }
}

fn ip_network(n: &Ipv4Net) -> api::IpNetwork {
    api::IpNetwork {
        address: n.address.octets().to_vec(),
        prefix_len: u32::from(n.prefix_len),
        ..Default::default()
    }
}

/// The agent's request: `devices[i]` is the platform device of `net.interfaces[i]`'s slot.
fn request(net: &HostNetwork, devices: &[String]) -> api::ConfigureNetworkRequest {
    let interfaces = net
        .interfaces
        .iter()
        .zip(devices)
        .map(|(i, device)| api::NetworkInterface {
            name: i.name.clone(),
            mac: i.mac.to_vec(),
            mtu: i.mtu,
            addresses: i.addresses.iter().map(ip_network).collect(),
            platform_device: device.clone(),
            ..Default::default()
        })
        .collect();
    let routes = net.routes.iter().map(route).collect();
    let neighbors = net
        .neighbors
        .iter()
        .map(|n| api::Neighbor {
            address: n.address.octets().to_vec(),
            mac: n.mac.to_vec(),
            device: n.device.clone(),
            ..Default::default()
        })
        .collect();
    api::ConfigureNetworkRequest {
        interfaces,
        routes,
        neighbors,
        ..Default::default()
    }
}

fn route(r: &Route) -> api::Route {
    api::Route {
        destination: Some(ip_network(&r.destination)).into(),
        gateway: r.gateway.map(|g| g.octets().to_vec()).unwrap_or_default(),
        device: r.device.clone(),
        source: r.source.map(|s| s.octets().to_vec()).unwrap_or_default(),
        scope: u32::from(r.scope),
        metric: r.metric,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::network::Neighbor;

    #[test]
    fn the_request_says_what_the_namespace_has() {
        let net = HostNetwork {
            interfaces: vec![Interface {
                name: "eth0".into(),
                index: 7,
                mac: [2, 0x42, 0xac, 0x11, 0, 2],
                mtu: 1450,
                addresses: vec![Ipv4Net {
                    address: Ipv4Addr::new(172, 17, 0, 2),
                    prefix_len: 16,
                }],
            }],
            routes: vec![Route {
                destination: Ipv4Net {
                    address: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                },
                gateway: Some(Ipv4Addr::new(172, 17, 0, 1)),
                device: "eth0".into(),
                source: None,
                scope: 0,
                metric: 5,
            }],
            neighbors: vec![Neighbor {
                address: Ipv4Addr::new(172, 17, 0, 9),
                mac: [2, 0, 0, 0, 0, 9],
                device: "eth0".into(),
            }],
        };
        let req = request(&net, &["virtio-mmio.32".to_string()]);
        let i = &req.interfaces[0];
        assert_eq!(
            (i.name.as_str(), i.mtu, i.platform_device.as_str()),
            ("eth0", 1450, "virtio-mmio.32")
        );
        assert_eq!(i.mac, vec![2, 0x42, 0xac, 0x11, 0, 2]);
        assert_eq!(i.addresses[0].address, vec![172, 17, 0, 2]);
        assert_eq!(i.addresses[0].prefix_len, 16);
        let r = &req.routes[0];
        assert_eq!(r.destination.prefix_len, 0);
        assert_eq!(r.destination.address, vec![0, 0, 0, 0]);
        assert_eq!(r.gateway, vec![172, 17, 0, 1]);
        assert!(r.source.is_empty());
        assert_eq!((r.device.as_str(), r.metric), ("eth0", 5));
        assert_eq!(req.neighbors[0].address, vec![172, 17, 0, 9]);
    }
}

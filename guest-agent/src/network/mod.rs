//! The guest side of container networking (`ConfigureNetwork`): the container's interfaces, as
//! the host found them in the container's network namespace, become the guest's NICs, and the
//! container's processes use the guest's own network namespace.
//!
//! The recipe ([`configure`]), each step one small function:
//! 1. check the request ([`request::Config::parse`]); nothing has changed yet;
//! 2. bind each interface's virtio-mmio slot so its NIC appears ([`probe::bind_all`]);
//! 3. list the links (one netlink dump) and find each NIC by its MAC;
//! 4. plan every change as netlink requests ([`plan`]): renames, MTUs, links up, addresses,
//!    on-link routes, routes via a gateway, neighbours; unknown devices and taken names fail
//!    here, still before any netlink change;
//! 5. send the plan in one datagram and read every ACK at once ([`netlink::Netlink::run`]);
//!    the first refused step is the error, named with its object.
//!
//! IPv6: the guest kernel is built without it (it costs seconds of boot on PVM hosts). IPv6
//! items are still checked and sent; a kernel that answers "not supported" for one gets it
//! skipped with a warning in the agent's log, so an IPv6-enabled Docker network still gives
//! the container its IPv4 side. A kernel with IPv6 configures them.

pub mod netlink;
pub mod probe;
pub mod request;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use bulkhead_protocol::api;
use nix::errno::Errno;

use self::netlink::{Link, Netlink, NetlinkError, Request};
use self::request::{Config, Mac, RequestError};

/// The loopback device's index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Errors of configuring the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("bad request")]
    Request(#[from] RequestError),
    #[error("make the NIC appear")]
    Probe(#[from] probe::ProbeError),
    #[error("netlink")]
    Netlink(#[from] NetlinkError),
    #[error("interface {name}: no network interface has MAC address {mac}")]
    NoNic { name: String, mac: Mac },
    #[error("interface {name}: {count} network interfaces have MAC address {mac}")]
    ManyNics {
        name: String,
        mac: Mac,
        count: usize,
    },
    #[error("interface {name}: the name is taken by another interface")]
    NameTaken { name: String },
    /// The kernel refused a step.
    #[error("{what}: {}", .errno.desc())]
    Step { what: String, errno: Errno },
}

/// One change and what to call it in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub request: Request,
    /// IPv6 steps are skipped, with a warning, if the kernel has no IPv6.
    pub ipv6: bool,
}

impl Step {
    fn new(what: String, request: Request) -> Step {
        Step {
            what,
            request,
            ipv6: false,
        }
    }

    fn v6_if(mut self, address: IpAddr) -> Step {
        self.ipv6 = address.is_ipv6();
        self
    }
}

/// Handles a checked `ConfigureNetwork` request in the calling thread's network namespace;
/// returns warnings for the agent's log.
pub fn configure(config: &Config) -> Result<Vec<String>, NetworkError> {
    let slots = config
        .interfaces
        .iter()
        .filter_map(|i| i.platform_device.as_deref());
    probe::bind_all(Path::new("/sys"), slots)?;
    configure_present(config)
}

/// Steps 3-5 of the recipe, for NICs that are already there (tests use it with veth devices).
pub fn configure_present(config: &Config) -> Result<Vec<String>, NetworkError> {
    if config == &Config::default() {
        return Ok(Vec::new());
    }
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let steps = plan(config, &links)?;
    run(&mut nl, &steps)
}

/// Parses a request (step 1); a convenience for the server.
pub fn parse(r: &api::ConfigureNetworkRequest) -> Result<Config, NetworkError> {
    Ok(Config::parse(r)?)
}

/// Brings the loopback device up (runc gives every container an up `lo`; so must a guest whose
/// container has no network). Setting the flag again is harmless, so nothing is asked first.
pub fn loopback_up() -> Result<(), NetworkError> {
    let mut nl = Netlink::open()?;
    let up = Step::new("set lo up".into(), netlink::set_up(LOOPBACK_INDEX));
    run(&mut nl, &[up]).map(drop)
}

/// Sends the steps, in order; the first refused one is the error.
fn run(nl: &mut Netlink, steps: &[Step]) -> Result<Vec<String>, NetworkError> {
    let results = nl.run(steps.iter().map(|s| &s.request))?;
    judge(steps, results)
}

/// The first refused step is the error; an IPv6 step the kernel does not support is a warning.
fn judge(steps: &[Step], results: Vec<Option<i32>>) -> Result<Vec<String>, NetworkError> {
    let mut warnings = Vec::new();
    for (step, result) in steps.iter().zip(results) {
        let Some(errno) = result else {
            continue;
        };
        let errno = Errno::from_raw(errno);
        if step.ipv6 && matches!(errno, Errno::EOPNOTSUPP | Errno::EAFNOSUPPORT) {
            warnings.push(format!("{}: skipped, the kernel has no IPv6", step.what));
            continue;
        }
        return Err(NetworkError::Step {
            what: step.what.clone(),
            errno,
        });
    }
    Ok(warnings)
}

/// A NIC of the request and the link it is.
struct Nic<'a> {
    index: u32,
    current: &'a str,
    target: &'a str,
}

/// Every change the request asks for, as netlink requests in the order they must run, given
/// the namespace's `links`. Fails, before anything changes, on a NIC that is not there, a name
/// another interface has, or a route or neighbour on an unknown device.
pub fn plan(config: &Config, links: &[Link]) -> Result<Vec<Step>, NetworkError> {
    let mut nics = Vec::with_capacity(config.interfaces.len());
    for nic in &config.interfaces {
        let mut found = links.iter().filter(|l| l.mac == Some(nic.mac));
        let (Some(link), None) = (found.next(), found.next()) else {
            let count = links.iter().filter(|l| l.mac == Some(nic.mac)).count();
            return Err(if count == 0 {
                NetworkError::NoNic {
                    name: nic.name.clone(),
                    mac: nic.mac,
                }
            } else {
                NetworkError::ManyNics {
                    name: nic.name.clone(),
                    mac: nic.mac,
                    count,
                }
            });
        };
        nics.push(Nic {
            index: link.index,
            current: &link.name,
            target: &nic.name,
        });
    }
    // Names after the renames, to the link's index.
    let mut names: BTreeMap<&str, u32> = links.iter().map(|l| (l.name.as_str(), l.index)).collect();
    for nic in &nics {
        names.remove(nic.current);
    }
    for nic in &nics {
        if names.contains_key(nic.target) {
            return Err(NetworkError::NameTaken {
                name: nic.target.to_owned(),
            });
        }
        names.insert(nic.target, nic.index);
    }
    config.check_devices(&|d| names.contains_key(d))?;
    let index_of = |d: &str| names.get(d).copied();

    let mut steps = renames(&nics);
    for (nic, want) in nics.iter().zip(&config.interfaces) {
        let link = links.iter().find(|l| l.index == nic.index);
        if let Some(mtu) = want.mtu.filter(|m| link.is_none_or(|l| l.mtu != *m)) {
            let what = format!("set mtu {mtu} on {}", nic.target);
            steps.push(Step::new(what, netlink::set_mtu(nic.index, mtu)));
        }
        if !link.is_some_and(|l| l.up) {
            let what = format!("set {} up", nic.target);
            steps.push(Step::new(what, netlink::set_up(nic.index)));
        }
    }
    for (nic, want) in nics.iter().zip(&config.interfaces) {
        for &a in &want.addresses {
            let what = format!("add address {a} to {}", nic.target);
            steps.push(Step::new(what, netlink::add_address(nic.index, a)).v6_if(a.address));
        }
    }
    // On-link routes first: a gateway must be reachable when its route is added.
    let (on_link, via): (Vec<_>, Vec<_>) = config.routes.iter().partition(|r| r.gateway.is_none());
    for route in on_link.into_iter().chain(via) {
        let oif = route.device.as_deref().and_then(index_of);
        let step = Step::new(format!("add route {route}"), netlink::add_route(route, oif));
        steps.push(step.v6_if(route.destination.address));
    }
    for n in &config.neighbors {
        let what = format!(
            "add neighbor {} lladdr {} dev {}",
            n.address, n.mac, n.device
        );
        // check_devices made sure the device is known.
        let index = index_of(&n.device).unwrap_or(0);
        steps
            .push(Step::new(what, netlink::add_neighbor(index, n.address, n.mac)).v6_if(n.address));
    }
    Ok(steps)
}

/// Rename steps. When a NIC's new name is another NIC's current one (the kernel named them in
/// another order), every renamed NIC first gets a temporary name, so no rename meets a name
/// that is still in use.
fn renames(nics: &[Nic]) -> Vec<Step> {
    let moving: Vec<&Nic> = nics.iter().filter(|n| n.current != n.target).collect();
    let clash = moving
        .iter()
        .any(|n| moving.iter().any(|m| m.current == n.target));
    let mut steps = Vec::new();
    if clash {
        for n in &moving {
            let temp = format!("bhtmp{}", n.index);
            let what = format!("rename {} to {temp}", n.current);
            steps.push(Step::new(what, netlink::set_name(n.index, &temp)));
        }
    }
    for n in &moving {
        let what = format!("rename {} to {}", n.current, n.target);
        steps.push(Step::new(what, netlink::set_name(n.index, n.target)));
    }
    steps
}

#[cfg(test)]
mod tests;

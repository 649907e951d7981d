//! The container's network, carried into its VM (Kata's "tcfilter" model).
//!
//! The engine owns the container's network namespace (the monitor's: see
//! `monitor::setup::enter_namespaces`) and puts its interfaces there — podman and CRI before
//! `create`, Docker in a prestart hook or between `create` and `start`. So at `start`, before the
//! init runs, the monitor reads the namespace ([`discover`]), gives each interface a tap in the
//! same namespace joined to it by tc redirects ([`redirect`]), attaches each tap to a NIC slot of
//! the VM, and has the agent configure the guest's NICs as the interfaces were (name, MAC, MTU,
//! addresses, routes, neighbours). The namespace's own stack never sees the traffic.

mod discover;
pub mod netlink;
pub mod redirect;

use std::net::Ipv4Addr;

pub use discover::discover;

/// Taps are named `bh<N>`; discovery skips taps, so they are never taken for the engine's.
pub const TAP_PREFIX: &str = "bh";

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One interface of the container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Its index in the namespace.
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// IPv4 only: the guest kernel has no IPv6.
    pub addresses: Vec<Ipv4Net>,
}

/// A route the engine added (the kernel's own subnet routes are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `0.0.0.0/0` for the default route.
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub device: String,
    pub source: Option<Ipv4Addr>,
    /// rtnetlink scope (0 universe, 253 link).
    pub scope: u8,
    pub metric: u32,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub device: String,
}

/// What the engine gave the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<Neighbor>,
}

/// Removes the redirects that containers whose VMs have ended left in the network namespace
/// at `path` (one that outlives its containers: podman's, a pod's). A monitor cannot do it
/// when its VM ends (it has dropped CAP_NET_ADMIN by then); `delete` can. Runs on a thread of
/// its own that joins the namespace; returns how many it removed.
pub fn release_stale_redirects(path: &std::path::Path) -> std::io::Result<usize> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut nl = netlink::Netlink::open()?;
        let links = nl.dump(netlink_packet_route::RouteNetlinkMessage::GetLink(
            netlink_packet_route::link::LinkMessage::default(),
        ))?;
        let mut removed = 0;
        for l in links {
            if let netlink_packet_route::RouteNetlinkMessage::NewLink(l) = l {
                if redirect::drop_stale(&mut nl, l.header.index)? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// Removes the `path` of the spec's network namespace entry (see
/// [`crate::sandbox::SandboxFactory::adapt_spec`]).
pub fn drop_namespace_path(spec: &mut serde_json::Value) {
    let Some(list) = spec
        .pointer_mut("/linux/namespaces")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for ns in list {
        if ns.get("type").and_then(serde_json::Value::as_str) == Some("network") {
            if let Some(entry) = ns.as_object_mut() {
                entry.remove("path");
            }
        }
    }
}

/// Why the container's network could not be carried into its VM.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("read the container's network namespace")]
    Discover(#[source] std::io::Error),
    #[error("create tap {name}")]
    Tap {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("join {interface} and tap {tap}")]
    Join {
        interface: String,
        tap: String,
        #[source]
        source: std::io::Error,
    },
    /// No free slot (more interfaces than `net_slots`), a bad MAC, or the VM has ended.
    #[error("attach {interface} to the vm")]
    Attach {
        interface: String,
        #[source]
        source: bulkhead_vmm::devices::virtio::net::NetError,
    },
    #[error("{interface}: mtu {mtu} is more than a NIC takes")]
    Mtu { interface: String, mtu: u32 },
}

#[cfg(test)]
mod tests;

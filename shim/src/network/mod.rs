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
/// when its VM ends (it has dropped CAP_NET_ADMIN by then); `delete` can. Returns how many it
/// removed.
pub fn release_stale_redirects(path: &std::path::Path) -> std::io::Result<usize> {
    in_namespace(path, |nl, links| {
        let mut removed = 0;
        for (index, _) in links {
            if redirect::drop_stale(nl, index)? {
                removed += 1;
            }
        }
        Ok(removed)
    })
}

/// Refuses a network namespace whose interfaces another container's VM already carries (a
/// `--network container:` of a Bulkhead container): a frame can go to one VM only. `create`
/// asks, so the engine hears it before it has started anything; `start`'s join would refuse
/// too, later. A namespace that cannot be read is left to `start`.
pub fn refuse_carried(path: &std::path::Path) -> Result<(), NetworkError> {
    let carried = in_namespace(path, |nl, links| {
        // A tap of ours is redirected to its interface too: the interface is what is named.
        for (index, name) in links
            .into_iter()
            .filter(|(_, n)| !n.starts_with(TAP_PREFIX))
        {
            if redirect::carried(nl, index)? {
                return Ok(Some(name));
            }
        }
        Ok(None)
    });
    match carried {
        Ok(Some(interface)) => Err(NetworkError::Carried { interface }),
        Ok(None) => Ok(()),
        Err(e) => {
            crate::logging::debug(&format!("network namespace {}: {e}", path.display()));
            Ok(())
        }
    }
}

/// Runs `f` with a netlink socket in the network namespace at `path` and the index and name
/// of each of its links, on a thread of its own that joins the namespace (the caller's stays).
fn in_namespace<T: Send + 'static>(
    path: &std::path::Path,
    f: impl FnOnce(&mut netlink::Netlink, Vec<(u32, String)>) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    use netlink_packet_route::RouteNetlinkMessage;
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut nl = netlink::Netlink::open()?;
        let links = nl
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let name = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    });
                    Some((l.header.index, name.unwrap_or_default()))
                }
                _ => None,
            })
            .collect();
        f(&mut nl, links)
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
    #[error(
        "join {interface}: the interface is already carried into another VM (a Bulkhead \
         container's network namespace cannot be shared: its VM has it)"
    )]
    Carried { interface: String },
    #[error("{interface}: mtu {mtu} is more than a NIC takes")]
    Mtu { interface: String, mtu: u32 },
}

#[cfg(test)]
mod tests;

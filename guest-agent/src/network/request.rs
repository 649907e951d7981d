//! A `ConfigureNetwork` request checked and turned into typed values, before anything in the
//! guest changes: every malformed field fails here with a message that names it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_protocol::api;

/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = 15;
/// Longest platform device name we accept (the kernel's are like `virtio-mmio.33`).
const MAX_DEVICE_LEN: usize = 64;
/// Smallest MTU IPv4 allows.
const MIN_MTU: u32 = 68;

/// Errors of a request's content.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0:?} is not a valid interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':' or white space)")]
    Name(String),
    #[error("interface name {0:?} is given twice")]
    DuplicateName(String),
    #[error("{what}: a MAC address has 6 bytes, not {len}")]
    Mac { what: String, len: usize },
    #[error("MAC address {0} is given twice")]
    DuplicateMac(Mac),
    #[error("{what}: MTU {mtu} is out of range ({MIN_MTU} to 65535, or 0 to keep the NIC's)")]
    Mtu { what: String, mtu: u32 },
    #[error("{what}: {device:?} is not a platform device name")]
    PlatformDevice { what: String, device: String },
    #[error("{what}: an IP address has 4 or 16 bytes, not {len}")]
    Address { what: String, len: usize },
    #[error("{what}: prefix length {prefix_len} is too long for {address}")]
    Prefix {
        what: String,
        address: IpAddr,
        prefix_len: u32,
    },
    #[error("{what}: no destination (the default route has prefix length 0)")]
    NoDestination { what: String },
    #[error("{what}: {destination} has bits set past its prefix")]
    HostBits { what: String, destination: Network },
    #[error("{what}: {field} {address} is not of the destination's address family")]
    Family {
        what: String,
        field: &'static str,
        address: IpAddr,
    },
    #[error("{what}: scope {scope} is not a scope (0 to 255)")]
    Scope { what: String, scope: u32 },
    #[error("{what}: a route needs a gateway or a device")]
    NoNextHop { what: String },
    #[error("{what}: no interface named {device:?}")]
    UnknownDevice { what: String, device: String },
}

/// A MAC address; displays as `02:42:ac:11:00:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An address with its prefix; displays as `172.17.0.2/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Network {
    /// The IPv4 network's broadcast address (what Docker gives its addresses), if it has one.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.address {
            IpAddr::V4(a) if self.prefix_len < 31 => {
                Some(Ipv4Addr::from(u32::from(a) | (u32::MAX >> self.prefix_len)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One NIC to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Mac,
    /// `None`: keep the NIC's own.
    pub mtu: Option<u32>,
    pub addresses: Vec<Network>,
    /// `None`: the NIC is already there.
    pub platform_device: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Network,
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
    pub source: Option<IpAddr>,
    pub scope: u8,
    pub metric: u32,
}

impl fmt::Display for Route {
    /// As `ip route` shows it: `default via 172.17.0.1 dev eth0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.destination.prefix_len == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.destination)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.device {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: IpAddr,
    pub mac: Mac,
    pub device: String,
}

/// A checked request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbors: Vec<Neighbor>,
}

impl Config {
    /// Checks every field of `r`. Device names in routes and neighbours are checked later
    /// ([`Config::check_devices`]): they may name interfaces an earlier call configured.
    pub fn parse(r: &api::ConfigureNetworkRequest) -> Result<Config, RequestError> {
        let mut interfaces: Vec<Interface> = Vec::with_capacity(r.interfaces.len());
        for (i, nic) in r.interfaces.iter().enumerate() {
            let nic = interface(i, nic)?;
            if interfaces.iter().any(|n| n.name == nic.name) {
                return Err(RequestError::DuplicateName(nic.name));
            }
            if interfaces.iter().any(|n| n.mac == nic.mac) {
                return Err(RequestError::DuplicateMac(nic.mac));
            }
            interfaces.push(nic);
        }
        let routes = r
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| parse_route(i, route))
            .collect::<Result<_, _>>()?;
        let neighbors = r
            .neighbors
            .iter()
            .enumerate()
            .map(|(i, n)| neighbor(i, n))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            interfaces,
            routes,
            neighbors,
        })
    }

    /// Every device a route or neighbour names must be in `known` (the interfaces as they
    /// will be named).
    pub fn check_devices(&self, known: &dyn Fn(&str) -> bool) -> Result<(), RequestError> {
        let unknown = |what: String, device: &str| RequestError::UnknownDevice {
            what,
            device: device.to_owned(),
        };
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(d) = route.device.as_deref().filter(|d| !known(d)) {
                return Err(unknown(format!("routes[{i}] ({route})"), d));
            }
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            if !known(&n.device) {
                return Err(unknown(
                    format!("neighbors[{i}] ({})", n.address),
                    &n.device,
                ));
            }
        }
        Ok(())
    }
}

/// The kernel's rule (`dev_valid_name`): 1..=15 bytes, not `.` or `..`, no `/`, `:` or white
/// space.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// A sysfs file name the kernel could have made for a platform device (`virtio-mmio.33`,
/// `a003e00.virtio_mmio`): nothing that leaves the directory.
fn valid_platform_device(name: &str) -> bool {
    (1..=MAX_DEVICE_LEN).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn interface(i: usize, nic: &api::NetworkInterface) -> Result<Interface, RequestError> {
    if !valid_name(&nic.name) {
        return Err(RequestError::Name(nic.name.clone()));
    }
    let what = || format!("interfaces[{i}] ({})", nic.name);
    let mac = mac(&nic.mac, what)?;
    let mtu = match nic.mtu {
        0 => None,
        m if (MIN_MTU..=u32::from(u16::MAX)).contains(&m) => Some(m),
        mtu => return Err(RequestError::Mtu { what: what(), mtu }),
    };
    let platform_device = match nic.platform_device.as_str() {
        "" => None,
        d if valid_platform_device(d) => Some(d.to_owned()),
        d => {
            return Err(RequestError::PlatformDevice {
                what: what(),
                device: d.to_owned(),
            })
        }
    };
    let addresses = nic
        .addresses
        .iter()
        .map(|a| network(&a.address, a.prefix_len, what))
        .collect::<Result<_, _>>()?;
    Ok(Interface {
        name: nic.name.clone(),
        mac,
        mtu,
        addresses,
        platform_device,
    })
}

fn parse_route(i: usize, r: &api::Route) -> Result<Route, RequestError> {
    let what = || format!("routes[{i}]");
    let Some(dst) = r.destination.as_ref() else {
        return Err(RequestError::NoDestination { what: what() });
    };
    let destination = network(&dst.address, dst.prefix_len, what)?;
    if destination.address != masked(destination) {
        return Err(RequestError::HostBits {
            what: what(),
            destination,
        });
    }
    let same_family = |field: &'static str, bytes: &[u8]| -> Result<Option<IpAddr>, RequestError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let address = ip(bytes, what)?;
        if address.is_ipv4() != destination.address.is_ipv4() {
            return Err(RequestError::Family {
                what: what(),
                field,
                address,
            });
        }
        Ok(Some(address))
    };
    let gateway = same_family("gateway", &r.gateway)?;
    let source = same_family("source", &r.source)?;
    let device = match r.device.as_str() {
        "" => None,
        d if valid_name(d) => Some(d.to_owned()),
        d => return Err(RequestError::Name(d.to_owned())),
    };
    if gateway.is_none() && device.is_none() {
        return Err(RequestError::NoNextHop { what: what() });
    }
    let scope = u8::try_from(r.scope).map_err(|_| RequestError::Scope {
        what: what(),
        scope: r.scope,
    })?;
    Ok(Route {
        destination,
        gateway,
        device,
        source,
        scope,
        metric: r.metric,
    })
}

fn neighbor(i: usize, n: &api::Neighbor) -> Result<Neighbor, RequestError> {
    let what = || format!("neighbors[{i}]");
    if !valid_name(&n.device) {
        return Err(RequestError::Name(n.device.clone()));
    }
    Ok(Neighbor {
        address: ip(&n.address, what)?,
        mac: mac(&n.mac, what)?,
        device: n.device.clone(),
    })
}

fn mac(bytes: &[u8], what: impl Fn() -> String) -> Result<Mac, RequestError> {
    <[u8; 6]>::try_from(bytes)
        .map(Mac)
        .map_err(|_| RequestError::Mac {
            what: what(),
            len: bytes.len(),
        })
}

fn ip(bytes: &[u8], what: impl Fn() -> String) -> Result<IpAddr, RequestError> {
    if let Ok(b) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(b)));
    }
    if let Ok(b) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(b)));
    }
    Err(RequestError::Address {
        what: what(),
        len: bytes.len(),
    })
}

fn network(
    bytes: &[u8],
    prefix_len: u32,
    what: impl Fn() -> String,
) -> Result<Network, RequestError> {
    let address = ip(bytes, &what)?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    match u8::try_from(prefix_len) {
        Ok(p) if p <= max => Ok(Network {
            address,
            prefix_len: p,
        }),
        _ => Err(RequestError::Prefix {
            what: what(),
            address,
            prefix_len,
        }),
    }
}

/// The network's address with the bits past the prefix cleared.
fn masked(n: Network) -> IpAddr {
    match n.address {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(n.prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(n.prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

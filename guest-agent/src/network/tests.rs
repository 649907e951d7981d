//! Request checks and plans (pure), then the real thing: netlink in a fresh network namespace
//! of a test thread (root), with veth devices standing in for the guest's virtio NICs (only
//! the sysfs bind is the guest's alone). The namespace and its devices go with the thread.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use bulkhead_protocol::protobuf::MessageField;
use bulkhead_test_support::{require, Need};

use super::request::Network;
use super::*;

const MAC0: [u8; 6] = [0x02, 0, 0xc0, 0, 0x02, 0x02];
const MAC1: [u8; 6] = [0x02, 0, 0xc0, 0, 0x02, 0x03];

fn v4(a: [u8; 4]) -> Vec<u8> {
    a.to_vec()
}

fn net(address: Vec<u8>, prefix_len: u32) -> api::IpNetwork {
    api::IpNetwork {
        address,
        prefix_len,
        ..Default::default()
    }
}

fn nic(name: &str, mac: [u8; 6], addresses: Vec<api::IpNetwork>) -> api::NetworkInterface {
    api::NetworkInterface {
        name: name.into(),
        mac: mac.to_vec(),
        addresses,
        ..Default::default()
    }
}

fn route(dst: Vec<u8>, prefix_len: u32, gateway: Vec<u8>, device: &str) -> api::Route {
    api::Route {
        destination: MessageField::some(net(dst, prefix_len)),
        gateway,
        device: device.into(),
        ..Default::default()
    }
}

/// One NIC, one address, a default route via a gateway, the gateway's neighbour entry.
fn typical() -> api::ConfigureNetworkRequest {
    let mut eth0 = nic("eth0", MAC0, vec![net(v4([192, 0, 2, 2]), 24)]);
    eth0.mtu = 1400;
    api::ConfigureNetworkRequest {
        interfaces: vec![eth0],
        routes: vec![route(v4([0; 4]), 0, v4([192, 0, 2, 1]), "eth0")],
        neighbors: vec![api::Neighbor {
            address: v4([192, 0, 2, 1]),
            mac: vec![0x02, 0, 0xc0, 0, 0x02, 0x01],
            device: "eth0".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn parse_err(r: &api::ConfigureNetworkRequest) -> String {
    bulkhead_protocol::error_chain(&Config::parse(r).unwrap_err())
}

#[test]
fn malformed_requests_are_refused_with_the_field() {
    assert!(Config::parse(&typical()).is_ok());
    let mut r = typical();
    r.interfaces[0].name = "eth0:1".into();
    assert!(parse_err(&r).contains("\"eth0:1\" is not a valid interface name"));
    r.interfaces[0].name = "a-very-long-name".into();
    assert!(parse_err(&r).contains("not a valid interface name"));
    let mut r = typical();
    r.interfaces[0].mac.pop();
    assert_eq!(
        parse_err(&r),
        "interfaces[0] (eth0): a MAC address has 6 bytes, not 5"
    );
    let mut r = typical();
    r.interfaces[0].addresses[0].address.push(1);
    assert_eq!(
        parse_err(&r),
        "interfaces[0] (eth0): an IP address has 4 or 16 bytes, not 5"
    );
    let mut r = typical();
    r.interfaces[0].addresses[0].prefix_len = 33;
    assert_eq!(
        parse_err(&r),
        "interfaces[0] (eth0): prefix length 33 is too long for 192.0.2.2"
    );
    let mut r = typical();
    r.interfaces[0]
        .addresses
        .push(net(Ipv6Addr::LOCALHOST.octets().to_vec(), 129));
    assert!(parse_err(&r).contains("prefix length 129 is too long for ::1"));
    let mut r = typical();
    r.interfaces[0].mtu = 67;
    assert!(parse_err(&r).contains("MTU 67 is out of range"));
    let mut r = typical();
    r.interfaces[0].platform_device = "../../x".into();
    assert!(parse_err(&r).contains("\"../../x\" is not a platform device name"));
    let mut r = typical();
    r.interfaces.push(nic("eth0", MAC1, vec![]));
    assert_eq!(parse_err(&r), "interface name \"eth0\" is given twice");
    let mut r = typical();
    r.interfaces.push(nic("eth1", MAC0, vec![]));
    assert_eq!(
        parse_err(&r),
        "MAC address 02:00:c0:00:02:02 is given twice"
    );
    let mut r = typical();
    r.routes[0].destination = MessageField::none();
    assert!(parse_err(&r).contains("routes[0]: no destination"));
    let mut r = typical();
    r.routes[0].destination = MessageField::some(net(v4([10, 1, 2, 3]), 16));
    assert_eq!(
        parse_err(&r),
        "routes[0]: 10.1.2.3/16 has bits set past its prefix"
    );
    let mut r = typical();
    r.routes[0].gateway = Ipv6Addr::LOCALHOST.octets().to_vec();
    assert_eq!(
        parse_err(&r),
        "routes[0]: gateway ::1 is not of the destination's address family"
    );
    let mut r = typical();
    r.routes[0].scope = 256;
    assert!(parse_err(&r).contains("scope 256 is not a scope"));
    let mut r = typical();
    r.routes[0].gateway.clear();
    r.routes[0].device.clear();
    assert_eq!(
        parse_err(&r),
        "routes[0]: a route needs a gateway or a device"
    );
    let mut r = typical();
    r.neighbors[0].mac = vec![1, 2, 3];
    assert_eq!(
        parse_err(&r),
        "neighbors[0]: a MAC address has 6 bytes, not 3"
    );
    let mut r = typical();
    r.neighbors[0].device.clear();
    assert!(parse_err(&r).contains("\"\" is not a valid interface name"));
}

#[test]
fn valid_names_follow_the_kernel() {
    for ok in ["eth0", "a", "veth-1.2_x", "fifteen-chars-x"] {
        assert!(request::valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "sixteen-chars-xx",
        "a\tb",
    ] {
        assert!(!request::valid_name(bad), "{bad:?}");
    }
}

#[test]
fn broadcast_is_the_networks_last_address() {
    let n = |a: [u8; 4], p| Network {
        address: IpAddr::V4(Ipv4Addr::from(a)),
        prefix_len: p,
    };
    assert_eq!(
        n([172, 17, 0, 2], 16).broadcast(),
        Some(Ipv4Addr::new(172, 17, 255, 255))
    );
    assert_eq!(n([10, 0, 0, 1], 0).broadcast(), Some(Ipv4Addr::BROADCAST));
    assert_eq!(n([10, 0, 0, 1], 31).broadcast(), None);
}

fn link(index: u32, name: &str, mac: [u8; 6]) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(Mac(mac)),
        mtu: 1500,
        up: false,
    }
}

fn whats(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.what.as_str()).collect()
}

#[test]
fn the_plan_orders_the_steps() {
    let mut r = typical();
    // An on-link route listed after the route via the gateway still goes first.
    r.routes
        .push(route(v4([198, 51, 100, 0]), 24, vec![], "eth0"));
    let config = Config::parse(&r).unwrap();
    let links = [link(1, "lo", [0; 6]), link(3, "eth7", MAC0)];
    let steps = plan(&config, &links).unwrap();
    assert_eq!(
        whats(&steps),
        vec![
            "rename eth7 to eth0",
            "set mtu 1400 on eth0",
            "set eth0 up",
            "add address 192.0.2.2/24 to eth0",
            "add route 198.51.100.0/24 dev eth0",
            "add route default via 192.0.2.1 dev eth0",
            "add neighbor 192.0.2.1 lladdr 02:00:c0:00:02:01 dev eth0",
        ]
    );
    assert_eq!(steps[0].request, netlink::set_name(3, "eth0"));
    assert_eq!(
        steps[5].request,
        netlink::add_route(&config.routes[0], Some(3))
    );
    assert!(steps.iter().all(|s| !s.ipv6));
}

#[test]
fn the_plan_skips_what_is_already_so() {
    let config = Config::parse(&typical()).unwrap();
    let mut eth0 = link(3, "eth0", MAC0);
    eth0.mtu = 1400;
    eth0.up = true;
    let steps = plan(&config, &[eth0]).unwrap();
    assert_eq!(steps[0].what, "add address 192.0.2.2/24 to eth0");
}

#[test]
fn swapped_names_go_through_temporary_ones() {
    let r = api::ConfigureNetworkRequest {
        interfaces: vec![nic("eth0", MAC0, vec![]), nic("eth1", MAC1, vec![])],
        ..Default::default()
    };
    let config = Config::parse(&r).unwrap();
    let steps = plan(&config, &[link(2, "eth1", MAC0), link(3, "eth0", MAC1)]).unwrap();
    assert_eq!(
        whats(&steps)[..4],
        [
            "rename eth1 to bhtmp2",
            "rename eth0 to bhtmp3",
            "rename eth1 to eth0",
            "rename eth0 to eth1"
        ]
    );
}

#[test]
fn the_plan_refuses_what_the_links_contradict() {
    let config = Config::parse(&typical()).unwrap();
    let err = |links: &[Link]| bulkhead_protocol::error_chain(&plan(&config, links).unwrap_err());
    assert_eq!(
        err(&[link(1, "lo", [0; 6])]),
        "interface eth0: no network interface has MAC address 02:00:c0:00:02:02"
    );
    assert_eq!(
        err(&[link(2, "a", MAC0), link(3, "b", MAC0)]),
        "interface eth0: 2 network interfaces have MAC address 02:00:c0:00:02:02"
    );
    assert_eq!(
        err(&[link(2, "eth0", MAC1), link(3, "eth1", MAC0)]),
        "interface eth0: the name is taken by another interface"
    );
    let mut r = typical();
    r.routes[0].device = "eth9".into();
    let config = Config::parse(&r).unwrap();
    assert_eq!(
        bulkhead_protocol::error_chain(&plan(&config, &[link(3, "eth1", MAC0)]).unwrap_err()),
        "bad request: routes[0] (default via 192.0.2.1 dev eth9): no interface named \"eth9\""
    );
}

#[test]
fn ipv6_steps_the_kernel_cannot_do_are_warnings() {
    let v6 = Step::new(
        "add address 2001:db8::2/64 to eth0".into(),
        netlink::set_up(3),
    )
    .v6_if(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let v4 = Step::new(
        "add address 192.0.2.2/24 to eth0".into(),
        netlink::set_up(3),
    );
    let steps = [v6, v4.clone()];
    let warnings = judge(&steps, vec![Some(libc::EOPNOTSUPP), None]).unwrap();
    assert_eq!(
        warnings,
        ["add address 2001:db8::2/64 to eth0: skipped, the kernel has no IPv6"]
    );
    assert!(judge(&steps, vec![Some(libc::EAFNOSUPPORT), None]).is_ok());
    let e = judge(&steps, vec![Some(libc::EEXIST), Some(libc::EEXIST)]).unwrap_err();
    assert!(e
        .to_string()
        .starts_with("add address 2001:db8::2/64 to eth0: "));
    let e = judge(&[v4], vec![Some(libc::EOPNOTSUPP)]).unwrap_err();
    assert!(matches!(
        e,
        NetworkError::Step {
            errno: Errno::EOPNOTSUPP,
            ..
        }
    ));
}

// --- In a network namespace of our own -------------------------------------------------

/// Runs `f` on a new thread in a new network namespace (only that thread's: `unshare` with
/// `CLONE_NEWNET` moves the calling thread). Programs it starts inherit the namespace.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
        f()
    });
    thread
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn netns_ok() -> bool {
    require(&[Need::Root, Need::Program("ip")])
}

/// Runs `ip ARGS` (in the calling thread's namespace) and returns its JSON output.
fn ip(args: &[&str]) -> serde_json::Value {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).expect("ip -j output")
}

/// A veth device `name` with `mac`, down, whose peer is up (so it has a carrier when up).
fn veth(name: &str, peer: &str, mac: [u8; 6]) {
    let mac = Mac(mac).to_string();
    ip(&[
        "link", "add", name, "address", &mac, "type", "veth", "peer", "name", peer,
    ]);
    ip(&["link", "set", peer, "up"]);
}

fn configure_request(r: &api::ConfigureNetworkRequest) -> Result<Vec<String>, NetworkError> {
    configure_present(&Config::parse(r)?)
}

fn chain(r: Result<Vec<String>, NetworkError>) -> String {
    bulkhead_protocol::error_chain(&r.expect_err("must fail"))
}

#[test]
fn a_typical_network_is_configured_as_asked() {
    if !netns_ok() {
        return;
    }
    in_netns(|| {
        veth("bhnic0", "bhpeer0", MAC0);
        loopback_up().unwrap();
        assert!(configure_request(&typical()).unwrap().is_empty());

        let lo = &ip(&["-j", "link", "show", "dev", "lo"])[0];
        assert!(
            lo["flags"].as_array().unwrap().contains(&"UP".into()),
            "{lo}"
        );
        let eth0 = &ip(&["-j", "link", "show", "dev", "eth0"])[0];
        assert_eq!(eth0["address"], "02:00:c0:00:02:02");
        assert_eq!(eth0["mtu"], 1400);
        assert!(
            eth0["flags"].as_array().unwrap().contains(&"UP".into()),
            "{eth0}"
        );
        let addrs = &ip(&["-j", "-4", "addr", "show", "dev", "eth0"])[0]["addr_info"];
        assert_eq!(addrs.as_array().unwrap().len(), 1, "{addrs}");
        assert_eq!(addrs[0]["local"], "192.0.2.2");
        assert_eq!(addrs[0]["prefixlen"], 24);
        assert_eq!(addrs[0]["broadcast"], "192.0.2.255");
        let default = &ip(&["-j", "route", "show", "default"]);
        assert_eq!(default.as_array().unwrap().len(), 1, "{default}");
        assert_eq!(default[0]["gateway"], "192.0.2.1");
        assert_eq!(default[0]["dev"], "eth0");
        let neigh = &ip(&["-j", "neigh", "show", "dev", "eth0"]);
        assert_eq!(neigh[0]["dst"], "192.0.2.1");
        assert_eq!(neigh[0]["lladdr"], "02:00:c0:00:02:01");
        assert_eq!(neigh[0]["state"][0], "PERMANENT");
    });
    // Nothing of it reached the host's namespace.
    let host = Command::new("ip")
        .args(["link", "show", "dev", "bhpeer0"])
        .output()
        .unwrap();
    assert!(
        !host.status.success(),
        "bhpeer0 leaked into the host's namespace"
    );
}

#[test]
fn failures_name_the_step_and_the_object() {
    if !netns_ok() {
        return;
    }
    in_netns(|| {
        veth("bhnic0", "bhpeer0", MAC0);
        configure_request(&typical()).unwrap();
        // The same again: the address is there already.
        assert_eq!(
            chain(configure_request(&typical())),
            "add address 192.0.2.2/24 to eth0: File exists"
        );
        // A gateway no route reaches.
        let unreachable = api::ConfigureNetworkRequest {
            routes: vec![route(
                v4([203, 0, 113, 0]),
                25,
                v4([203, 0, 113, 200]),
                "eth0",
            )],
            ..Default::default()
        };
        assert_eq!(
            chain(configure_request(&unreachable)),
            "add route 203.0.113.0/25 via 203.0.113.200 dev eth0: Network is unreachable"
        );
        // A device nobody has: refused before any change.
        let routes_before = ip(&["-j", "route", "show"]);
        let mut unknown = typical();
        unknown.interfaces.clear();
        unknown.routes[0] = route(v4([203, 0, 113, 0]), 24, vec![], "eth9");
        let e = configure_present(&Config::parse(&unknown).unwrap()).unwrap_err();
        assert!(matches!(
            e,
            NetworkError::Request(RequestError::UnknownDevice { .. })
        ));
        assert_eq!(ip(&["-j", "route", "show"]), routes_before);
        // A NIC that is not there.
        let absent = api::ConfigureNetworkRequest {
            interfaces: vec![nic("eth1", MAC1, vec![])],
            ..Default::default()
        };
        assert_eq!(
            chain(configure_request(&absent)),
            "interface eth1: no network interface has MAC address 02:00:c0:00:02:03"
        );
        // A name another interface has.
        veth("bhnic1", "bhpeer1", MAC1);
        let taken = api::ConfigureNetworkRequest {
            interfaces: vec![nic("bhpeer0", MAC1, vec![])],
            ..Default::default()
        };
        assert_eq!(
            chain(configure_request(&taken)),
            "interface bhpeer0: the name is taken by another interface"
        );
    });
}

#[test]
fn a_later_call_adds_interfaces_even_with_swapped_names_and_ipv6() {
    if !netns_ok() {
        return;
    }
    in_netns(|| {
        veth("bhnic0", "bhpeer0", MAC0);
        configure_request(&typical()).unwrap();
        // The kernel named the next two NICs the other way round.
        veth("eth2", "bhpeer1", MAC1);
        let mac2 = [0x02, 0, 0xc0, 0, 0x02, 0x04];
        veth("eth1", "bhpeer2", mac2);
        let v6 = net(
            "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets().to_vec(),
            64,
        );
        let r = api::ConfigureNetworkRequest {
            interfaces: vec![
                nic("eth1", MAC1, vec![net(v4([198, 51, 100, 2]), 24), v6]),
                nic("eth2", mac2, vec![]),
            ],
            routes: vec![route(
                v4([203, 0, 113, 0]),
                24,
                v4([198, 51, 100, 1]),
                "eth1",
            )],
            ..Default::default()
        };
        // This host's kernel has IPv6, so nothing is skipped.
        assert!(configure_request(&r).unwrap().is_empty());
        let eth1 = &ip(&["-j", "addr", "show", "dev", "eth1"])[0];
        assert_eq!(eth1["address"], "02:00:c0:00:02:03");
        let locals: Vec<_> = eth1["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["local"].as_str().unwrap().to_owned())
            .collect();
        assert!(locals.contains(&"198.51.100.2".to_owned()), "{locals:?}");
        assert!(locals.contains(&"2001:db8::2".to_owned()), "{locals:?}");
        assert_eq!(
            ip(&["-j", "link", "show", "dev", "eth2"])[0]["address"],
            "02:00:c0:00:02:04"
        );
        let via = &ip(&["-j", "route", "show", "203.0.113.0/24"])[0];
        assert_eq!(via["gateway"], "198.51.100.1");
        // The first call's interface is untouched.
        assert_eq!(ip(&["-j", "route", "show", "default"])[0]["dev"], "eth0");
    });
}

/// An empty request changes nothing and costs no syscall (not even a socket).
#[test]
fn an_empty_request_does_nothing() {
    assert!(configure_present(&Config::default()).unwrap().is_empty());
}

//! Discovery and the tc join against a real network namespace: each test runs on its own thread
//! that unshares a new namespace (only that thread's), builds what an engine would there with
//! `ip`, and checks what our netlink code reads and does. Nothing reaches the host's namespace,
//! and the namespace dies with the thread. Needs root (CAP_NET_ADMIN), as the runtime does.

use std::net::Ipv4Addr;
use std::process::Command;

use super::netlink::Netlink;
use super::*;

/// Runs `f` on a thread in a fresh network namespace.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    })
    .join()
    .expect("test thread")
}

/// `ip ARGS` in the calling thread's namespace (a child inherits it).
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A netlink socket in the calling thread's namespace and the indexes of `eth0` and `bh0`.
fn eth0_and_bh0() -> (Netlink, u32, u32) {
    let mut nl = Netlink::open().unwrap();
    let eth0 = redirect::link_index(&mut nl, "eth0").unwrap();
    let tap = redirect::link_index(&mut nl, "bh0").unwrap();
    (nl, eth0, tap)
}

fn tc(args: &str) -> String {
    let out = Command::new("tc")
        .args(args.split_whitespace())
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// What Docker leaves in a container's namespace: `eth0` (one end of a veth) up with an address,
/// a default route through the bridge's address, and here also a permanent neighbour and a
/// second, down interface that is not the container's network.
fn docker_like() {
    ip("link add eth0 address 02:42:ac:11:00:02 mtu 1450 type veth peer name peer0");
    ip("addr add 172.17.0.2/16 dev eth0");
    ip("link set eth0 up");
    ip("link set peer0 up");
    ip("route add default via 172.17.0.1 dev eth0");
    // libnetwork re-adds the subnet route itself, so it is not `proto kernel`.
    ip("route del 172.17.0.0/16 dev eth0");
    ip("route add 172.17.0.0/16 dev eth0 proto boot scope link src 172.17.0.2");
    ip("route add 10.7.0.0/24 dev eth0 scope link");
    ip("neigh add 172.17.0.9 lladdr 02:42:ac:11:00:09 dev eth0 nud permanent");
    ip("link add spare type veth peer name spare1");
}

#[test]
fn discovery_reads_what_the_engine_configured() {
    let (net, peer_index) = in_new_netns(|| {
        docker_like();
        let mut nl = Netlink::open().unwrap();
        let net = discover(&mut nl).unwrap();
        let peer = redirect::link_index(&mut nl, "peer0").unwrap();
        (net, peer)
    });
    // peer0 is up too (it is the other end, left in the namespace by this test only).
    let eth0 = net
        .interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .expect("eth0 found");
    assert_eq!(eth0.mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    assert_eq!(eth0.mtu, 1450);
    assert_eq!(
        eth0.addresses,
        vec![Ipv4Net {
            address: Ipv4Addr::new(172, 17, 0, 2),
            prefix_len: 16
        }]
    );
    assert!(net
        .interfaces
        .iter()
        .all(|i| !["lo", "spare", "spare1"].contains(&i.name.as_str())));
    assert!(net.interfaces.iter().any(|i| i.index == peer_index));
    // Only the engine's routes (in the kernel's dump order; the agent orders them): the 172.17.0.0/16 subnet route is the guest kernel's to make.
    assert_eq!(
        net.routes,
        vec![
            Route {
                destination: Ipv4Net {
                    address: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0
                },
                gateway: Some(Ipv4Addr::new(172, 17, 0, 1)),
                device: "eth0".into(),
                source: None,
                scope: 0,
                metric: 0,
            },
            Route {
                destination: Ipv4Net {
                    address: Ipv4Addr::new(10, 7, 0, 0),
                    prefix_len: 24
                },
                gateway: None,
                device: "eth0".into(),
                source: None,
                scope: 253,
                metric: 0,
            }
        ]
    );
    assert_eq!(
        net.neighbors,
        vec![Neighbor {
            address: Ipv4Addr::new(172, 17, 0, 9),
            mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x09],
            device: "eth0".into(),
        }]
    );
}

#[test]
fn an_empty_namespace_has_no_interfaces() {
    let net = in_new_netns(|| {
        ip("link set lo up");
        discover(&mut Netlink::open().unwrap()).unwrap()
    });
    assert_eq!(net, HostNetwork::default());
}

#[test]
fn join_redirects_both_ways_and_unjoin_restores_the_interface() {
    let (joined, after, again) = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        let (mut nl, eth0, tap) = eth0_and_bh0();
        redirect::tap_up(&mut nl, tap, 1450).unwrap();
        redirect::join(&mut nl, eth0, tap).unwrap();
        let joined = (
            tc("filter show dev eth0 ingress"),
            tc("filter show dev bh0 ingress"),
            ip("link show bh0"),
        );
        // A second join of the same pair is refused (the tap is there), not doubled.
        let again = redirect::join(&mut nl, eth0, tap).is_err();
        redirect::unjoin(&mut nl, eth0).unwrap();
        redirect::unjoin(&mut nl, tap).unwrap();
        // Twice is fine: nothing to remove.
        redirect::unjoin(&mut nl, eth0).unwrap();
        (
            joined,
            tc("qdisc show dev eth0") + &tc("filter show dev eth0 ingress"),
            again,
        )
    });
    let (eth0_filters, tap_filters, tap_link) = joined;
    assert!(
        eth0_filters.contains("u32") && eth0_filters.contains("Redirect to device bh0"),
        "eth0 ingress: {eth0_filters}"
    );
    assert!(
        tap_filters.contains("u32") && tap_filters.contains("Redirect to device eth0"),
        "bh0 ingress: {tap_filters}"
    );
    assert!(
        tap_link.contains("mtu 1450") && tap_link.contains("UP"),
        "{tap_link}"
    );
    assert!(again);
    assert!(
        !after.contains("ingress") && !after.contains("u32"),
        "{after}"
    );
}

#[test]
fn the_guest_spec_keeps_its_network_namespace_without_the_host_path() {
    let mut spec = serde_json::json!({"linux": {"namespaces": [
        {"type": "pid"},
        {"type": "network", "path": "/run/netns/netns-1234"},
    ]}});
    drop_namespace_path(&mut spec);
    assert_eq!(
        spec["linux"]["namespaces"],
        serde_json::json!([{"type": "pid"}, {"type": "network"}])
    );
    let mut none = serde_json::json!({"process": {}});
    drop_namespace_path(&mut none);
    assert_eq!(none, serde_json::json!({"process": {}}));
}

#[test]
fn a_redirect_left_by_an_ended_vm_is_replaced() {
    let filters = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        ip("tuntap add dev bh1 mode tap");
        let mut nl = Netlink::open().unwrap();
        let eth0 = redirect::link_index(&mut nl, "eth0").unwrap();
        let old = redirect::link_index(&mut nl, "bh0").unwrap();
        let new = redirect::link_index(&mut nl, "bh1").unwrap();
        redirect::join(&mut nl, eth0, old).unwrap();
        // The first VM ends: its tap goes, its redirect on eth0 stays.
        ip("link del bh0");
        redirect::join(&mut nl, eth0, new).unwrap();
        tc("filter show dev eth0 ingress")
    });
    assert!(filters.contains("Redirect to device bh1"), "{filters}");
    assert_eq!(filters.matches("mirred").count(), 1, "{filters}");
}

#[test]
fn delete_releases_the_redirects_of_ended_vms_in_a_lasting_namespace() {
    let (removed, filters) = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        let (mut nl, eth0, tap) = eth0_and_bh0();
        redirect::join(&mut nl, eth0, tap).unwrap();
        // A live VM's redirect stays.
        let tid = nix::unistd::gettid();
        let path = format!("/proc/self/task/{tid}/ns/net");
        assert_eq!(release_stale_redirects(path.as_ref()).unwrap(), 0);
        ip("link del bh0");
        let removed = release_stale_redirects(path.as_ref()).unwrap();
        (removed, tc("qdisc show dev eth0"))
    });
    assert_eq!(removed, 1);
    assert!(!filters.contains("ingress"), "{filters}");
}

#[test]
fn a_join_that_fails_half_way_is_undone() {
    let (failed, left) = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        // Something else already has an ingress qdisc on the tap: the second half fails.
        tc("qdisc add dev bh0 ingress");
        let (mut nl, eth0, tap) = eth0_and_bh0();
        let failed = redirect::join(&mut nl, eth0, tap).is_err();
        (failed, tc("qdisc show dev eth0"))
    });
    assert!(failed);
    assert!(!left.contains("ingress"), "eth0 kept half a join: {left}");
}

#[test]
fn create_refuses_a_namespace_whose_interface_another_vm_carries() {
    let (refused, after_end) = in_new_netns(|| {
        // The tap before the interface (as Docker's moved-in veth comes after it): the tap's
        // own redirect is not taken for a carried interface.
        ip("tuntap add dev bh0 mode tap");
        docker_like();
        let (mut nl, eth0, tap) = eth0_and_bh0();
        let tid = nix::unistd::gettid();
        let path = std::path::PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
        assert!(refuse_carried(&path).is_ok(), "nobody carries it yet");
        redirect::join(&mut nl, eth0, tap).unwrap();
        let refused = refuse_carried(&path).map_err(|e| e.to_string());
        // Once that VM has ended (its tap gone), the namespace is free again.
        ip("link del bh0");
        (refused, refuse_carried(&path).is_ok())
    });
    let err = refused.unwrap_err();
    assert!(
        err.starts_with("join eth0:") && err.contains("already carried into another VM"),
        "{err}"
    );
    assert!(after_end);
}

#[test]
fn an_ingress_qdisc_left_without_a_redirect_does_not_stop_a_join() {
    let filters = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        tc("qdisc add dev eth0 ingress");
        let (mut nl, eth0, tap) = eth0_and_bh0();
        redirect::join(&mut nl, eth0, tap).unwrap();
        tc("filter show dev eth0 ingress")
    });
    assert!(filters.contains("Redirect to device bh0"), "{filters}");
}

#[test]
fn ingress_filters_of_someone_else_are_neither_dropped_nor_taken_for_a_vm() {
    let (joined, carried, filters) = in_new_netns(|| {
        docker_like();
        ip("tuntap add dev bh0 mode tap");
        tc("qdisc add dev eth0 ingress");
        // A classifier without an action (this host's kernel has no act_gact for `drop`).
        let added = tc("filter add dev eth0 ingress protocol ip u32 match u8 0 0");
        assert!(added.trim().is_empty(), "{added}");
        let (mut nl, eth0, tap) = eth0_and_bh0();
        let joined = redirect::join(&mut nl, eth0, tap).map_err(|e| e.to_string());
        let carried = redirect::carried(&mut nl, eth0).unwrap();
        (joined, carried, tc("filter show dev eth0 ingress"))
    });
    let err = joined.unwrap_err();
    assert!(err.contains("not Bulkhead's"), "{err}");
    assert!(!carried);
    assert!(
        filters.contains("match 00000000/00000000") && !filters.contains("mirred"),
        "kept: {filters}"
    );
}

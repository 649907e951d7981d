//! A network namespace given by path, as podman and CRI give it, with two interfaces reaches the
//! guest whole (issue 12), through the shipped `bulkhead` binary and a real micro-VM: both NICs
//! with their MACs, MTUs and addresses, the default route and a route via a gateway on the
//! second interface, each answering from the peer namespace. After `run` (which deletes) no tap and no tc
//! redirect is left in the namespace, which outlives the container. All traffic stays in two
//! namespaces the test makes. One VM start.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::process::Command;

use bulkhead_tests::busybox::busybox_tar;
use bulkhead_tests::cli::{become_subreaper, Cli};
use bulkhead_tests::engine::netns::TestNetns;
use bulkhead_tests::{require, vm_needs};
use serde_json::json;

fn sh(line: &str) {
    let o = Command::new("sh").args(["-c", line]).output().unwrap();
    assert!(
        o.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// In the guest: the links, the addresses, the routes, then one ping per peer address.
const PROBE: &str = "ip -o link; ip -o -4 addr; ip route; \
    for a in 10.201.0.1 10.202.0.1 10.203.0.1; do \
      ping -c 1 -W 20 $a >/dev/null 2>&1 && echo reached=$a; done";

#[test]
fn every_interface_of_a_namespace_given_by_path_reaches_the_guest() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let ctr = TestNetns::new("bhnc");
    let peer = TestNetns::new("bhnp");
    let (c, p) = (ctr.name(), peer.name());
    // The container's side: eth0 (MTU 1400) and eth1, a default route and a gateway route.
    sh(&format!(
        "ip -n {c} link add eth0 address 02:00:0a:c9:00:02 mtu 1400 type veth peer name p0 netns {p} && \
         ip -n {c} link add eth1 address 02:00:0a:ca:00:02 type veth peer name p1 netns {p} && \
         ip -n {c} addr add 10.201.0.2/24 dev eth0 && ip -n {c} addr add 10.202.0.2/24 dev eth1 && \
         ip -n {c} link set eth0 up && ip -n {c} link set eth1 up && \
         ip -n {c} route add default via 10.201.0.1 && \
         ip -n {c} route add 10.203.0.0/24 via 10.202.0.1"
    ));
    // The peers: the other ends, and 10.203.0.1 behind the second one.
    sh(&format!(
        "ip -n {p} link set p0 mtu 1400 && \
         ip -n {p} addr add 10.201.0.1/24 dev p0 && ip -n {p} addr add 10.202.0.1/24 dev p1 && \
         ip -n {p} addr add 10.203.0.1/32 dev lo && \
         ip -n {p} link set p0 up && ip -n {p} link set p1 up"
    ));

    let rt = Cli::new();
    let bundle = rt.dir().join("bundle");
    fs::create_dir_all(&bundle).unwrap();
    busybox_tar(&bundle); // leaves the rootfs in bundle/busybox
    let caps = json!(["CAP_NET_RAW"]);
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", PROBE], "cwd": "/", "env": ["PATH=/bin"],
                    "user": {"uid": 0, "gid": 0},
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
        "root": {"path": bundle.join("busybox")},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"},
                                 {"type": "network", "path": ctr.path()}]}
    });
    fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    let (code, out) = rt.run(&["run", "--bundle", bundle.to_str().unwrap(), "net"]);
    let diag = format!(
        "exit {code:?}, output:\n{out}\nconsole:\n{}",
        rt.console("net")
    );
    assert_eq!(code, Some(0), "{diag}");

    // Both NICs, with the interfaces' names, MACs and MTUs.
    let link = |name: &str| {
        out.lines()
            .find(|l| l.contains(&format!(": {name}:")))
            .unwrap_or_else(|| panic!("no {name}; {diag}"))
            .to_string()
    };
    let eth0 = link("eth0");
    assert!(
        eth0.contains("mtu 1400") && eth0.contains("02:00:0a:c9:00:02"),
        "{diag}"
    );
    assert!(link("eth1").contains("02:00:0a:ca:00:02"), "{diag}");
    assert!(
        out.contains("10.201.0.2/24") && out.contains("10.202.0.2/24"),
        "{diag}"
    );
    assert!(out.contains("default via 10.201.0.1 dev eth0"), "{diag}");
    assert!(
        out.contains("10.203.0.0/24 via 10.202.0.1 dev eth1"),
        "{diag}"
    );
    for a in ["10.201.0.1", "10.202.0.1", "10.203.0.1"] {
        assert!(out.contains(&format!("reached={a}")), "{a}; {diag}");
    }

    // `run` has deleted the container (as runc's does).
    rt.assert_gone("net");
    let links = ctr.links();
    assert!(!links.contains(": bh"), "a tap left: {links}");
    let o = Command::new("nsenter")
        .arg(format!("--net={}", ctr.path().display()))
        .args(["tc", "qdisc", "show"])
        .output()
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&o.stdout);
    assert!(!qdiscs.contains("ingress"), "redirects left: {qdiscs}");
}

//! Docker's network reaches a Bulkhead container as it reaches a runc one (issue 12): a published
//! port serves, containers on the default bridge reach each other by IP (Bulkhead↔Bulkhead and
//! Bulkhead↔runc), `/etc/resolv.conf` and `/etc/hosts` are Docker's, `--network none` leaves
//! only `lo`, `--network host` fails in one line. runc first (it proves the cases), then
//! Bulkhead, on one private dockerd that runs — with its bridge, NAT rules and published ports
//! — inside a network namespace this suite makes: no packet leaves it and the containers'.
//! Gated by `BULKHEAD_E2E=1`; `cargo test --test docker_network -- bulkhead::` runs a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use bulkhead_tests::engine::dockerd::{Dockerd, IMAGE};
use bulkhead_tests::engine::suite::{self, half_trials, trial, Shared};
use bulkhead_tests::engine::{processes_of, text};
use bulkhead_tests::{vm_needs, Need};

/// A server answering `GET /` with `body` on port 80 (busybox httpd in the foreground).
fn server_script(body: &str) -> String {
    format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// How long a just-started server may take to answer: a Bulkhead start is a VM restore (or a
/// boot) plus the container's start, seconds to a minute on a busy PVM host.
const SERVE_TIMEOUT: Duration = Duration::from_secs(300);

fn docker_ok(d: &Dockerd, args: &[&str]) -> String {
    let o = d.docker(args);
    assert!(
        o.status.success(),
        "docker {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout).trim().to_string()
}

/// Starts a detached server container; returns its id and bridge IP.
fn start_server(d: &Dockerd, runtime: &str, body: &str, extra: &[&str]) -> (String, String) {
    let script = server_script(body);
    let args = [
        &["run", "-d", "--runtime", runtime][..],
        extra,
        &[IMAGE, "sh", "-c", &script],
    ]
    .concat();
    let id = docker_ok(d, &args);
    let ip = docker_ok(d, &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]);
    assert!(ip.starts_with("172."), "bridge address of {id}: {ip:?}");
    (id, ip)
}

fn remove(d: &Dockerd, id: &str) {
    docker_ok(d, &["rm", "-f", id]);
}

/// A client container of `runtime` fetching `http://<ip>/`, retrying while the server starts.
fn fetch_from_container(d: &Dockerd, runtime: &str, ip: &str) -> String {
    let script = format!(
        "for i in $(seq 1 60); do wget -q -O - http://{ip}/ && exit 0; sleep 1; done; exit 1"
    );
    docker_ok(
        d,
        &[
            "run",
            "--rm",
            "--runtime",
            runtime,
            IMAGE,
            "sh",
            "-c",
            &script,
        ],
    )
}

fn netns(d: &Dockerd) -> &bulkhead_tests::engine::netns::TestNetns {
    d.netns.as_ref().expect("a networked dockerd")
}

type Case = fn(&Dockerd, &String);

/// The cases both halves run; `rt` is the half's runtime.
fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("published_port_serves_a_file", |d, rt| {
            let (id, _) = start_server(d, rt, &format!("hello-{rt}"), &["-p", "18080:80"]);
            let got = netns(d).http_get_when_up(([127, 0, 0, 1], 18080).into(), SERVE_TIMEOUT);
            remove(d, &id);
            assert_eq!(got.unwrap().trim(), format!("hello-{rt}"));
        }),
        ("containers_reach_each_other_by_ip", |d, rt| {
            let (id, ip) = start_server(d, rt, &format!("peer-{rt}"), &[]);
            let got = fetch_from_container(d, rt, &ip);
            remove(d, &id);
            assert_eq!(got, format!("peer-{rt}"));
        }),
        ("resolv_conf_and_hosts_are_dockers", |d, rt| {
            let out = docker_ok(
                d,
                &[
                    "run", "--rm", "--runtime", rt, "--hostname", "bh-host", "--add-host",
                    "extra.test:10.99.0.1", IMAGE, "sh", "-c",
                    "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; ip -o -4 addr show eth0",
                ],
            );
            let mut parts = out.split("---");
            let (resolv, hosts, addr) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert!(resolv.contains("nameserver"), "{out}");
            assert!(hosts.contains("10.99.0.1\textra.test"), "{out}");
            // Docker's hosts file names the container's own address and hostname.
            let ip = addr
                .split_whitespace()
                .nth(3)
                .and_then(|a| a.split('/').next())
                .unwrap_or_default();
            assert!(
                hosts
                    .lines()
                    .any(|l| l.starts_with(ip) && l.contains("bh-host")),
                "{out}"
            );
        }),
        ("network_none_has_only_loopback", |d, rt| {
            let out = docker_ok(
                d,
                &[
                    "run",
                    "--rm",
                    "--runtime",
                    rt,
                    "--network",
                    "none",
                    IMAGE,
                    "sh",
                    "-c",
                    "ip -o link | cut -d: -f2; ip -o -4 addr",
                ],
            );
            let links: Vec<&str> = out.lines().map(str::trim).collect();
            assert_eq!(links[0], "lo", "{out}");
            assert!(out.contains("127.0.0.1/8"), "loopback is up: {out}");
            assert!(!out.contains("eth"), "{out}");
        }),
    ]
}

/// Nothing of Bulkhead is left: no monitors, no taps or tc redirects in any container namespace
/// Docker still has, no veths on dockerd's bridge.
fn assert_nothing_left(d: &Dockerd) {
    let left = processes_of(d.bin());
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
    let links = netns(d).links();
    assert!(
        !links.contains("veth") && !links.contains(" bh"),
        "links left in the engine's namespace: {links}"
    );
    // Docker removes a container's namespace file in a later garbage collection, so some
    // may still be there: none may hold a tap or a tc redirect of ours.
    let ns_dir = d.dir.path().join("exec/netns");
    for ns in std::fs::read_dir(&ns_dir).unwrap().filter_map(Result::ok) {
        let path = ns.path();
        let run = |args: &[&str]| {
            let o = bulkhead_tests::engine::output(
                std::process::Command::new("nsenter")
                    .arg(format!("--net={}", path.display()))
                    .args(args),
            );
            text(&o.stdout)
        };
        let links = run(&["ip", "-o", "link"]);
        assert!(
            !links.contains(": bh"),
            "a tap left in {}: {links}",
            path.display()
        );
        let qdiscs = run(&["tc", "qdisc", "show"]);
        assert!(
            !qdiscs.contains("ingress"),
            "tc left in {}: {qdiscs}",
            path.display()
        );
    }
}

fn main() {
    let shared = Shared::new(Dockerd::start_networked);
    let mut trials = half_trials("runc", &shared, |_| "runc".to_string(), cases());
    trials.extend(half_trials(
        "bulkhead",
        &shared,
        |_| "bulkhead".to_string(),
        cases(),
    ));
    let d = Arc::clone(&shared);
    trials.push(trial("runc::network_host_runs", move || {
        // The case below fails for Bulkhead only: runc shares the host's network.
        docker_ok(
            d.get(),
            &[
                "run",
                "--rm",
                "--runtime",
                "runc",
                "--network",
                "host",
                IMAGE,
                "true",
            ],
        );
    }));
    let d = Arc::clone(&shared);
    trials.push(trial("bulkhead::reaches_runc_and_back", move || {
        let d = d.get();
        let (runc_id, runc_ip) = start_server(d, "runc", "from-runc", &[]);
        let from_runc = fetch_from_container(d, "bulkhead", &runc_ip);
        remove(d, &runc_id);
        assert_eq!(from_runc, "from-runc");
        let (bh_id, bh_ip) = start_server(d, "bulkhead", "from-bulkhead", &[]);
        let from_bh = fetch_from_container(d, "runc", &bh_ip);
        remove(d, &bh_id);
        assert_eq!(from_bh, "from-bulkhead");
    }));
    let d = Arc::clone(&shared);
    trials.push(trial(
        "bulkhead::network_host_fails_in_one_line",
        move || {
            let d = d.get();
            let o = d.docker(&[
                "run",
                "--rm",
                "--runtime",
                "bulkhead",
                "--network",
                "host",
                IMAGE,
                "true",
            ]);
            assert_ne!(o.status.code(), Some(0));
            let err = text(&o.stderr);
            assert!(
                err.contains("share the host's network namespace") && err.contains("micro-VM"),
                "{err}"
            );
        },
    ));
    let d = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        assert_nothing_left(d.get())
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("docker_network", &needs, trials, shared)
}

//! The network cases every engine suite runs (issue 12), runc first (it proves the cases), then
//! Bulkhead, on an engine whose network lives in a namespace the suite made
//! ([`super::netns::TestNetns`]): a published port serves, containers on the engine's default
//! bridge reach each other by IP (Bulkhead↔Bulkhead and Bulkhead↔runc), `/etc/resolv.conf` and
//! `/etc/hosts` are the engine's, `--network none` leaves only `lo`, `--network host` fails in
//! one line. No packet leaves the suite's namespace and the containers' own.
//!
//! Each half starts one server ([`Server`]), which every case of it that needs one shares: a
//! Bulkhead container is a VM boot, seconds to tens of seconds on emulated or PVM hosts.

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::Trial;

use super::netns::TestNetns;
use super::suite::{half_trials, trial, Shared};
use super::{text, EngineCli};

/// An engine with a network of its own.
pub trait NetEngine: Send + Sync + 'static {
    fn cli(&self) -> EngineCli;
    fn netns(&self) -> &TestNetns;
    /// The busybox image.
    fn image(&self) -> &'static str;
}

/// How long a just-started server may take to answer: a Bulkhead start is a VM restore (or a
/// boot) plus the container's start, seconds to a minute on a busy PVM host.
const SERVE_TIMEOUT: Duration = Duration::from_secs(300);

/// The host ports the runc and the Bulkhead half's servers publish: both servers run at once
/// (the runc one serves cases after the Bulkhead half).
const RUNC_PORT: u16 = 18080;
const BULKHEAD_PORT: u16 = 18081;

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout).trim().to_string()
}

/// `run MODE [--runtime RT] EXTRA… ARGS…` on `e`.
fn run(e: &impl NetEngine, rt: &str, mode: &str, args: &[&str]) -> Output {
    let cli = e.cli();
    cli.output(rt, &cli.run_args(rt, mode, args))
}

/// Starts a detached server answering `GET /` with `body` (busybox httpd on port 80); returns
/// its id and bridge IP.
fn start_server(e: &impl NetEngine, rt: &str, body: &str, extra: &[&str]) -> (String, String) {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    let args = [extra, &[e.image(), "sh", "-c", &script]].concat();
    let id = ok(run(e, rt, "-d", &args), "start the server");
    let cli = e.cli();
    let ip = ok(
        cli.output(
            rt,
            &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id],
        ),
        "inspect",
    );
    assert!(ip.split('.').count() == 4, "bridge address of {id}: {ip:?}");
    (id, ip)
}

/// SIGKILL, then remove: `podman rm -f` first waits 10 s for a SIGTERM that httpd (pid 1)
/// ignores.
fn remove(e: &impl NetEngine, rt: &str, id: &str) {
    let cli = e.cli();
    let _ = cli.output(rt, &["kill", id]);
    ok(cli.output(rt, &["rm", "-f", id]), "rm");
}

/// One half's server, publishing its port: the published-port, container-to-container and
/// `--network container:` cases of the half (and the cross-runtime case) all ask it, which
/// saves a Bulkhead half three VM boots. Started by the first case that needs it (so a case run
/// alone starts it), removed by the last (`network_container_…`, before "nothing left behind").
/// When a filtered run leaves that case out, the server goes once no trial left can ask it
/// (its last `Arc`, held by the trials, is dropped as the last of them ends).
struct Server<E: NetEngine> {
    engine: Arc<Shared<E>>,
    /// The half's `--runtime` value.
    runtime: fn(&E) -> String,
    /// What `GET /` answers: names the half, so a client shows which server it reached.
    body: &'static str,
    /// The host port it publishes.
    port: u16,
    /// Its id and bridge IP while it runs.
    running: Mutex<Option<(String, String)>>,
}

impl<E: NetEngine> Server<E> {
    fn new(
        engine: &Arc<Shared<E>>,
        runtime: fn(&E) -> String,
        body: &'static str,
        port: u16,
    ) -> Arc<Server<E>> {
        Arc::new(Server {
            engine: Arc::clone(engine),
            runtime,
            body,
            port,
            running: Mutex::new(None),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<(String, String)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server's id and bridge IP, started now if no case has started it.
    fn get(&self) -> (String, String) {
        let e = self.engine.get();
        let port = format!("{}:80", self.port);
        self.running()
            .get_or_insert_with(|| start_server(e, &(self.runtime)(e), self.body, &["-p", &port]))
            .clone()
    }

    /// Removes the server (if it runs): its last case is done with it.
    fn remove(&self) {
        let running = self.running().take();
        if let Some((id, _)) = running {
            let e = self.engine.get();
            remove(e, &(self.runtime)(e), &id);
        }
    }
}

impl<E: NetEngine> Drop for Server<E> {
    /// A server a filtered run left (see [`Server`]); quietly, as a drop cannot fail a trial.
    fn drop(&mut self) {
        if let Some((id, _)) = self.running().take() {
            let e = self.engine.get();
            let (cli, rt) = (e.cli(), (self.runtime)(e));
            let _ = cli.output(&rt, &["kill", &id]);
            let _ = cli.output(&rt, &["rm", "-f", &id]);
        }
    }
}

/// `sh -c` text fetching `url` until it answers, once a second, at most `tries` times. A shell
/// counter, not `$(seq …)`: a fork and exec less per loop, ~1 s of an emulated guest's CPU.
fn fetch_script(url: &str, tries: u32) -> String {
    format!(
        "i=0; while [ $i -lt {tries} ]; do wget -q -O - {url} && exit 0; sleep 1; i=$((i+1)); done; exit 1"
    )
}

/// A client container fetching `http://<ip>/`, retrying while the server starts.
fn fetch_from_container(e: &impl NetEngine, rt: &str, ip: &str) -> String {
    let script = fetch_script(&format!("http://{ip}/"), 60);
    ok(
        run(e, rt, "--rm", &[e.image(), "sh", "-c", &script]),
        "fetch from a container",
    )
}

/// The half's server answers on its published port, from the engine's namespace.
fn published_port_serves_a_file<E: NetEngine>(e: &E, _: &str, server: &Server<E>) {
    server.get();
    let got = e
        .netns()
        .http_get_when_up(([127, 0, 0, 1], server.port).into(), SERVE_TIMEOUT);
    assert_eq!(got.expect("GET the published port").trim(), server.body);
}

/// A client container of the half reaches the half's server by its bridge IP.
fn containers_reach_each_other_by_ip<E: NetEngine>(e: &E, rt: &str, server: &Server<E>) {
    let (_, ip) = server.get();
    assert_eq!(fetch_from_container(e, rt, &ip), server.body);
}

fn resolv_conf_and_hosts_are_the_engines<E: NetEngine>(e: &E, rt: &str, _: &Server<E>) {
    let out = ok(
        run(
            e,
            rt,
            "--rm",
            &[
                "--hostname",
                "bh-host",
                "--add-host",
                "extra.test:10.99.0.1",
                e.image(),
                "sh",
                "-c",
                "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; ip -o -4 addr show eth0",
            ],
        ),
        "cat",
    );
    let parts: Vec<&str> = out.split("---").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let (resolv, hosts, addr) = (parts[0], parts[1], parts[2]);
    assert!(resolv.contains("nameserver"), "{out}");
    assert!(
        hosts
            .lines()
            .any(|l| l.starts_with("10.99.0.1") && l.contains("extra.test")),
        "{out}"
    );
    // The engine's hosts file names the container's own address and hostname.
    let ip = addr
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .unwrap_or_default();
    assert!(
        !ip.is_empty()
            && hosts
                .lines()
                .any(|l| l.starts_with(ip) && l.contains("bh-host")),
        "{out}"
    );
}

fn network_none_has_only_loopback<E: NetEngine>(e: &E, rt: &str, _: &Server<E>) {
    let out = ok(
        run(
            e,
            rt,
            "--rm",
            &[
                "--network",
                "none",
                e.image(),
                "sh",
                "-c",
                "ip -o link | cut -d: -f2; ip -o -4 addr",
            ],
        ),
        "ip",
    );
    let first = out.lines().next().unwrap_or_default().trim();
    assert_eq!(first, "lo", "{out}");
    assert!(out.contains("127.0.0.1/8"), "loopback is up: {out}");
    assert!(!out.contains("eth"), "{out}");
}

type Case<E> = fn(&E, &str, &Server<E>);

fn cases<E: NetEngine>() -> Vec<(&'static str, Case<E>)> {
    vec![
        ("published_port_serves_a_file", published_port_serves_a_file),
        (
            "containers_reach_each_other_by_ip",
            containers_reach_each_other_by_ip,
        ),
        (
            "resolv_conf_and_hosts_are_the_engines",
            resolv_conf_and_hosts_are_the_engines,
        ),
        (
            "network_none_has_only_loopback",
            network_none_has_only_loopback,
        ),
    ]
}

/// Both halves of the cases, then the cases that need both runtimes: `runc` and `bulkhead`
/// give each half's `--runtime` value.
pub fn trials<E: NetEngine>(
    shared: &Arc<Shared<E>>,
    runc: fn(&E) -> String,
    bulkhead: fn(&E) -> String,
) -> Vec<Trial> {
    let (runc_server, bulkhead_server) = (
        Server::new(shared, runc, "served-by-runc", RUNC_PORT),
        Server::new(shared, bulkhead, "served-by-bulkhead", BULKHEAD_PORT),
    );
    let as_trials = |prefix: &str, rt: fn(&E) -> String, server: &Arc<Server<E>>| {
        let cases = cases::<E>().into_iter().map(|(name, case)| {
            let server = Arc::clone(server);
            (name, move |e: &E, rt: &String| case(e, rt, &server))
        });
        half_trials(prefix, shared, rt, cases)
    };
    let mut trials = as_trials("runc", runc, &runc_server);
    let e = Arc::clone(shared);
    trials.push(trial("runc::network_host_runs", move || {
        // The case below fails for Bulkhead only: runc shares the host's network.
        let e = e.get();
        let rt = runc(e);
        ok(
            run(e, &rt, "--rm", &["--network", "host", e.image(), "true"]),
            "--network host",
        );
    }));
    trials.extend(as_trials("bulkhead", bulkhead, &bulkhead_server));
    let (e, from_runc, from_bulkhead) = (
        Arc::clone(shared),
        Arc::clone(&runc_server),
        Arc::clone(&bulkhead_server),
    );
    trials.push(trial("bulkhead::reaches_runc_and_back", move || {
        // Each half's server answers with its half's name: a client that reached its own
        // half's server instead would fail here.
        let e = e.get();
        let (runc, bulkhead) = (runc(e), bulkhead(e));
        let (_, ip) = from_runc.get();
        assert_eq!(fetch_from_container(e, &bulkhead, &ip), from_runc.body);
        let (_, ip) = from_bulkhead.get();
        assert_eq!(fetch_from_container(e, &runc, &ip), from_bulkhead.body);
    }));
    let (e, server) = (Arc::clone(shared), runc_server);
    trials.push(trial(
        "runc::network_container_shares_a_namespace",
        move || {
            // The runc server's last case: it is removed here.
            let e = e.get();
            let rt = runc(e);
            let (id, _) = server.get();
            let mode = format!("container:{id}");
            let script = fetch_script("http://127.0.0.1/", 30);
            let got = run(
                e,
                &rt,
                "--rm",
                &["--network", &mode, e.image(), "sh", "-c", &script],
            );
            server.remove();
            assert_eq!(ok(got, "--network container:"), server.body);
        },
    ));
    let (e, server) = (Arc::clone(shared), bulkhead_server);
    trials.push(trial(
        "bulkhead::network_container_fails_in_one_line",
        move || {
            // The first container's interfaces are carried into its VM; a second VM cannot have them.
            // The Bulkhead server's last case: it is removed here.
            let e = e.get();
            let rt = bulkhead(e);
            let (id, _) = server.get();
            let mode = format!("container:{id}");
            let o = run(e, &rt, "--rm", &["--network", &mode, e.image(), "true"]);
            server.remove();
            assert_ne!(o.status.code(), Some(0));
            let err = text(&o.stderr);
            // One line of ours says what and why (podman adds a line of its own after it).
            assert!(
                err.lines()
                    .any(|l| l.contains("container network: join eth0")
                        && l.contains("already carried into another VM")),
                "{err}"
            );
        },
    ));
    let e = Arc::clone(shared);
    trials.push(trial(
        "bulkhead::network_host_fails_in_one_line",
        move || {
            let e = e.get();
            let rt = bulkhead(e);
            let o = run(e, &rt, "--rm", &["--network", "host", e.image(), "true"]);
            assert_ne!(o.status.code(), Some(0));
            let err = text(&o.stderr);
            assert!(
                err.contains("share the host's network namespace") && err.contains("micro-VM"),
                "{err}"
            );
        },
    ));
    trials
}

/// No tap or tc redirect of ours in any network namespace under `dir` (an engine may remove a
/// container's namespace file only in a later garbage collection). An engine tears down a
/// removed container's network on its own time (podman's cleanup may still run after `rm`
/// returned), so this waits for it, up to [`LEFT_PATIENCE`]; then it fails naming what is left
/// and what `engine_state` says (the containers the engine still has).
pub fn assert_no_taps_in_namespaces_under(
    dir: &std::path::Path,
    engine_state: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + LEFT_PATIENCE;
    loop {
        let left = left_in_namespaces_under(dir);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!("{}\nthe engine has: {}", left.join("\n"), engine_state());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// How long [`assert_no_taps_in_namespaces_under`] waits for an engine's teardown.
const LEFT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Our taps and ingress qdiscs in the namespaces under `dir`, one line per namespace.
fn left_in_namespaces_under(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut left = Vec::new();
    for ns in entries.filter_map(Result::ok) {
        let path = ns.path();
        let run = |args: &[&str]| {
            let o = super::output(
                std::process::Command::new("nsenter")
                    .arg(format!("--net={}", path.display()))
                    .args(args),
            );
            text(&o.stdout)
        };
        let links = run(&["ip", "-o", "link"]);
        let qdiscs = run(&["tc", "qdisc", "show"]);
        if links.contains(": bh") || qdiscs.contains("ingress") {
            let filters = run(&["tc", "filter", "show", "ingress"]);
            left.push(format!(
                "left in {}: links {links} qdiscs {qdiscs} ingress filters {filters}",
                path.display()
            ));
        }
    }
    left
}

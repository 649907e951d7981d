//! Cases that drive a running agent through the client; shared by the host test (agent in
//! `--listen-unix` mode) and the VM test (agent as the guest's init, through hybrid vsock).
//!
//! Each case uses fresh process ids from [`Ids`], so they can run one after another against one
//! agent (a VM boot costs ~30 s on PVM hosts, so the VM test boots once).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bulkhead_protocol::api;
use bulkhead_protocol::client::blocking::Client;
use bulkhead_protocol::client::{ClientError, ExitStatus};
use bulkhead_protocol::protobuf::MessageField;
use bulkhead_protocol::stream::StreamKind;

/// Unique process ids within one test run.
#[derive(Default)]
pub struct Ids(AtomicU32);

impl Ids {
    pub fn next(&self, what: &str) -> String {
        format!("{what}-{}", self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// A create request for `args` with the given streams.
pub fn command(
    id: &str,
    args: &[&str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> api::CreateProcessRequest {
    api::CreateProcessRequest {
        id: id.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()],
        stdio: MessageField::some(api::StdioStreams {
            stdin,
            stdout,
            stderr,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads a stream to EOF on a thread (so stdout and stderr drain concurrently).
pub fn collect(mut stream: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).expect("read stream");
        out
    })
}

/// Runs `args` with stdout and stderr attached; returns (stdout, stderr, status).
pub fn run(client: &Client, id: &str, args: &[&str]) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    client
        .create_process(&command(id, args, false, true, true))
        .expect("create");
    let out = collect(client.open_stream(id, StreamKind::Stdout).expect("stdout"));
    let err = collect(client.open_stream(id, StreamKind::Stderr).expect("stderr"));
    client.start_process(id).expect("start");
    let status = client
        .wait_process(id, Some(Duration::from_secs(600)))
        .expect("wait");
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    client.remove_process(id).expect("remove");
    (out, err, status)
}

/// stdout and stderr arrive intact and separately; exit code 3 comes back.
pub fn stdout_stderr_and_exit_code(client: &Client, ids: &Ids) {
    let (out, err, status) = run(
        client,
        &ids.next("exit3"),
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
    );
    assert_eq!(String::from_utf8_lossy(&out), "to-stdout\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-stderr\n");
    assert_eq!(status, ExitStatus::Exited(3));
}

/// Programs start with no blocked signals, SIGPIPE at its default action and the normal
/// scheduling policy, whatever the agent does with its own signals and policy.
pub fn signals_start_clean(client: &Client, ids: &Ids) {
    let (out, _, status) = run(
        client,
        &ids.next("sigs"),
        &[
            "sh",
            "-c",
            "grep -E '^Sig(Blk|Ign)' /proc/self/status; cat /proc/self/stat",
        ],
    );
    assert_eq!(status, ExitStatus::Exited(0));
    let out = String::from_utf8_lossy(&out);
    let mask = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    assert_eq!(mask("SigBlk:"), 0, "{out}");
    // SIGPIPE is signal 13: bit 12.
    assert_eq!(mask("SigIgn:") & (1 << 12), 0, "{out}");
    // /proc/self/stat field 41 is the policy (0: SCHED_OTHER); fields after "(comm)" start at 3.
    let stat = out.lines().last().unwrap_or_default();
    let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let policy = after_comm.split_whitespace().nth(41 - 3);
    assert_eq!(policy, Some("0"), "{stat}");
}

/// A process killed with SIGKILL is reported as signal 9, not as an exit code.
pub fn sigkill_is_reported_as_a_signal(client: &Client, ids: &Ids) {
    let id = ids.next("kill");
    client
        .create_process(&command(
            &id,
            &["sh", "-c", "exec sleep 1000"],
            false,
            false,
            false,
        ))
        .expect("create");
    let pid = client.start_process(&id).expect("start");
    assert!(pid > 0);
    client.signal_process(&id, 9, false).expect("signal");
    let status = client
        .wait_process(&id, Some(Duration::from_secs(120)))
        .expect("wait");
    assert_eq!(status, ExitStatus::Signaled(9));
    assert_eq!(status.code(), 137);
    client.remove_process(&id).expect("remove");
}

/// What the host writes to stdin comes back from `cat`; EOF on the stream ends it.
pub fn stdin_is_echoed_by_cat(client: &Client, ids: &Ids) {
    let id = ids.next("cat");
    client
        .create_process(&command(&id, &["sh", "-c", "exec cat"], true, true, false))
        .expect("create");
    let mut stdin = client.open_stream(&id, StreamKind::Stdin).expect("stdin");
    let out = collect(client.open_stream(&id, StreamKind::Stdout).expect("stdout"));
    // Written before start: it waits in the pipe.
    stdin.write_all(b"hello from the host\n").expect("write");
    client.start_process(&id).expect("start");
    stdin.write_all(b"second line\n").expect("write");
    stdin.shutdown(Shutdown::Write).expect("eof");
    let status = client
        .wait_process(&id, Some(Duration::from_secs(120)))
        .expect("wait");
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(
        String::from_utf8_lossy(&out.join().expect("stdout")),
        "hello from the host\nsecond line\n"
    );
    client.remove_process(&id).expect("remove");
}

/// `bytes` through stdout; the sha256 the guest computes (sent on stderr) matches the host's.
/// The data is `seq` output (order-sensitive, and made in user space: /dev/urandom would be
/// emulated guest-kernel work on PVM hosts). `dir` is a writable directory on the agent's side.
pub fn big_stdout_matches_sha256(client: &Client, ids: &Ids, bytes: usize, dir: &str) -> Duration {
    // Numbers up to `bytes` always print more than `bytes` characters.
    let script = format!(
        "seq 1 {bytes} | head -c {bytes} > {dir}/blob && sha256sum {dir}/blob >&2 && cat {dir}/blob && rm {dir}/blob"
    );
    let id = ids.next("big");
    client
        .create_process(&command(&id, &["sh", "-c", &script], false, true, true))
        .expect("create");
    let mut out = client.open_stream(&id, StreamKind::Stdout).expect("stdout");
    let err = collect(client.open_stream(&id, StreamKind::Stderr).expect("stderr"));
    client.start_process(&id).expect("start");
    let start = Instant::now();
    let mut data = Vec::with_capacity(bytes);
    out.read_to_end(&mut data).expect("read stdout");
    let took = start.elapsed();
    let status = client
        .wait_process(&id, Some(Duration::from_secs(600)))
        .expect("wait");
    let err = String::from_utf8_lossy(&err.join().expect("stderr")).into_owned();
    assert_eq!(status, ExitStatus::Exited(0), "stderr: {err}");
    assert_eq!(data.len(), bytes);
    let guest_sum = err.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(sha256_hex(&data), guest_sum);
    client.remove_process(&id).expect("remove");
    took
}

/// sha256 of `data` with the host's `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum output");
    feeder.join().expect("feeder").expect("feed sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Reads from a terminal stream until `needle` has appeared; returns everything read.
fn read_until(stream: &mut UnixStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            String::from_utf8_lossy(seen)
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "terminal closed before {needle:?}: {:?}",
                String::from_utf8_lossy(seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read terminal: {e}"),
        }
    }
}

/// A terminal process sees its initial size and a resize (`stty size`).
pub fn terminal_resize_is_seen(client: &Client, ids: &Ids) {
    let id = ids.next("tty");
    let mut req = command(
        &id,
        &["sh", "-c", "stty size; read line; stty size; exit 4"],
        true,
        true,
        false,
    );
    req.terminal = true;
    req.terminal_size = MessageField::some(api::TerminalSize {
        rows: 24,
        cols: 80,
        ..Default::default()
    });
    client.create_process(&req).expect("create");
    let mut term = client
        .open_stream(&id, StreamKind::Terminal)
        .expect("terminal");
    client.start_process(&id).expect("start");
    let mut seen = Vec::new();
    read_until(&mut term, &mut seen, "24 80");
    client.resize_terminal(&id, 40, 100).expect("resize");
    term.write_all(b"go\n").expect("write");
    read_until(&mut term, &mut seen, "40 100");
    let status = client
        .wait_process(&id, Some(Duration::from_secs(120)))
        .expect("wait");
    assert_eq!(status, ExitStatus::Exited(4));
    client.remove_process(&id).expect("remove");
}

/// Errors name the problem: unknown programs (runc's wording), unknown or duplicate ids.
pub fn errors_are_clear(client: &Client, ids: &Ids) {
    let id = ids.next("missing");
    client
        .create_process(&command(&id, &["no-such-program"], false, false, false))
        .expect("create");
    let err = client.start_process(&id).expect_err("start must fail");
    assert_eq!(
        err.to_string(),
        "exec: \"no-such-program\": executable file not found in $PATH"
    );
    client
        .remove_process(&id)
        .expect("remove never-started process");
    let err = client
        .wait_process("nobody", Some(Duration::from_secs(10)))
        .expect_err("wait");
    assert_eq!(err.to_string(), "process \"nobody\" does not exist");
    let id = ids.next("dup");
    client
        .create_process(&command(&id, &["true"], false, false, false))
        .expect("create");
    let err = client
        .create_process(&command(&id, &["true"], false, false, false))
        .expect_err("duplicate");
    assert!(matches!(err, ClientError::Agent(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("process {id:?} already exists"));
    client.remove_process(&id).expect("remove");
    let err = client.create_process(&command("bad id", &["true"], false, false, false));
    assert!(err.is_err());
}

/// ConfigureNetwork checks its request before it changes anything: a malformed one is refused
/// with the field named (the same in test mode and in a guest).
pub fn configure_network_checks_the_request(client: &Client) {
    let nic = api::NetworkInterface {
        name: "eth0".into(),
        mac: vec![0x02, 0x42, 0xac, 0x11, 0x00],
        ..Default::default()
    };
    let req = api::ConfigureNetworkRequest {
        interfaces: vec![nic],
        ..Default::default()
    };
    let err = client.configure_network(&req).expect_err("a 5-byte MAC");
    let ClientError::Agent(status) = &err else {
        panic!("not the agent's answer: {err:?}");
    };
    assert_eq!(status.code, bulkhead_protocol::rpc::Code::InvalidArgument);
    assert_eq!(
        err.to_string(),
        "bad request: interfaces[0] (eth0): a MAC address has 6 bytes, not 5"
    );
    let route = api::Route {
        destination: MessageField::some(api::IpNetwork {
            address: vec![0; 4],
            prefix_len: 33,
            ..Default::default()
        }),
        device: "eth0".into(),
        ..Default::default()
    };
    let req = api::ConfigureNetworkRequest {
        routes: vec![route],
        ..Default::default()
    };
    let err = client.configure_network(&req).expect_err("a /33");
    assert_eq!(
        err.to_string(),
        "bad request: routes[0]: prefix length 33 is too long for 0.0.0.0"
    );
}

/// `lo` is up (`IFF_UP | IFF_LOOPBACK`): in a guest the agent brings it up at boot, as runc
/// gives every container an up loopback (only meaningful there: a host's `lo` is up anyway).
pub fn loopback_is_up(client: &Client, ids: &Ids) {
    let (out, err, status) = run(
        client,
        &ids.next("lo"),
        &["sh", "-c", "cat /sys/class/net/lo/flags"],
    );
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0x9");
}

//! The real `bulkhead-agent` binary on the host in `--listen-unix` mode, driven through the
//! client: the same cases as the VM test, quickly and without KVM.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bulkhead_protocol::client::blocking::Client;
use bulkhead_protocol::client::{ClientConfig, ClientError, Connector};
use bulkhead_protocol::stream::StreamKind;
use bulkhead_tests::agent_cases::{self as cases, command, Ids};
use bulkhead_tests::{agent_binary, require, Need};

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(agent_binary())
            .arg("--listen-unix")
            .arg(dir.path())
            .spawn()
            .unwrap();
        Agent { child, dir }
    }

    fn client(&self, call_timeout: Duration) -> Client {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(20),
            call_timeout,
            ..ClientConfig::default()
        };
        Client::connect(
            Connector::Unix {
                dir: self.dir.path().to_owned(),
            },
            config,
        )
        .unwrap()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn processes_run_with_their_streams() {
    let agent = Agent::start();
    let client = agent.client(Duration::from_secs(30));
    let v = client.version().unwrap();
    assert_eq!(v.protocol_version, bulkhead_protocol::PROTOCOL_VERSION);
    // On the host, the agent's kernel is the host's.
    let host = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    assert_eq!(
        v.kernel_release,
        String::from_utf8_lossy(&host.stdout).trim()
    );
    let ids = Ids::default();
    cases::stdout_stderr_and_exit_code(&client, &ids);
    cases::sigkill_is_reported_as_a_signal(&client, &ids);
    cases::signals_start_clean(&client, &ids);
    cases::stdin_is_echoed_by_cat(&client, &ids);
    let dir = agent.path().to_str().unwrap().to_owned();
    // A few MiB check the path; 32 MiB and the throughput are bench/agent.rs (`--mib 32`).
    let took = cases::big_stdout_matches_sha256(&client, &ids, 4 << 20, &dir);
    println!("4 MiB through stdout in {took:?}");
    cases::terminal_resize_is_seen(&client, &ids);
    cases::errors_are_clear(&client, &ids);
}

/// Malformed requests are refused as in a guest; a well-formed one is refused too, since in
/// test mode the agent runs in the host's network namespace.
#[test]
fn configure_network_is_checked_and_refused_on_the_host() {
    let agent = Agent::start();
    let client = agent.client(Duration::from_secs(30));
    cases::configure_network_checks_the_request(&client);
    let req = bulkhead_protocol::api::ConfigureNetworkRequest::default();
    let err = client
        .configure_network(&req)
        .expect_err("refused in test mode");
    assert!(
        err.to_string()
            .starts_with("network configuration is refused in test mode"),
        "{err}"
    );
}

#[test]
fn an_agent_that_dies_mid_call_gives_a_clear_error() {
    let mut agent = Agent::start();
    let client = agent.client(Duration::from_secs(10));
    let id = "sleeper";
    client
        .create_process(&command(id, &["sleep", "1000"], false, false, false))
        .unwrap();
    let sleeper = client.start_process(id).unwrap();
    // Killed once the agent has read the wait call, not after a fixed time: on a slow machine
    // the call might not have been sent yet. The agent's own reads after a start (the exec
    // status of the process) are done once the process runs `sleep` and a call has been
    // answered after that; then the agent reads nothing until the wait call.
    let t = Instant::now();
    while std::fs::read_to_string(format!("/proc/{sleeper}/comm")).unwrap_or_default() != "sleep\n"
    {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the process never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    client.version().unwrap();
    let pid = agent.child.id();
    let idle = bytes_read(pid);
    let killer = {
        std::thread::spawn(move || {
            let t = Instant::now();
            while bytes_read(pid) == idle {
                assert!(
                    t.elapsed() < Duration::from_secs(300),
                    "the call never reached the agent"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        })
    };
    // The call timeout (10 s) is far off: the error is the closed connection, not a timeout.
    let err = client.wait_process(id, None).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "agent connection closed");
    let _ = agent.child.wait();
    // New connections fail fast too, and streams cannot be opened.
    assert!(client.open_stream(id, StreamKind::Stdout).is_err());
    // The agent's child outlived it; do not leave it on the host.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeper),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Bytes process `pid` has read with read(2) and friends (`rchar` of `/proc/PID/io`).
fn bytes_read(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: ")?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn shutdown_ends_a_test_mode_agent_without_touching_the_host() {
    let mut agent = Agent::start();
    let client = agent.client(Duration::from_secs(10));
    client.shutdown().unwrap();
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!agent.path().join("1024").exists());
}

/// A busybox rootfs in a temporary directory (the host's static busybox and applet links).
fn busybox_rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in ["bin", "proc", "dev", "tmp", "etc", "sys"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "hostname", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    dir
}

fn oci_process(script: &str) -> serde_json::Value {
    serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", script],
        "env": ["PATH=/bin"],
        "cwd": "/",
    })
}

/// The container calls through the agent: create (init waits), start, exec, list, stats,
/// pause/resume, signal all, remove. Needs root (real namespaces and a cgroup on the host).
#[test]
fn containers_run_through_the_agent() {
    if !require(&[Need::Root]) {
        return;
    }
    let rootfs = busybox_rootfs();
    let agent = Agent::start();
    let client = agent.client(Duration::from_secs(60));
    let id = format!("agent-test-{}", std::process::id());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        container_calls(&client, &id, rootfs.path())
    }));
    // Whatever happened, leave no container (process, cgroup) behind on the host.
    let _ = client.remove_container(&id, true);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn container_calls(client: &Client, id: &str, rootfs: &Path) {
    use bulkhead_protocol::api;
    use bulkhead_protocol::client::ExitStatus;
    use bulkhead_protocol::protobuf::MessageField;
    use std::io::{BufRead, BufReader, Read};

    let id = id.to_owned();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": oci_process("echo started; exec sleep 1000"),
        "root": {"path": rootfs},
        "hostname": "inside",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}, {"type": "ipc"}]}
    });
    let streams = || {
        MessageField::some(api::StdioStreams {
            stdout: true,
            stderr: true,
            ..Default::default()
        })
    };
    let req = api::CreateContainerRequest {
        id: id.clone(),
        oci_spec: serde_json::to_vec(&spec).unwrap(),
        rootfs: rootfs.to_str().unwrap().to_owned(),
        stdio: streams(),
        ..Default::default()
    };
    let init = client.create_container(&req).unwrap();
    assert!(init > 0);
    let out = client.open_stream(&id, StreamKind::Stdout).unwrap();
    let _err = client.open_stream(&id, StreamKind::Stderr).unwrap();
    client.start_container(&id).unwrap();
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert!(client.list_processes(&id).unwrap().contains(&init));
    let stats = client.stats(&id).unwrap();
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");

    // Exec joins the container: its hostname, its pid namespace.
    let exec_id = format!("{id}-exec");
    let exec = api::CreateProcessRequest {
        id: exec_id.clone(),
        container_id: id.clone(),
        oci_process: serde_json::to_vec(&oci_process("hostname; echo $$; exit 7")).unwrap(),
        stdio: streams(),
        ..Default::default()
    };
    client.create_process(&exec).unwrap();
    let mut exec_out = client.open_stream(&exec_id, StreamKind::Stdout).unwrap();
    let _exec_err = client.open_stream(&exec_id, StreamKind::Stderr).unwrap();
    client.start_process(&exec_id).unwrap();
    let mut text = String::new();
    exec_out.read_to_string(&mut text).unwrap();
    let status = client
        .wait_process(&exec_id, Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(status, ExitStatus::Exited(7));
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("inside"));
    let pid: i32 = lines.next().unwrap().parse().unwrap();
    assert!(
        pid > 1,
        "exec'd process is not the container's init: {text:?}"
    );
    client.remove_process(&exec_id).unwrap();

    client.pause_container(&id).unwrap();
    client.resume_container(&id).unwrap();
    let err = client.remove_container(&id, false).unwrap_err();
    assert!(err.to_string().contains("is running"), "{err}");
    client.signal_process(&id, 9, true).unwrap();
    let status = client
        .wait_process(&id, Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(status, ExitStatus::Signaled(9));
    client.remove_container(&id, false).unwrap();
    let err = client.stats(&id).unwrap_err();
    assert_eq!(err.to_string(), format!("container {id:?} does not exist"));
}

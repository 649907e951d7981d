//! The real `bulkhead-agent` binary on the host in `--listen-unix` mode, driven through the
//! client: the same cases as the VM test, quickly and without KVM.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bulkhead_protocol::client::{Client, ClientConfig, ClientError, Connector};
use bulkhead_protocol::stream::StreamKind;
use bulkhead_tests::agent_binary;
use bulkhead_tests::agent_cases::{self as cases, command, Ids};

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
    assert!(!v.kernel_release.is_empty());
    let ids = Ids::default();
    cases::stdout_stderr_and_exit_code(&client, &ids);
    cases::sigkill_is_reported_as_a_signal(&client, &ids);
    cases::signals_start_clean(&client, &ids);
    cases::stdin_is_echoed_by_cat(&client, &ids);
    let dir = agent.path().to_str().unwrap().to_owned();
    let took = cases::big_stdout_matches_sha256(&client, &ids, 32 << 20, &dir);
    println!("32 MiB through stdout in {took:?}");
    cases::terminal_resize_is_seen(&client, &ids);
    cases::errors_are_clear(&client, &ids);
}

#[test]
fn an_agent_that_dies_mid_call_gives_a_clear_error() {
    let mut agent = Agent::start();
    let client = agent.client(Duration::from_secs(10));
    let id = "sleeper";
    client
        .create_process(&command(id, &["sleep", "1000"], false, false, false))
        .unwrap();
    client.start_process(id).unwrap();
    let killer = {
        let pid = agent.child.id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        })
    };
    let start = Instant::now();
    let err = client.wait_process(id, None).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "agent connection closed");
    assert!(start.elapsed() < Duration::from_secs(10));
    let _ = agent.child.wait();
    // New connections fail fast too, and streams cannot be opened.
    assert!(client.open_stream(id, StreamKind::Stdout).is_err());
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

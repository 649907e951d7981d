//! The agent as the guest's init, driven through the VMM's hybrid-vsock socket: the same cases as
//! the host test (tests/agent_cases.rs) against ONE booted VM (a boot takes ~30 s on PVM hosts),
//! then a clean shutdown. (That a client facing a guest without an agent gives a clear error
//! in time is shown on a boot `tests/vmm_boot.rs` makes anyway.)
//! Gated by `BULKHEAD_E2E=1`. The stdout case moves 2 MiB (`BULKHEAD_E2E_STREAM_MIB` changes
//! it): twice the stream's vsock credit window (the agent's 1 MiB `STREAM_BUFFER_SIZE` and the
//! VMM's 1 MiB `DEFAULT_BUF_ALLOC`), so the guest must wait for credit updates, and far more
//! than a pipe or socket buffer on the way; the 32 MiB throughput run is
//! `bench/agent-vm.sh --mib 32`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_protocol::client::blocking::Client;
use bulkhead_protocol::client::{ClientConfig, ClientError, Connector};
use bulkhead_tests::agent_cases::{self as cases, Ids};
use bulkhead_tests::{agent_test_initramfs, kernel, require, vm_needs, vmm_binary};

/// A boot is ~30 s on an idle PVM host; CI machines are often busier.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
/// One call: a fork+exec in the guest takes ~1 s on PVM hosts, more on a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    fn boot(initrd: &Path) -> Vm {
        // Otherwise the VMM fails at once, and only with a confusing connect error.
        assert!(
            kernel().is_file(),
            "no guest kernel at {} (run scripts/setup.sh or set BULKHEAD_KERNEL)",
            kernel().display()
        );
        assert!(initrd.is_file(), "no initramfs at {}", initrd.display());
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(vmm_binary())
            .arg("--kernel")
            .arg(kernel())
            .arg("--initrd")
            .arg(initrd)
            .args(["--mem", "256", "--vcpus", "1"])
            .arg("--vsock")
            .arg(dir.path().join("vsock.sock"))
            .arg("--console")
            .arg(dir.path().join("console.log"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Vm { child, dir }
    }

    fn uds(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits for the VMM to exit; `None` if it did not within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(connect: Duration) -> ClientConfig {
    ClientConfig {
        connect_timeout: connect,
        call_timeout: CALL_TIMEOUT,
        ..ClientConfig::default()
    }
}

#[test]
fn agent_runs_processes_in_a_vm() {
    if !require(&vm_needs()) {
        return;
    }
    let mut vm = Vm::boot(&agent_test_initramfs());
    let booted = Instant::now();
    let client = Client::connect(
        Connector::HybridVsock { uds_path: vm.uds() },
        config(CONNECT_TIMEOUT),
    )
    .unwrap_or_else(|e| panic!("{e}; console:\n{}", vm.console()));
    let v = client.version().unwrap();
    eprintln!(
        "agent {} up after {:.1?} on guest kernel {}",
        v.agent_version,
        booted.elapsed(),
        v.kernel_release
    );
    let ids = Ids::default();
    let step = |name: &str, t: Instant| eprintln!("{name}: {:.1?}", t.elapsed());
    let t = Instant::now();
    cases::stdout_stderr_and_exit_code(&client, &ids);
    step("stdout, stderr, exit 3", t);
    let t = Instant::now();
    cases::sigkill_is_reported_as_a_signal(&client, &ids);
    cases::signals_start_clean(&client, &ids);
    step("SIGKILL", t);
    let t = Instant::now();
    cases::stdin_is_echoed_by_cat(&client, &ids);
    step("stdin through cat", t);
    let t = Instant::now();
    cases::terminal_resize_is_seen(&client, &ids);
    step("terminal and resize", t);
    let t = Instant::now();
    cases::errors_are_clear(&client, &ids);
    step("errors", t);
    let t = Instant::now();
    cases::loopback_is_up(&client, &ids);
    cases::configure_network_checks_the_request(&client);
    step("network: lo up, requests checked", t);
    let mib: usize = std::env::var("BULKHEAD_E2E_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let took = cases::big_stdout_matches_sha256(&client, &ids, mib << 20, "/tmp");
    eprintln!("{mib} MiB through stdout in {took:.1?}");
    client.shutdown().unwrap();
    let status = vm.wait_exit(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "VMM did not exit cleanly after Shutdown: {status:?}; console:\n{}",
        vm.console()
    );
    // The VM is gone, and the client says so.
    let err = client.version().unwrap_err();
    assert!(
        matches!(err, ClientError::VmGone | ClientError::Closed),
        "{err:?}"
    );
}

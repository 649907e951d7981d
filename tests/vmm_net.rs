//! virtio-net end to end: one boot of the real guest kernel with `images/net-test-init`
//! (busybox) and two empty NIC slots, in a network namespace this test creates (on its own
//! thread), so every frame stays between the guest and the test.
//!
//! 1. The guest boots (its boot probe of the empty slots finds DeviceID 0) and retries binding
//!    `virtio-mmio.32`, as an agent would. The VM is snapshotted then (empty slots: a template).
//! 2. A tap is attached to the running VM: the guest's next bind probes it; the guest sets its
//!    address, pings us, sends 256 KiB over TCP and receives 256 KiB, then serves 512 KiB over HTTP
//!    (busybox httpd: sendfile, so TSO from the guest); we ping it. A snapshot with
//!    the tap attached is refused and leaves the VM running.
//! 3. The snapshot is restored into a new VM, a tap (offloads off, to compare) is attached to
//!    the restored guest, which binds it and does the same again.
//!
//! Prints MiB/s and the device's counters per MiB each way. Needs root (a network namespace,
//! a tap) and `/dev/kvm`; gated by `BULKHEAD_E2E=1`. ~2-4 min on PVM.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_tests::{kernel, repo_root, require, vm_needs, Need};
use bulkhead_vmm::devices::virtio::net::NetMetricsSnapshot;
use bulkhead_vmm::{
    ConsoleOutput, ExitReason, ImageId, NetBackend, NetCounters, RestoreConfig, SnapshotError, Tap,
    Vm, VmConfig, VmHandle,
};

const TIMEOUT: Duration = Duration::from_secs(600);
const PREFIX: &str = "NET-TEST: ";
/// Small: the test proves the path; throughput is `bench/network.sh`'s job (each MiB costs seconds of
/// emulated guest kernel here).
const BYTES: usize = 256 * 1024;
/// The file the guest serves over HTTP.
const HTTP_BYTES: usize = 512 * 1024;
const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x02, 0x02];

/// `$BULKHEAD_NET_TEST_INITRAMFS`, or built now by `images/build-net-test-initramfs.sh`.
fn net_test_initramfs() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_NET_TEST_INITRAMFS") {
        return PathBuf::from(path);
    }
    let script = repo_root().join("images/build-net-test-initramfs.sh");
    let out = Command::new(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap().trim())
}

/// A VM running on its own thread, its console in a file.
struct Running {
    handle: VmHandle,
    console: PathBuf,
    runner: std::thread::JoinHandle<Result<ExitReason, bulkhead_vmm::RunError>>,
    start: Instant,
}

impl Running {
    fn start(vm: Vm, console: PathBuf) -> Self {
        let handle = vm.handle();
        Self {
            handle,
            console,
            runner: std::thread::spawn(move || vm.run()),
            start: Instant::now(),
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for a console line `NET-TEST: <what>...` and returns it (without the prefix).
    fn wait_for(&self, what: &str) -> String {
        loop {
            let text = self.text();
            if let Some(line) = text
                .lines()
                .filter_map(|l| l.strip_prefix(PREFIX))
                .find(|l| l.starts_with(what))
            {
                return line.to_owned();
            }
            assert!(
                !text.contains("NET-TEST: no nic") && !text.contains("NET-TEST: ping failed"),
                "guest gave up; console:\n{text}"
            );
            if self.runner.is_finished() || self.start.elapsed() > TIMEOUT {
                self.handle.stop();
                panic!(
                    "no `{PREFIX}{what}` after {:?}; console:\n{text}",
                    self.start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(self) -> String {
        self.wait_for("done");
        let reason = self.runner.join().unwrap().unwrap();
        let text = std::fs::read_to_string(&self.console).unwrap();
        assert!(
            reason.is_clean(),
            "vm ended with {reason:?}; console:\n{text}"
        );
        text
    }
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tap named `name` with the host's end of the guest's /24, up.
fn host_tap(name: &str) -> Tap {
    let tap = Tap::open(name).unwrap();
    sh("ip", &["addr", "add", "10.0.2.1/24", "dev", name]);
    sh("ip", &["link", "set", name, "up"]);
    tap
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether interface `name` disappears within a few seconds (a process forked meanwhile may
/// hold a copy of the tap's fd until it execs).
fn vanishes(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while ifindex(name) != 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn per_mib(
    what: &str,
    bytes: usize,
    elapsed: Duration,
    before: NetMetricsSnapshot,
    c: &NetCounters,
) {
    let after = c.device.snapshot();
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let d = |a: u64, b: u64| (a - b) as f64 / mib;
    eprintln!(
        "net {what}: {:.2} MiB in {:.2?} = {:.2} MiB/s; per MiB: tx packets {:.1}, rx packets {:.1}, \
         rx buffers {:.1}, kicks {:.1} (rx {:.1}), interrupts {:.1}; drops tx {} rx {}",
        mib,
        elapsed,
        mib / elapsed.as_secs_f64(),
        d(after.tx_packets, before.tx_packets),
        d(after.rx_packets, before.rx_packets),
        d(after.rx_buffers, before.rx_buffers),
        d(after.kicks, before.kicks),
        d(after.rx_kicks, before.rx_kicks),
        d(after.interrupts, before.interrupts),
        after.tx_malformed + after.tx_tap_errors,
        after.rx_too_big + after.rx_malformed,
    );
}

/// Attaches a tap to `vm`'s first slot and checks what the guest does with it (see the module
/// docs); `label` names the run in the measurements.
fn exercise(vm: &Running, tap_name: &str, offloads: bool, label: &str) {
    let tap = host_tap(tap_name);
    let listener = TcpListener::bind("10.0.2.1:5000").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut backend = NetBackend::new(tap, MAC);
    backend.offloads = offloads;
    let attached = Instant::now();
    let info = vm.handle.attach_net(backend).unwrap();
    assert_eq!(
        (info.slot, info.device_name.as_str()),
        (0, "virtio-mmio.32")
    );
    assert_eq!(info.tap_name, tap_name);
    let counters = vm.handle.net_counters(0).unwrap();

    let e = vm
        .handle
        .snapshot(&vm.console.with_extension("refused"))
        .unwrap_err();
    assert!(matches!(e, SnapshotError::NetAttached(0)), "{e}");
    assert!(!vm.handle.is_paused(), "a refused snapshot paused the vm");

    let bound = vm.wait_for("bound");
    eprintln!(
        "net {label}: guest bound the nic {:.1?} after attach: {bound}",
        attached.elapsed()
    );
    assert!(
        bound.contains("02:42:0a:00:02:02") && bound.contains("mtu 1500"),
        "{bound}"
    );
    vm.wait_for("ping ok");
    // One echo answered proves reachability; more would only cost a second each.
    sh("busybox", &["ping", "-c", "1", "-W", "20", "10.0.2.2"]);

    // Guest → host.
    let deadline = Instant::now() + TIMEOUT;
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the guest never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let before = counters.device.snapshot();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    let started = Instant::now();
    while got < BYTES {
        let n = conn.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "guest closed after {got} bytes; console:\n{}",
            vm.text()
        );
        assert!(
            buf[..n].iter().all(|&b| b == 0),
            "corrupt data from the guest"
        );
        got += n;
    }
    per_mib(
        &format!("{label} guest→host"),
        got,
        started.elapsed(),
        before,
        &counters,
    );
    drop(conn);
    vm.wait_for("sent");

    // Host → guest.
    let mut conn = loop {
        match TcpStream::connect("10.0.2.2:5001") {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("connect to the guest: {e}"),
        }
    };
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let before = counters.device.snapshot();
    let started = Instant::now();
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..BYTES / chunk.len() {
        conn.write_all(&chunk).unwrap();
    }
    conn.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    per_mib(
        &format!("{label} host→guest"),
        BYTES,
        started.elapsed(),
        before,
        &counters,
    );
    let received = vm.wait_for("received");
    assert_eq!(received.trim(), format!("received {BYTES}"));

    // Guest → host again, from busybox httpd (sendfile: the guest may use TSO).
    vm.wait_for("serving");
    let mut conn = TcpStream::connect("10.0.2.2:8080").unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let before = counters.device.snapshot();
    let started = Instant::now();
    conn.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
    let mut response = Vec::with_capacity(HTTP_BYTES + 4096);
    conn.read_to_end(&mut response).unwrap();
    let elapsed = started.elapsed();
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &response[i + 4..])
        .unwrap_or_else(|| panic!("no http response: {:?}", String::from_utf8_lossy(&response)));
    assert_eq!(
        body.len(),
        HTTP_BYTES,
        "{:?}",
        String::from_utf8_lossy(&response[..200.min(response.len())])
    );
    assert!(body.iter().all(|&b| b == 0), "corrupt data from the guest");
    per_mib(
        &format!("{label} guest→host (httpd, sendfile)"),
        HTTP_BYTES,
        elapsed,
        before,
        &counters,
    );
    TcpStream::connect("10.0.2.2:5002").unwrap();
}

fn in_own_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        // SAFETY: unshare with CLONE_NEWNET changes only this thread's network namespace;
        // threads and processes it starts inherit it.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            ret,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        sh("ip", &["link", "set", "lo", "up"]);
        f();
    })
    .join()
    .unwrap();
}

#[test]
fn a_nic_attached_to_a_running_and_to_a_restored_vm_carries_traffic() {
    if !require(
        &[
            vm_needs().as_slice(),
            &[Need::Root, Need::Program("ip"), Need::Program("busybox")],
        ]
        .concat(),
    ) {
        return;
    }
    in_own_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let initrd = net_test_initramfs();
        let mut config = VmConfig::new(kernel());
        config.initrd = Some(initrd.clone());
        config.net_slots = 2;
        // For experiments with the guest driver, e.g. `virtio_net.napi_tx=0`.
        config.cmdline = std::env::var("BULKHEAD_NET_TEST_CMDLINE").ok();
        config.console = ConsoleOutput::File(tmp.path().join("boot.log"));
        let vm = Vm::build(&config).unwrap();
        assert!(
            vm.cmdline()
                .contains("virtio_mmio.device=4K@0xd0000000:5:32"),
            "{}",
            vm.cmdline()
        );
        assert!(
            vm.cmdline()
                .contains("virtio_mmio.device=4K@0xd0001000:6:33"),
            "{}",
            vm.cmdline()
        );
        let booted = Running::start(vm, tmp.path().join("boot.log"));
        booted.wait_for("waiting");
        eprintln!(
            "net: guest waiting for a nic {:.1?} after start",
            booted.start.elapsed()
        );
        // A template: empty slots are saved (wherever the guest's bind loop is: the clone
        // goes on from there).
        let snap = tmp.path().join("template");
        booted.handle.snapshot(&snap).unwrap();
        booted.handle.resume();

        exercise(&booted, "bhnet0", true, "offloads on");
        booted.finish();
        assert!(vanishes("bhnet0"), "the tap outlived its vm");

        let mut restore =
            RestoreConfig::new(&snap, ImageId::of_files(&kernel(), Some(&initrd)).unwrap());
        restore.console = ConsoleOutput::File(tmp.path().join("restored.log"));
        let clone = Running::start(
            Vm::restore(&restore).unwrap(),
            tmp.path().join("restored.log"),
        );
        exercise(&clone, "bhnet1", false, "offloads off (restored vm)");
        clone.finish();
        assert!(vanishes("bhnet1"), "the tap outlived its vm");
    });
}

//! Host side of the vsock end-to-end test (`tests/vmm_vsock.rs`) and benchmark
//! (`bench/vsock.rs`), which both include this file: builds the guest program next to it into
//! an initramfs, boots `bulkhead-vmm --vsock`, talks to the guest over the hybrid-vsock socket,
//! and reads the device's counters from the VMM's log when it exits.

#![allow(dead_code)] // Each includer uses a different part.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The guest's command port.
pub const GUEST_PORT: u32 = 1024;

/// FNV-1a 64, the guest's `SINK` checksum.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
/// FNV-1a 64 offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Byte `i` of the guest's `SEND` stream.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Builds the guest program with the workspace's rustc (static, small) and packs it as `/init`
/// into `out_dir/vsock-test-guest.cpio`.
pub fn guest_initramfs(repo: &Path, out_dir: &Path) -> PathBuf {
    init_initramfs(
        repo,
        "tests/vsock_support/guest.rs",
        "vsock-test-guest",
        out_dir,
    )
}

/// Builds the raw-syscall guest program `src` (relative to `repo`) with the workspace's rustc
/// (static, small) and packs it as `/init` into `out_dir/<name>.cpio`.
pub fn init_initramfs(repo: &Path, src: &str, name: &str, out_dir: &Path) -> PathBuf {
    let src = repo.join(src);
    let bin = out_dir.join(name);
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .current_dir(repo)
        .args(["--edition", "2021", "--target", "x86_64-unknown-linux-gnu"])
        .args([
            "-C",
            "opt-level=z",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(status.success(), "building {} failed", src.display());
    let cpio = out_dir.join(format!("{name}.cpio"));
    let status = Command::new(repo.join("images/mkinitramfs.sh"))
        .arg(&cpio)
        .arg(format!("{}:/init:0755", bin.display()))
        .status()
        .expect("run mkinitramfs.sh");
    assert!(status.success(), "packing {} failed", cpio.display());
    cpio
}

/// A running VM with a vsock device.
pub struct VsockVm {
    child: Child,
    log: Option<JoinHandle<String>>,
    /// The hybrid-vsock socket.
    pub socket: PathBuf,
    /// The serial console file.
    pub console: PathBuf,
}

/// What the VM left behind.
pub struct Finished {
    /// The VMM's exit status.
    pub status: ExitStatus,
    /// Its log (stderr).
    pub log: String,
}

impl VsockVm {
    /// Boots `kernel` + `initrd` with a vsock device whose socket lives in `dir`.
    pub fn boot(vmm: &Path, kernel: &Path, initrd: &Path, dir: &Path, mem_mib: u64) -> Self {
        let socket = dir.join("vsock.sock");
        let console = dir.join("console.log");
        let mut child = Command::new(vmm)
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--mem", &mem_mib.to_string(), "--vsock"])
            .arg(&socket)
            .arg("--console")
            .arg(&console)
            .env("BULKHEAD_VMM_LOG", "info,bulkhead_vmm::kvm=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", vmm.display()));
        let mut stderr = child.stderr.take().expect("stderr piped");
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            child,
            log: Some(log),
            socket,
            console,
        }
    }

    /// Connects to guest port `port` (`CONNECT`/`OK`), retrying while the guest is booting or
    /// not listening yet. `None` if `timeout` passes first.
    pub fn connect(&mut self, port: u32, timeout: Duration) -> Option<UnixStream> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            if let Some(s) = try_connect(&self.socket, port) {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    /// Sends one command on a fresh connection to the guest's command port.
    pub fn command(&mut self, line: &str, timeout: Duration) -> UnixStream {
        let mut s = self
            .connect(GUEST_PORT, timeout)
            .unwrap_or_else(|| panic!("guest not reachable: {}", self.console_tail()));
        s.set_read_timeout(Some(timeout)).expect("set timeout");
        s.write_all(format!("{line}\n").as_bytes())
            .expect("send command");
        s
    }

    /// The end of the serial console, for failure messages.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Asks the guest to power off and waits for the VMM to exit.
    pub fn poweroff(mut self, timeout: Duration) -> Finished {
        if let Some(s) = self.connect(GUEST_PORT, timeout) {
            let _ = (&s).write_all(b"POWEROFF\n");
        }
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = self
            .log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Finished { status, log }
    }
}

impl Drop for VsockVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `CONNECT` attempt: the stream once the guest accepted, else `None`.
pub fn try_connect(socket: &Path, port: u32) -> Option<UnixStream> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
    let line = read_line(&mut s)?;
    line.starts_with("OK ").then_some(s)
}

/// Reads one `\n`-terminated line byte by byte (nothing after it is consumed).
pub fn read_line(s: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
}

/// Counters the VMM logs at exit: the vsock device's and the vCPUs' user-space exits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub notifications: u64,
    pub interrupts: u64,
    pub credit_updates: u64,
    pub register_accesses: u64,
    pub vcpu_exits: u64,
}

fn field(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Parses the counters from the VMM's log.
pub fn counters(log: &str) -> Option<Counters> {
    let dev = log.lines().find(|l| l.contains("VsockMetricsSnapshot"))?;
    let transport = log
        .lines()
        .find(|l| l.contains("transport closed") && l.contains("device=19"))?;
    let vcpu_exits = log
        .lines()
        .filter(|l| l.contains(" exits") && l.contains("mmio_read="))
        .map(|l| {
            ["io_in=", "io_out=", "mmio_read=", "mmio_write=", "other="]
                .iter()
                .filter_map(|k| field(l, k))
                .sum::<u64>()
        })
        .sum();
    Some(Counters {
        tx_packets: field(dev, "tx_packets: ")?,
        tx_bytes: field(dev, "tx_bytes: ")?,
        rx_packets: field(dev, "rx_packets: ")?,
        rx_bytes: field(dev, "rx_bytes: ")?,
        notifications: field(dev, "notifications: ")?,
        interrupts: field(dev, "interrupts: ")?,
        credit_updates: field(dev, "credit_updates: ")?,
        register_accesses: field(transport, "register_accesses=")?,
        vcpu_exits,
    })
}

//! vsock benchmark: streams through `bulkhead-vmm`'s virtio-vsock device with the vsock test
//! guest (`tests/vsock_support/guest.rs`) and prints what a MiB costs the guest: vsock packets,
//! queue notifications (one exit each), interrupts (each one more exits: status read,
//! acknowledge, EOI) and the transport's register accesses. Those counts do not depend on how
//! slow the host's KVM is; throughput is printed too, but on PVM-backed KVM it measures the
//! emulated guest kernel. There is no QEMU comparison: it needs `/dev/vhost-vsock`.
//!
//! One VM per scenario: guest→host with the guest's default socket buffer and 64 KiB writes
//! (what a naive agent does), guest→host with a 1 MiB buffer and 1 MiB writes, host→guest.
//!
//! ```text
//! cargo build --release -p bulkhead-vmm -p bulkhead-bench
//! target/release/vsock-bench [--kernel K] [--mib 32] [--scenario all|default|tuned|h2g]
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_bench::sibling_binary;
use clap::Parser;

#[path = "../tests/vsock_support/mod.rs"]
mod vsock_support;

use vsock_support::{counters, guest_initramfs, pattern, read_line, Counters, VsockVm};

const SHARE: &str = "/usr/local/share/bulkhead";
const BOOT: Duration = Duration::from_secs(900);
const TRANSFER: Duration = Duration::from_secs(3600);

/// Stream through the vsock device and count exits per MiB.
#[derive(Parser, Debug)]
#[command(name = "vsock-bench")]
struct Args {
    /// Guest kernel (default: $BULKHEAD_KERNEL or the installed vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// bulkhead-vmm binary (default: next to this benchmark).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// MiB per stream.
    #[arg(long, default_value_t = 32)]
    mib: usize,
    /// Which scenarios: all, default, tuned, small, small1m or h2g.
    #[arg(long, default_value = "all")]
    scenario: String,
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    /// The guest command, or None for host→guest.
    send: Option<&'static str>,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "default",
        what: "guest→host, 256 KiB socket buffer, 64 KiB writes",
        send: Some(""),
    },
    Scenario {
        name: "tuned",
        what: "guest→host, 1 MiB socket buffer, 1 MiB writes",
        send: Some(" 1048576 1048576"),
    },
    Scenario {
        name: "small",
        what: "guest→host, 256 KiB socket buffer, 4 KiB writes (busybox's chunk)",
        send: Some(" 262144 4096"),
    },
    Scenario {
        name: "small1m",
        what: "guest→host, 1 MiB socket buffer, 4 KiB writes",
        send: Some(" 1048576 4096"),
    },
    Scenario {
        name: "h2g",
        what: "host→guest, 1 MiB host writes",
        send: None,
    },
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs one scenario in a fresh VM; returns the counters and the transfer time.
fn run(
    args: &Args,
    vmm: &Path,
    kernel: &Path,
    initrd: &Path,
    s: &Scenario,
) -> Result<(Counters, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut vm = VsockVm::boot(vmm, kernel, initrd, dir.path(), 256);
    let n = args.mib << 20;
    let start;
    match s.send {
        Some(opts) => {
            let mut c = vm.command(&format!("SEND {n}{opts}"), BOOT);
            c.set_read_timeout(Some(TRANSFER))
                .map_err(|e| e.to_string())?;
            start = Instant::now();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let got = c.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if got == 0 {
                    break;
                }
                if let Some(i) = (0..got).find(|&i| buf[i] != pattern(total + i)) {
                    return Err(format!("corrupt byte at {}", total + i));
                }
                total += got;
            }
            if total != n {
                return Err(format!("stream ended after {total} of {n} bytes"));
            }
        }
        None => {
            let mut c = vm.command("SINK", BOOT);
            c.set_read_timeout(Some(TRANSFER))
                .map_err(|e| e.to_string())?;
            start = Instant::now();
            let chunk: Vec<u8> = (0..1usize << 20).map(pattern).collect();
            for _ in 0..args.mib {
                c.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
            }
            c.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let answer = read_line(&mut c).unwrap_or_default();
            if !answer.starts_with(&format!("GOT {n} ")) {
                return Err(format!("guest answered {answer:?}"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let f = vm.poweroff(BOOT);
    let c = counters(&f.log).ok_or_else(|| format!("no counters in the log:\n{}", f.log))?;
    Ok((c, secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kernel = args.kernel.clone().unwrap_or_else(|| {
        std::env::var_os("BULKHEAD_KERNEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(SHARE).join("vmlinux"))
    });
    let Some(vmm) = args.vmm.clone().or_else(|| sibling_binary("bulkhead-vmm")) else {
        eprintln!("vsock-bench: bulkhead-vmm not found (build it or pass --vmm)");
        return ExitCode::FAILURE;
    };
    let work = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vsock-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let initrd = guest_initramfs(&repo_root(), work.path());
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}  per MiB; what",
        "scenario", "packets", "kicks", "irqs", "credit", "mmio", "MiB/s"
    );
    let mut failed = false;
    for s in SCENARIOS
        .iter()
        .filter(|s| args.scenario == "all" || args.scenario == s.name)
    {
        match run(&args, &vmm, &kernel, &initrd, s) {
            Ok((c, secs)) => {
                let mib = args.mib as f64;
                let packets = if s.send.is_some() {
                    c.tx_packets
                } else {
                    c.rx_packets
                };
                println!(
                    "{:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.2}  {}",
                    s.name,
                    packets as f64 / mib,
                    c.notifications as f64 / mib,
                    c.interrupts as f64 / mib,
                    c.credit_updates as f64 / mib,
                    c.register_accesses as f64 / mib,
                    mib / secs,
                    s.what
                );
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                eprintln!("vsock-bench: {}: {e}", s.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! Boot benchmark: `bulkhead-vmm` against `qemu-system-x86_64 -M microvm` on the same KVM, with
//! the same kernel, initramfs, memory, vCPUs and kernel command line, runs interleaved.
//!
//! Per run: process start → marker line on the console, process start → exit, user/system CPU
//! time; for bulkhead-vmm also its setup time (process start → first `KVM_RUN`, from its debug
//! log) and its memory overhead (VmRSS minus the resident part of the guest-memory mapping in
//! `/proc/PID/smaps`, sampled when the marker appears). QEMU's overhead is measured the same way
//! (its guest RAM is its largest anonymous mapping) for reference. Prints medians and ratios.
//!
//! ```text
//! cargo build --release -p bulkhead-vmm -p bulkhead-bench
//! target/release/boot-bench [--kernel K] [--initrd I] [--mem 128] [--vcpus 1] [--runs 3]
//! ```

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bulkhead_bench::{
    children_cpu_seconds, median, monotonic_ns, sibling_binary, smaps, status_field_bytes,
};
use clap::Parser;

#[path = "boot_exit_guest.rs"]
mod exit_guest;

const SHARE: &str = "/usr/local/share/bulkhead";

/// Boot bulkhead-vmm and QEMU microvm alternately and compare.
#[derive(Parser, Debug)]
#[command(name = "boot-bench")]
struct Args {
    /// Guest kernel (default: $BULKHEAD_KERNEL or the installed vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (default: $BULKHEAD_TEST_INITRAMFS or the installed test initramfs).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    mem: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Runs of each VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Console line that marks "booted" (the first line /init prints).
    #[arg(long, default_value = "BULKHEAD-TEST-INIT: started")]
    marker: String,
    /// bulkhead-vmm binary (default: next to this benchmark, else on PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU -cpu model (default: qemu64,+x2apic,+xsaveerptr on PVM-backed KVM, else host).
    #[arg(long)]
    qemu_cpu: Option<String>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Extra bulkhead-vmm starts, stopped at the first KVM_RUN, for the setup-time median.
    #[arg(long, default_value_t = 10)]
    setup_runs: usize,
    /// Port-I/O exits per run of the exit-cost guest (0 skips that part).
    #[arg(long, default_value_t = 100_000)]
    exit_iterations: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bulkhead,
    Qemu,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bulkhead => "bulkhead-vmm",
            Kind::Qemu => "qemu microvm",
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Run {
    to_marker: Option<f64>,
    to_exit: f64,
    exit_ok: bool,
    setup_ms: Option<f64>,
    rss: Option<u64>,
    guest_rss: Option<u64>,
    user: f64,
    sys: f64,
    cmdline: Option<String>,
    exits: u64,
}

impl Run {
    fn overhead(&self) -> Option<u64> {
        Some(self.rss?.saturating_sub(self.guest_rss?))
    }
}

enum Event {
    Out(u64, String),
    Err(String),
    Closed,
}

fn reader(stream: impl Read + Send + 'static, tx: mpsc::Sender<Event>, is_err: bool) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let ev = if is_err {
                Event::Err(line)
            } else {
                Event::Out(monotonic_ns(), line)
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// `field=value` from a tracing line; `value` ends at whitespace, or is quoted.
fn log_field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let start = line.find(&format!("{field}="))? + field.len() + 1;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(&quoted[..quoted.rfind('"')?]);
    }
    Some(rest.split_whitespace().next().unwrap_or(""))
}

/// Resident bytes of the guest memory: for bulkhead-vmm the mappings inside the region it
/// logged; for QEMU its largest anonymous mapping at least as large as guest memory.
fn guest_rss(pid: u32, kind: Kind, region: Option<(u64, u64)>, mem_bytes: u64) -> Option<u64> {
    let vmas = smaps(pid)?;
    match kind {
        Kind::Bulkhead => {
            let (start, size) = region?;
            let end = start + size;
            let inside: Vec<_> = vmas
                .iter()
                .filter(|v| v.start < end && v.end > start)
                .collect();
            // A mapping that sticks out of the region would mix guest and VMM memory.
            if inside.is_empty() || inside.iter().any(|v| v.start < start || v.end > end) {
                return None;
            }
            Some(inside.iter().map(|v| v.rss).sum())
        }
        Kind::Qemu => vmas
            .iter()
            .filter(|v| v.name.is_empty() && v.size() >= mem_bytes)
            .max_by_key(|v| v.size())
            .map(|v| v.rss),
    }
}

fn run_once(mut cmd: Command, kind: Kind, args: &Args) -> Result<Run, String> {
    let mem_bytes = args.mem << 20;
    let (user0, sys0) = children_cpu_seconds();
    let t0 = monotonic_ns();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        reader(out, tx.clone(), false);
    }
    if let Some(err) = child.stderr.take() {
        reader(err, tx, true);
    }
    let secs = |t: u64| t.saturating_sub(t0) as f64 / 1e9;
    let mut run = Run::default();
    let mut region = None;
    let mut open_streams = 2;
    let mut tail: Vec<String> = Vec::new();
    let deadline = Duration::from_secs(args.timeout);
    while open_streams > 0 {
        let elapsed = Duration::from_nanos(monotonic_ns().saturating_sub(t0));
        let Some(left) = deadline.checked_sub(elapsed) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{} still running after {deadline:?}", kind.name()));
        };
        match rx.recv_timeout(left) {
            Ok(Event::Out(t, line)) => {
                if run.to_marker.is_none() && line.contains(&args.marker) {
                    run.to_marker = Some(secs(t));
                    run.rss = status_field_bytes(pid, "VmRSS");
                    run.guest_rss = guest_rss(pid, kind, region, mem_bytes);
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Ok(Event::Err(line)) => {
                if line.contains("first KVM_RUN") {
                    if let Some(ns) = log_field(&line, "monotonic_ns").and_then(|v| v.parse().ok())
                    {
                        run.setup_ms = Some(secs(ns) * 1e3);
                    }
                } else if line.contains("guest memory")
                    && log_field(&line, "guest_addr") == Some("0x0")
                {
                    let addr = log_field(&line, "host_addr")
                        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
                    let size = log_field(&line, "size").and_then(|s| s.parse().ok());
                    region = addr.zip(size);
                } else if let Some(c) = log_field(&line, "cmdline") {
                    run.cmdline = Some(c.to_string());
                } else if line.contains(" exits ") {
                    for field in ["io_in", "io_out", "mmio_read", "mmio_write", "other"] {
                        run.exits += log_field(&line, field)
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Ok(Event::Closed) => open_streams -= 1,
            Err(_) => {}
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("wait for {}: {e}", kind.name()))?;
    run.to_exit = secs(monotonic_ns());
    let (user1, sys1) = children_cpu_seconds();
    run.user = user1 - user0;
    run.sys = sys1 - sys0;
    run.exit_ok = status.success();
    if !run.exit_ok || run.to_marker.is_none() {
        return Err(format!(
            "{} failed ({status}, marker {}):\n{}",
            kind.name(),
            if run.to_marker.is_some() {
                "seen"
            } else {
                "not seen"
            },
            tail.join("\n")
        ));
    }
    Ok(run)
}

fn vmm_command(args: &Args, vmm: &Path, kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args([
            "--mem",
            &args.mem.to_string(),
            "--vcpus",
            &args.vcpus.to_string(),
        ])
        .env("BULKHEAD_VMM_LOG", "bulkhead_vmm=debug");
    cmd
}

fn qemu_command(args: &Args, cpu: &str, cmdline: &str, kernel: &Path, initrd: &Path) -> Command {
    let mut cmd = Command::new(&args.qemu);
    // microvm has no i8042 of its own; without one the guest's reboot=k reset is lost and the
    // kernel retries for ~20 s before a triple fault. -no-reboot turns the reset into an exit.
    cmd.args([
        "-M",
        "microvm",
        "-device",
        "i8042",
        "-enable-kvm",
        "-cpu",
        cpu,
    ])
    .args(["-m", &args.mem.to_string(), "-smp", &args.vcpus.to_string()])
    .args(["-nographic", "-no-reboot", "-kernel"])
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", cmdline]);
    cmd
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} s"))
}

fn fmt_mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| {
        format!("{:.2} MiB", v as f64 / (1u64 << 20) as f64)
    })
}

/// Starts bulkhead-vmm `n` times, each stopped right after its first `KVM_RUN`; returns the
/// setup times in ms.
fn setup_times(args: &Args, vmm: &Path, kernel: &Path, initrd: &Path, n: usize) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..n {
        let mut cmd = vmm_command(args, vmm, kernel, initrd);
        let t0 = monotonic_ns();
        let Ok(mut child) = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        else {
            continue;
        };
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("first KVM_RUN") {
                    if let Some(ns) =
                        log_field(&line, "monotonic_ns").and_then(|v| v.parse::<u64>().ok())
                    {
                        times.push(ns.saturating_sub(t0) as f64 / 1e6);
                    }
                    break;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    times
}

/// Wall time and user/system CPU seconds of one run of `cmd`, or `None` if it failed.
fn time_process(mut cmd: Command) -> Option<(f64, f64, f64)> {
    let (u0, s0) = children_cpu_seconds();
    let t0 = monotonic_ns();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let wall = monotonic_ns().saturating_sub(t0) as f64 / 1e9;
    let (u1, s1) = children_cpu_seconds();
    status.success().then_some((wall, u1 - u0, s1 - s0))
}

/// Per-exit cost (µs) of each VMM: wall, user CPU, user+system CPU, from the exit guest run
/// with `n` exits minus the same guest with none, medians over `runs` pairs.
fn exit_costs(
    args: &Args,
    vmm: &Path,
    qemu_cpu: &str,
    n: u32,
) -> Result<[(Kind, [f64; 3]); 2], String> {
    let dir = std::env::temp_dir().join(format!("boot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let guests = [dir.join("exits-0.elf"), dir.join(format!("exits-{n}.elf"))];
    for (path, count) in guests.iter().zip([0, n]) {
        std::fs::write(path, exit_guest::elf(count))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let command = |kind: Kind, guest: &Path| match kind {
        Kind::Bulkhead => {
            let mut c = Command::new(vmm);
            c.arg("--kernel").arg(guest);
            c
        }
        Kind::Qemu => {
            let mut c = Command::new(&args.qemu);
            c.args([
                "-M",
                "microvm",
                "-device",
                "i8042",
                "-enable-kvm",
                "-cpu",
                qemu_cpu,
            ])
            .args(["-m", "128", "-nographic", "-no-reboot", "-kernel"])
            .arg(guest);
            c
        }
    };
    let mut out = [(Kind::Bulkhead, [0.0; 3]), (Kind::Qemu, [0.0; 3])];
    for (kind, costs) in out.iter_mut() {
        let mut samples: [Vec<f64>; 3] = Default::default();
        for _ in 0..args.runs {
            let base = time_process(command(*kind, &guests[0]));
            let full = time_process(command(*kind, &guests[1]));
            let (Some(b), Some(f)) = (base, full) else {
                return Err(format!("{} failed to run the exit guest", kind.name()));
            };
            let per = |x: f64, y: f64| (y - x) / f64::from(n) * 1e6;
            samples[0].push(per(b.0, f.0));
            samples[1].push(per(b.1, f.1));
            samples[2].push(per(b.1 + b.2, f.1 + f.2));
        }
        for (c, v) in costs.iter_mut().zip(&samples) {
            *c = median(v).unwrap_or(f64::NAN);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env_or = |var: &str, file: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(SHARE).join(file))
    };
    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| env_or("BULKHEAD_KERNEL", "vmlinux"));
    let initrd = args
        .initrd
        .clone()
        .unwrap_or_else(|| env_or("BULKHEAD_TEST_INITRAMFS", "test-initramfs.cpio"));
    let vmm = args
        .vmm
        .clone()
        .or_else(|| sibling_binary("bulkhead-vmm"))
        .unwrap_or_else(|| PathBuf::from("bulkhead-vmm"));
    let qemu_cpu = args.qemu_cpu.clone().unwrap_or_else(|| {
        if Path::new("/sys/module/kvm_pvm").is_dir() {
            "qemu64,+x2apic,+xsaveerptr".into()
        } else {
            "host".into()
        }
    });
    println!(
        "boot benchmark: kernel={} initrd={} mem={} MiB vcpus={} runs={} marker={:?}",
        kernel.display(),
        initrd.display(),
        args.mem,
        args.vcpus,
        args.runs,
        args.marker
    );
    println!("  bulkhead-vmm: {}", vmm.display());
    println!("  qemu: {} -M microvm -cpu {qemu_cpu}", args.qemu.display());
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("  host load average at start: {}", load.trim());
    }

    let mut results: Vec<(Kind, Run)> = Vec::new();
    let mut cmdline: Option<String> = None;
    for i in 1..=args.runs {
        for kind in [Kind::Bulkhead, Kind::Qemu] {
            let cmd = match kind {
                Kind::Bulkhead => vmm_command(&args, &vmm, &kernel, &initrd),
                Kind::Qemu => {
                    let Some(c) = cmdline.as_deref() else {
                        eprintln!("boot-bench: bulkhead-vmm did not log its kernel command line");
                        return ExitCode::FAILURE;
                    };
                    qemu_command(&args, &qemu_cpu, c, &kernel, &initrd)
                }
            };
            match run_once(cmd, kind, &args) {
                Ok(run) => {
                    println!(
                        "run {i} {:<13} marker {:>9}  exit {:>9}  setup {:>9}  overhead {:>10}  cpu user {:.2} s sys {:.2} s{}",
                        kind.name(),
                        fmt_s(run.to_marker),
                        fmt_s(Some(run.to_exit)),
                        run.setup_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
                        fmt_mib(run.overhead()),
                        run.user,
                        run.sys,
                        if run.exits > 0 { format!("  exits to user space {}", run.exits) } else { String::new() }
                    );
                    if kind == Kind::Bulkhead && cmdline.is_none() {
                        cmdline = run.cmdline.clone();
                        if let Some(c) = &cmdline {
                            println!("  kernel command line (both): {c}");
                        }
                    }
                    results.push((kind, run));
                }
                Err(e) => {
                    eprintln!("boot-bench: run {i}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let mut setups: Vec<f64> = results.iter().filter_map(|(_, r)| r.setup_ms).collect();
    setups.extend(setup_times(&args, &vmm, &kernel, &initrd, args.setup_runs));
    let exits = if args.exit_iterations > 0 {
        match exit_costs(&args, &vmm, &qemu_cpu, args.exit_iterations) {
            Ok(e) => Some(e),
            Err(e) => {
                eprintln!("boot-bench: exit cost: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };

    let pick = |kind: Kind, f: &dyn Fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, r)| f(r))
            .collect();
        median(&v)
    };
    let marker_b = pick(Kind::Bulkhead, &|r| r.to_marker);
    let marker_q = pick(Kind::Qemu, &|r| r.to_marker);
    let exit_b = pick(Kind::Bulkhead, &|r| Some(r.to_exit));
    let exit_q = pick(Kind::Qemu, &|r| Some(r.to_exit));
    let cpu_b = pick(Kind::Bulkhead, &|r| Some(r.user + r.sys));
    let cpu_q = pick(Kind::Qemu, &|r| Some(r.user + r.sys));
    let over_b = pick(Kind::Bulkhead, &|r| r.overhead().map(|v| v as f64));
    let over_q = pick(Kind::Qemu, &|r| r.overhead().map(|v| v as f64));
    let user_b = pick(Kind::Bulkhead, &|r| Some(r.user));
    let user_q = pick(Kind::Qemu, &|r| Some(r.user));
    let exits_b = pick(Kind::Bulkhead, &|r| Some(r.exits as f64));
    let setup = median(&setups);
    let setup_min = setups.iter().copied().fold(f64::INFINITY, f64::min);
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let fmt_ratio = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.3}"));
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };

    println!("medians of {} runs:", args.runs);
    let r = ratio(marker_b, marker_q);
    println!(
        "  start → marker: bulkhead-vmm {}, qemu {}, ratio {} (target ≤ 1.0: {})",
        fmt_s(marker_b),
        fmt_s(marker_q),
        fmt_ratio(r),
        verdict(r.is_some_and(|r| r <= 1.0))
    );
    println!(
        "  start → exit:   bulkhead-vmm {}, qemu {}, ratio {}",
        fmt_s(exit_b),
        fmt_s(exit_q),
        fmt_ratio(ratio(exit_b, exit_q))
    );
    println!(
        "  CPU time (user+sys) per boot: bulkhead-vmm {}, qemu {}, ratio {}",
        fmt_s(cpu_b),
        fmt_s(cpu_q),
        fmt_ratio(ratio(cpu_b, cpu_q))
    );
    println!(
        "  bulkhead-vmm setup (start → first KVM_RUN), {} starts: median {}, min {:.2} ms (target ≤ 10 ms: {})",
        setups.len(),
        setup.map_or("-".into(), |v| format!("{v:.2} ms")),
        setup_min,
        verdict(setup.is_some_and(|v| v <= 10.0))
    );
    println!(
        "  memory overhead (VmRSS − resident guest memory): bulkhead-vmm {}, qemu {} (target ≤ 4 MiB: {})",
        fmt_mib(over_b.map(|v| v as u64)),
        fmt_mib(over_q.map(|v| v as u64)),
        verdict(over_b.is_some_and(|v| v <= 4.0 * (1u64 << 20) as f64))
    );
    println!(
        "  user CPU of the VMM process per boot: bulkhead-vmm {:.3} s for {:.0} exits to user space, qemu {:.3} s",
        user_b.unwrap_or(f64::NAN),
        exits_b.unwrap_or(f64::NAN),
        user_q.unwrap_or(f64::NAN)
    );
    if let Some([(_, b), (_, q)]) = exits {
        println!(
            "  cost of one port-I/O exit ({} exits, run minus empty run): wall {:.2} µs vs qemu {:.2} µs (ratio {:.3}); \
             user CPU {:.3} µs vs {:.3} µs; user+sys CPU {:.2} µs vs {:.2} µs (ratio {:.3})",
            args.exit_iterations,
            b[0],
            q[0],
            b[0] / q[0],
            b[1],
            q[1],
            b[2],
            q[2],
            b[2] / q[2]
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tracing_fields() {
        let line = "2026-11-25T03:47:30Z DEBUG bulkhead_vmm::builder: guest memory host_addr=0x7f9878c00000 guest_addr=0x0 size=134217728";
        assert_eq!(log_field(line, "host_addr"), Some("0x7f9878c00000"));
        assert_eq!(log_field(line, "size"), Some("134217728"));
        let line =
            r#"DEBUG bulkhead_vmm::builder: boot profile="pvm" cmdline="console=ttyS0 reboot=k""#;
        assert_eq!(log_field(line, "cmdline"), Some("console=ttyS0 reboot=k"));
        assert_eq!(log_field(line, "missing"), None);
    }
}

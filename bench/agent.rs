//! `agent-bench`: what the guest agent costs, measured through the real client.
//!
//!     agent-bench --unix DIR  [...]     an agent on the host (`bulkhead-agent --listen-unix DIR`)
//!     agent-bench --vsock SOCK [...]    an agent in a VM (the VMM's hybrid-vsock socket)
//!
//! Prints the ping round trip (median and p99 over `--pings` calls), process start latency
//! (create + start + wait + remove of `true`, `--starts` times, with the `--streams` the host
//! attaches), and stdout throughput (`--mib` MiB from `head -c` through the agent to the host).
//! With `--starts-only` it does nothing else, so `strace -c` of the agent shows the cost of
//! process starts alone (see bench/agent-syscalls.sh).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bulkhead_bench::median;
use bulkhead_protocol::api;
use bulkhead_protocol::client::blocking::Client;
use bulkhead_protocol::client::{ClientConfig, Connector, ExitStatus};
use bulkhead_protocol::protobuf::MessageField;
use bulkhead_protocol::stream::StreamKind;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Streams {
    /// No stdio streams.
    None,
    /// stdout and stderr (a `docker run` without -i/-t).
    Out,
    /// stdin, stdout and stderr.
    All,
    /// One terminal stream.
    Tty,
}

#[derive(Debug, Parser)]
#[command(about = "Latency and throughput of the guest agent")]
struct Args {
    /// Directory of an agent started with --listen-unix.
    #[arg(long, conflicts_with = "vsock")]
    unix: Option<PathBuf>,
    /// Hybrid-vsock socket of a VM running the agent.
    #[arg(long)]
    vsock: Option<PathBuf>,
    /// Ping calls to time.
    #[arg(long, default_value_t = 200)]
    pings: usize,
    /// Process starts to time.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Streams attached to each started process.
    #[arg(long, value_enum, default_value_t = Streams::Out)]
    streams: Streams,
    /// MiB pushed through stdout for the throughput figure (0: skip).
    #[arg(long, default_value_t = 16)]
    mib: usize,
    /// Skip the baseline run before the throughput run (the same writer into /dev/null).
    #[arg(long)]
    no_baseline: bool,
    /// Only the process starts (for strace): no pings, no throughput run.
    #[arg(long)]
    starts_only: bool,
    /// Sample the guest's own counters (context switches, interrupts, the agent's read and
    /// write syscalls) around each measurement, through the agent; figures that do not depend
    /// on how fast this host emulates the guest kernel. Each sample is one extra process.
    #[arg(long)]
    counters: bool,
    /// Shell scripts to time in the guest (`sh -c SCRIPT`, no streams), each with the guest
    /// counters around it: e.g. what a syscall or a copy costs there.
    #[arg(long = "script")]
    scripts: Vec<String>,
    /// Ask the agent to shut the guest down at the end.
    #[arg(long)]
    shutdown: bool,
    /// Program for the starts (PATH lookup in the guest); `true` needs a shell applet in a
    /// busybox-only guest, so the default goes through `sh`.
    #[arg(long, default_value = "sh -c :")]
    program: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let connector = match (&args.unix, &args.vsock) {
        (Some(dir), None) => Connector::Unix { dir: dir.clone() },
        (None, Some(uds)) => Connector::HybridVsock {
            uds_path: uds.clone(),
        },
        _ => {
            eprintln!("agent-bench: give --unix DIR or --vsock SOCK");
            return ExitCode::FAILURE;
        }
    };
    match run(&args, connector) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Guest counters: context switches and interrupts (/proc/stat), virtio interrupts
/// (/proc/interrupts), and the agent's read/write syscalls and context switches (/proc/<agent>).
const COUNTERS: [&str; 7] = [
    "ctxt",
    "intr",
    "virtio_irqs",
    "agent_syscr",
    "agent_syscw",
    "agent_vcsw",
    "agent_ivcsw",
];

/// Reads the guest counters by running a small script through the agent (its parent is the
/// agent, in the guest and in --listen-unix mode alike).
fn counters(client: &Client, on: bool, n: &mut u32) -> Option<[u64; 7]> {
    if !on {
        return None;
    }
    *n += 1;
    let id = format!("counters-{n}");
    // The main thread is the whole relay; process-wide io counts would include reaped children.
    let script =
        "cat /proc/stat /proc/interrupts /proc/$PPID/task/$PPID/io /proc/$PPID/task/$PPID/status";
    let text = run_capture(client, &id, &["sh", "-c", script]).ok()?;
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let virtio: u64 = text
        .lines()
        .filter(|l| l.contains("virtio"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|v| v.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    Some([
        field("ctxt "),
        field("intr "),
        virtio,
        field("syscr: "),
        field("syscw: "),
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    ])
}

/// Prints counter deltas divided by `per` (per call, per MiB).
fn report(what: &str, before: Option<[u64; 7]>, after: Option<[u64; 7]>, per: f64) {
    if let (Some(b), Some(a)) = (before, after) {
        let parts: Vec<String> = COUNTERS
            .iter()
            .zip(a.iter().zip(b.iter()))
            .map(|(name, (a, b))| format!("{name} {:.1}", a.saturating_sub(*b) as f64 / per))
            .collect();
        println!("  guest per {what}: {}", parts.join(", "));
    }
}

/// Runs a process with stdout attached; returns its output.
fn run_capture(client: &Client, id: &str, args: &[&str]) -> Result<String, String> {
    let e = |e: bulkhead_protocol::client::ClientError| e.to_string();
    client
        .create_process(&request(id, args, Streams::Out))
        .map_err(e)?;
    let mut out = client.open_stream(id, StreamKind::Stdout).map_err(e)?;
    let _err = client.open_stream(id, StreamKind::Stderr).map_err(e)?;
    client.start_process(id).map_err(e)?;
    let mut text = String::new();
    out.read_to_string(&mut text).map_err(|e| e.to_string())?;
    client.wait_process(id, None).map_err(e)?;
    client.remove_process(id).map_err(e)?;
    Ok(text)
}

fn run(args: &Args, connector: Connector) -> Result<(), String> {
    let config = ClientConfig {
        // A boot takes ~30 s on an idle PVM host, minutes on a loaded one.
        connect_timeout: Duration::from_secs(900),
        call_timeout: Duration::from_secs(600),
        ..ClientConfig::default()
    };
    let client = Client::connect(connector, config).map_err(|e| e.to_string())?;
    let v = client.version().map_err(|e| e.to_string())?;
    println!(
        "agent {} on kernel {} (protocol {})",
        v.agent_version, v.kernel_release, v.protocol_version
    );
    let mut samples = 0;
    let mut sample = || counters(&client, args.counters, &mut samples);
    if !args.starts_only && args.pings > 0 {
        let before = sample();
        let mut rtts = Vec::with_capacity(args.pings);
        for _ in 0..args.pings {
            let t = Instant::now();
            client.version().map_err(|e| e.to_string())?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        rtts.sort_by(f64::total_cmp);
        let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
        println!(
            "ping: median {:.0} us, p99 {p99:.0} us ({} calls)",
            median(&rtts).unwrap_or(0.0),
            rtts.len()
        );
        report("ping", before, sample(), args.pings as f64);
    }
    if args.starts > 0 {
        let program: Vec<&str> = args.program.split_whitespace().collect();
        let before = sample();
        let mut times = Vec::with_capacity(args.starts);
        for i in 0..args.starts {
            let t = Instant::now();
            start_one(&client, &format!("start-{i}"), &program, args.streams)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "process start+wait ({:?} streams, {}): median {:.1} ms over {}",
            args.streams,
            args.program,
            median(&times).unwrap_or(0.0),
            times.len()
        );
        report("process start", before, sample(), args.starts as f64);
    }
    if !args.starts_only && args.mib > 0 {
        // The same writer with its output thrown away in the guest: what the relay adds is the
        // difference.
        if !args.no_baseline {
            let before = sample();
            let t = Instant::now();
            let script = format!("exec head -c {} /dev/zero >/dev/null", args.mib << 20);
            start_one(&client, "baseline", &["sh", "-c", &script], Streams::None)?;
            println!(
                "baseline (head -c {} MiB to /dev/null in the guest): {:.2} s",
                args.mib,
                t.elapsed().as_secs_f64()
            );
            report("MiB, baseline", before, sample(), args.mib as f64);
        }
        let before = sample();
        let (secs, bytes) = throughput(&client, args.mib)?;
        println!(
            "stdout throughput: {:.1} MiB/s ({} MiB in {secs:.2} s)",
            bytes as f64 / (1 << 20) as f64 / secs,
            bytes >> 20
        );
        report("MiB through the agent", before, sample(), args.mib as f64);
    }
    for (i, script) in args.scripts.iter().enumerate() {
        let before = sample();
        let t = Instant::now();
        start_one(
            &client,
            &format!("script-{i}"),
            &["sh", "-c", script],
            Streams::None,
        )?;
        println!("script {script:?}: {:.2} s", t.elapsed().as_secs_f64());
        report("script", before, sample(), 1.0);
    }
    if args.shutdown {
        client.shutdown().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn request(id: &str, args: &[&str], streams: Streams) -> api::CreateProcessRequest {
    let (stdin, out) = match streams {
        Streams::None => (false, false),
        Streams::Out => (false, true),
        Streams::All | Streams::Tty => (true, true),
    };
    api::CreateProcessRequest {
        id: id.to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
        terminal: streams == Streams::Tty,
        stdio: MessageField::some(api::StdioStreams {
            stdin,
            stdout: out,
            stderr: out && streams != Streams::Tty,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Create, attach, start, wait, remove: one whole process life.
fn start_one(client: &Client, id: &str, program: &[&str], streams: Streams) -> Result<(), String> {
    let e = |e: bulkhead_protocol::client::ClientError| e.to_string();
    client
        .create_process(&request(id, program, streams))
        .map_err(e)?;
    let kinds: &[StreamKind] = match streams {
        Streams::None => &[],
        Streams::Out => &[StreamKind::Stdout, StreamKind::Stderr],
        Streams::All => &[StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr],
        Streams::Tty => &[StreamKind::Terminal],
    };
    let mut held = Vec::new();
    for kind in kinds {
        held.push(client.open_stream(id, *kind).map_err(e)?);
    }
    client.start_process(id).map_err(e)?;
    // The process gets EOF on stdin at once.
    for s in &held {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let status = client.wait_process(id, None).map_err(e)?;
    client.remove_process(id).map_err(e)?;
    if status != ExitStatus::Exited(0) {
        return Err(format!("{program:?} ended with {status:?}"));
    }
    Ok(())
}

/// Pushes `mib` MiB of zeros through stdout; returns (seconds from start to EOF, bytes).
fn throughput(client: &Client, mib: usize) -> Result<(f64, usize), String> {
    let e = |e: bulkhead_protocol::client::ClientError| e.to_string();
    let id = "throughput";
    let script = format!("exec head -c {} /dev/zero", mib << 20);
    client
        .create_process(&request(id, &["sh", "-c", &script], Streams::Out))
        .map_err(e)?;
    let mut out = client.open_stream(id, StreamKind::Stdout).map_err(e)?;
    let _err = client.open_stream(id, StreamKind::Stderr).map_err(e)?;
    client.start_process(id).map_err(e)?;
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(err) => return Err(format!("read stdout: {err}")),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    client.wait_process(id, None).map_err(e)?;
    client.remove_process(id).map_err(e)?;
    Ok((secs, total))
}

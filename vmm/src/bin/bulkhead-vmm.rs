//! `bulkhead-vmm`: run one micro-VM by hand.
//!
//! Exit status 0 when the guest resets or powers off, 1 with a one-line error otherwise (a dead
//! vCPU's registers are printed before that line). `BULKHEAD_VMM_LOG=debug` logs the boot
//! layout and the time of the first `KVM_RUN`; `BULKHEAD_KVM_DEVICE` overrides `/dev/kvm`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead_vmm::devices::virtio::fs::FsConfig;
use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
use bulkhead_vmm::{ConsoleOutput, ExitReason, HostProfile, Vm, VmConfig};
use clap::Parser;

/// Boot a Linux kernel in a KVM micro-VM.
#[derive(Parser, Debug)]
#[command(name = "bulkhead-vmm", version)]
struct Args {
    /// Kernel image: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (uncompressed cpio is fastest).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to the defaults.
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB (at least 32).
    #[arg(long, default_value_t = bulkhead_vmm::config::DEFAULT_MEM_MIB)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Write the serial console to this file instead of stdout.
    #[arg(long)]
    console: Option<PathBuf>,
    /// Feed stdin to the serial console.
    #[arg(long)]
    stdin: bool,
    /// Add a virtio-vsock device whose host side is this Unix socket (Firecracker's hybrid
    /// vsock: connect and send `CONNECT <port>\n`; guest connections to port P go to
    /// `<socket>_P`).
    #[arg(long, visible_alias = "vsock-uds")]
    vsock: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = bulkhead_vmm::devices::virtio::vsock::DEFAULT_GUEST_CID, requires = "vsock")]
    vsock_cid: u64,
    /// Share a host directory over virtio-fs (repeatable): the guest mounts it with
    /// `mount -t virtiofs TAG <dir>`. `:ro` makes it read-only, `:shared` for a directory the
    /// host changes too (short cache timeouts instead of caching for a day).
    #[arg(long = "fs", value_name = "TAG=DIR[:ro][:shared]", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// Host KVM profile (hardware or pvm) instead of probing.
    #[arg(long, value_parser = parse_profile)]
    profile: Option<HostProfile>,
}

fn parse_profile(s: &str) -> Result<HostProfile, String> {
    HostProfile::from_name(s).ok_or_else(|| format!("unknown profile {s:?} (hardware or pvm)"))
}

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    s.parse()
        .map_err(|e: bulkhead_vmm::devices::virtio::fs::FsError| e.to_string())
}

/// `err` and its sources on one line.
fn one_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        // Some library errors repeat their source's text in their own; say it once.
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line.replace('\n', " ")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_VMM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let mut config = VmConfig::new(args.kernel);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.mem_mib = args.mem;
    config.vcpus = args.vcpus;
    config.console = args
        .console
        .map_or(ConsoleOutput::Stdout, ConsoleOutput::File);
    config.console_input = args.stdin;
    config.profile = args.profile;
    config.fs = args.fs;
    config.vsock = args.vsock.map(|path| {
        let mut vsock = VsockConfig::new(path);
        vsock.guest_cid = args.vsock_cid;
        vsock
    });
    if let Some(dev) = std::env::var_os("BULKHEAD_KVM_DEVICE") {
        config.kvm_device = dev.into();
    }

    let result = Vm::build(&config)
        .map_err(|e| one_line(&e))
        .and_then(|vm| vm.run().map_err(|e| one_line(&e)));
    match result {
        Ok(reason) if reason.is_clean() => ExitCode::SUCCESS,
        Ok(ExitReason::Fault(fault)) => {
            if let Some(dump) = &fault.dump {
                eprintln!("{dump}");
            }
            eprintln!("bulkhead-vmm: {fault}");
            ExitCode::FAILURE
        }
        Ok(other) => {
            eprintln!("bulkhead-vmm: {other}");
            ExitCode::FAILURE
        }
        Err(line) => {
            eprintln!("bulkhead-vmm: {line}");
            ExitCode::FAILURE
        }
    }
}

//! `bulkhead-vmm`: run one micro-VM by hand.
//!
//! Exit status 0 when the guest resets or powers off, 1 with a one-line error otherwise (a dead
//! vCPU's registers are printed before that line). `BULKHEAD_VMM_LOG=debug` logs the boot
//! layout and the time of the first `KVM_RUN`; `BULKHEAD_KVM_DEVICE` overrides `/dev/kvm`.
//!
//! Snapshots by hand: `--snapshot DIR --snapshot-port P` boots, waits until the guest accepts
//! a vsock connection on port P, closes it, snapshots into DIR and exits 0 (the template stops).
//! `--restore DIR` resumes such a snapshot instead of booting; `--kernel`/`--initrd` name the
//! image the snapshot must have booted, and `--vsock`/`--fs`/`--console` are the clone's own.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bulkhead_vmm::devices::virtio::fs::FsConfig;
use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
use bulkhead_vmm::{
    ConsoleOutput, ExitReason, HostProfile, ImageId, NetBackend, RestoreConfig, Tap, Vm, VmConfig,
    VmHandle,
};
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
    /// Cap the console file at this many bytes: when full it becomes `<file>.1` (replacing the
    /// previous one) and a new file starts, so at most twice this is on disk.
    #[arg(long, value_name = "BYTES", requires = "console")]
    console_max_bytes: Option<u64>,
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
    /// host changes too (short cache timeouts instead of caching for a day), `:nosetid` refuses
    /// (EPERM) set-user-ID and set-group-ID bits on the guest's files, which the guest may
    /// otherwise set on files it owns as any host uid, root included.
    #[arg(long = "fs", value_name = "TAG=DIR[:ro][:shared][:nosetid]", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// Host KVM profile (hardware or pvm) instead of probing.
    #[arg(long, value_parser = parse_profile)]
    profile: Option<HostProfile>,
    /// Snapshot the VM into this directory once the guest accepts on `--snapshot-port`, then
    /// stop it.
    #[arg(long, requires = "snapshot_port", conflicts_with = "restore")]
    snapshot: Option<PathBuf>,
    /// The guest vsock port whose first accepted connection triggers `--snapshot`.
    #[arg(long, requires_all = ["snapshot", "vsock"])]
    snapshot_port: Option<u32>,
    /// Restore the snapshot in this directory instead of booting (`--kernel`/`--initrd` must
    /// be the ones it booted).
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Empty NIC slots wired after every other device (each shows no device to the guest
    /// until a tap is attached; at least one per `--tap`).
    #[arg(long, default_value_t = 0, conflicts_with = "restore")]
    net_slots: u8,
    /// Attach a tap (created in this process's network namespace, or an existing unowned
    /// one) to the next free NIC slot before the VM starts (repeatable). The guest sees the
    /// NIC at boot; a restored guest binds `virtio-mmio.<32 + slot>` itself. Default MAC
    /// 52:54:00:12:34:<56 + slot>, MTU 1500, offloads on.
    #[arg(long = "tap", value_name = "NAME[,mac=XX:XX:XX:XX:XX:XX][,mtu=N][,offload=off]", value_parser = parse_tap)]
    taps: Vec<TapSpec>,
}

/// A `--tap` argument.
#[derive(Debug, Clone)]
struct TapSpec {
    name: String,
    mac: Option<[u8; 6]>,
    mtu: u16,
    offloads: bool,
}

fn parse_tap(s: &str) -> Result<TapSpec, String> {
    let mut parts = s.split(',');
    let name = parts.next().unwrap_or_default().to_owned();
    let mut spec = TapSpec {
        name,
        mac: None,
        mtu: bulkhead_vmm::devices::virtio::net::DEFAULT_MTU,
        offloads: true,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("mac", v)) => {
                let mac = bulkhead_vmm::devices::virtio::net::parse_mac(v);
                spec.mac = Some(mac.map_err(|e| e.to_string())?);
            }
            Some(("mtu", v)) => spec.mtu = v.parse().map_err(|_| format!("bad mtu {v:?}"))?,
            Some(("offload", "on")) => spec.offloads = true,
            Some(("offload", "off")) => spec.offloads = false,
            _ => return Err(format!("unknown tap option {part:?}")),
        }
    }
    Ok(spec)
}

/// Opens each `--tap` and attaches it to the VM's next free NIC slot.
fn attach_taps(handle: &VmHandle, taps: &[TapSpec]) -> Result<(), String> {
    for (i, spec) in taps.iter().enumerate() {
        let tap = Tap::open(&spec.name).map_err(|e| one_line(&e))?;
        let mac = spec
            .mac
            .unwrap_or([0x52, 0x54, 0, 0x12, 0x34, 0x56u8.wrapping_add(i as u8)]);
        let mut backend = NetBackend::new(tap, mac);
        backend.mtu = spec.mtu;
        backend.offloads = spec.offloads;
        let info = handle.attach_net(backend).map_err(|e| one_line(&e))?;
        tracing::info!(?info, "tap attached");
    }
    Ok(())
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

/// Waits for the guest's port, then snapshots and stops the VM; returns the error line if any.
fn snapshot_when_ready(
    handle: &VmHandle,
    uds: &std::path::Path,
    port: u32,
    dir: &std::path::Path,
) -> Result<(), String> {
    // Short waits, so a guest that dies before it answers ends this thread too.
    while bulkhead_vmm::snapshot::wait_for_guest_port(uds, port, Duration::from_secs(1)).is_err() {
        if handle.is_stopping() {
            return Err(format!("the guest never accepted on vsock port {port}"));
        }
    }
    // The probe connection is closed; let the guest finish closing it before the snapshot.
    handle.wait_for_vsock_idle(Duration::from_secs(10));
    let info = handle.snapshot(dir).map_err(|e| one_line(&e))?;
    eprintln!(
        "bulkhead-vmm: snapshot {}: paused {} ms, total {} ms, memory {} MiB ({} KiB written), state {} KiB",
        dir.display(),
        info.paused.as_millis(),
        info.total.as_millis(),
        info.memory_file_size >> 20,
        info.memory_data_bytes >> 10,
        info.state_bytes >> 10
    );
    Ok(())
}

fn vsock_config(args: &Args) -> Option<VsockConfig> {
    args.vsock.clone().map(|path| {
        let mut vsock = VsockConfig::new(path);
        vsock.guest_cid = args.vsock_cid;
        vsock
    })
}

fn kvm_device() -> Option<PathBuf> {
    std::env::var_os("BULKHEAD_KVM_DEVICE").map(PathBuf::from)
}

fn restore_config(args: &Args, dir: PathBuf) -> Result<RestoreConfig, String> {
    let image = ImageId::of_files(&args.kernel, args.initrd.as_deref())
        .map_err(|e| format!("cannot hash the kernel and initrd: {e}"))?;
    let mut config = RestoreConfig::new(dir, image);
    config.console = args
        .console
        .clone()
        .map_or(ConsoleOutput::Stdout, ConsoleOutput::File);
    config.console_max_bytes = args.console_max_bytes;
    config.console_input = args.stdin;
    config.profile = args.profile;
    config.fs = args.fs.clone();
    config.vsock = vsock_config(args);
    if let Some(dev) = kvm_device() {
        config.kvm_device = dev;
    }
    Ok(config)
}

fn main() -> ExitCode {
    // A share's server is this binary started again (see `fs::server`): it never returns.
    bulkhead_vmm::devices::virtio::fs::server::main_if_requested();
    let args = Args::parse();
    init_logging();
    if let Some(dir) = args.restore.clone() {
        let result =
            restore_config(&args, dir).and_then(|c| Vm::restore(&c).map_err(|e| one_line(&e)));
        let result = result.and_then(|vm| attach_taps(&vm.handle(), &args.taps).map(|()| vm));
        return finish(result.and_then(|vm| vm.run().map_err(|e| one_line(&e))));
    }
    let mut config = VmConfig::new(args.kernel.clone());
    config.vsock = vsock_config(&args);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.mem_mib = args.mem;
    config.vcpus = args.vcpus;
    config.console = args
        .console
        .map_or(ConsoleOutput::Stdout, ConsoleOutput::File);
    config.console_max_bytes = args.console_max_bytes;
    config.console_input = args.stdin;
    config.profile = args.profile;
    config.fs = args.fs;
    config.net_slots = args.net_slots;
    if let Some(dev) = kvm_device() {
        config.kvm_device = dev;
    }

    let vm = match Vm::build(&config) {
        Ok(vm) => vm,
        Err(e) => return finish(Err(one_line(&e))),
    };
    if let Err(line) = attach_taps(&vm.handle(), &args.taps) {
        return finish(Err(line));
    }
    let trigger = match (args.snapshot, args.snapshot_port, args.vsock) {
        (Some(dir), Some(port), Some(uds)) => {
            let handle = vm.handle();
            Some(std::thread::spawn(move || {
                let result = snapshot_when_ready(&handle, &uds, port, &dir);
                handle.stop();
                result
            }))
        }
        _ => None,
    };
    let result = vm.run().map_err(|e| one_line(&e));
    if let Some(Ok(Err(line))) = trigger.map(|t| t.join()) {
        return finish(Err(line));
    }
    finish(result)
}

fn finish(result: Result<ExitReason, String>) -> ExitCode {
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

//! Boots the real guest kernel with the test initramfs through the `bulkhead-vmm` binary: the
//! ELF vmlinux with 2 vCPUs and its console in a capped file, and the bzImage with 1 vCPU, its
//! console on stdout and a vsock device that an agent client tries from the start (the test init
//! never listens on vsock). Each boot takes ~25-60 s on PVM-backed KVM, so no boot is here that
//! another case already makes, and each boot proves all it can. Gated by `BULKHEAD_E2E=1`.

use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_protocol::client::blocking::Client;
use bulkhead_protocol::client::{ClientConfig, Connector};
use bulkhead_tests::{
    bzimage, kernel, require, run, test_initramfs, vm_needs, vmm_binary, Finished,
};

/// Generous: a PVM boot is ~30 s alone, and CI machines may be busier.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn boot(kernel: &std::path::Path, vcpus: u8, extra: &[&str]) -> Finished {
    let mut cmd = Command::new(vmm_binary());
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(test_initramfs())
        .args(["--mem", "128", "--vcpus", &vcpus.to_string()])
        .args(extra);
    run(&mut cmd, BOOT_TIMEOUT)
}

fn assert_booted(f: &Finished, console: &str, vcpus: u8) {
    let marker = format!("BULKHEAD-TEST-INIT: ok cpus={vcpus}");
    assert!(
        console.lines().any(|l| l.trim_end() == marker),
        "no `{marker}` on the console.\nconsole:\n{console}\nstderr:\n{}",
        f.stderr
    );
    assert!(console.contains("BULKHEAD-TEST-INIT: started"));
    assert!(
        f.status.success(),
        "exit {:?}, stderr:\n{}",
        f.status,
        f.stderr
    );
    eprintln!("booted {vcpus} vcpu(s) in {:.1?}", f.elapsed);
}

/// The bzImage boots with 1 vCPU, its console on stdout. A client connecting to the agent
/// from the VMM's start meets a guest that never listens (the test init has no agent and
/// powers off after its checks): it must give a clear error in time, "vm is gone" once the VMM
/// has exited (or, had the boot outlasted its connect timeout, that the agent did not come up).
#[test]
fn bzimage_boots_and_a_client_without_an_agent_gives_up_in_time() {
    if !require(&vm_needs()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let timeout = Duration::from_secs(240);
    let client = {
        let uds = uds.clone();
        std::thread::spawn(move || {
            let config = ClientConfig {
                connect_timeout: timeout,
                ..ClientConfig::default()
            };
            let start = Instant::now();
            let err = Client::connect(Connector::HybridVsock { uds_path: uds }, config).err();
            (err, start.elapsed())
        })
    };
    let f = boot(&bzimage(), 1, &["--vsock", uds.to_str().unwrap()]);
    assert_booted(&f, &f.stdout, 1);
    let (err, took) = client.join().unwrap();
    let err = err.expect("nothing in this guest answers");
    eprintln!("no agent: {err} after {took:.1?}");
    assert!(took < timeout + Duration::from_secs(30), "took {took:?}");
    let text = err.to_string();
    assert!(
        text == "vm is gone" || text.starts_with("agent did not come up within"),
        "unclear error: {text}"
    );
}

/// The vmlinux boots with 2 vCPUs (the init counts them online), its console going to a file
/// and not to stdout; and that file cannot grow past twice `--console-max-bytes`: the boot
/// prints far more than twice this cap (the kernel's log, then the init's ~215 bytes), and the
/// newest output stays in the file and the chunk before it in `.1`. (The cap is above the ~72
/// bytes from the verdict line to the end.)
#[test]
fn vmlinux_boots_with_two_vcpus_into_a_capped_console_file() {
    use std::os::unix::fs::PermissionsExt;
    if !require(&vm_needs()) {
        return;
    }
    const CAP: u64 = 80;
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let old = dir.path().join("console.log.1");
    let cap = CAP.to_string();
    let f = boot(
        &kernel(),
        2,
        &[
            "--console",
            console.to_str().unwrap(),
            "--console-max-bytes",
            &cap,
        ],
    );
    assert!(
        f.stdout.is_empty(),
        "console went to stdout too: {}",
        f.stdout
    );
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files.len(), 2, "only the log and its .1: {files:?}");
    for path in [&console, &old] {
        let meta = std::fs::metadata(path).unwrap();
        assert!(
            meta.len() <= CAP,
            "{} is {} bytes",
            path.display(),
            meta.len()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    // It rotated: `.1` is a full file.
    assert_eq!(std::fs::metadata(&old).unwrap().len(), CAP);
    // The newest output is kept: the boot's last lines, the init's verdict among them.
    let text = String::from_utf8_lossy(
        &[
            std::fs::read(&old).unwrap(),
            std::fs::read(&console).unwrap(),
        ]
        .concat(),
    )
    .into_owned();
    assert!(
        text.contains("BULKHEAD-TEST-INIT: ok cpus=2"),
        "the marker is not in the newest {} bytes:\n{text}\nstderr:\n{}",
        2 * CAP,
        f.stderr
    );
    assert!(
        !text.contains("Linux version"),
        "the boot's start was rotated away"
    );
    assert!(
        f.status.success(),
        "exit {:?}, stderr:\n{}",
        f.status,
        f.stderr
    );
    eprintln!("booted 2 vcpus in {:.1?}", f.elapsed);
}

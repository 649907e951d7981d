//! Boots the real guest kernel with the test initramfs through the `bulkhead-vmm` binary: the
//! ELF vmlinux with 2 vCPUs and with 1 vCPU and a capped console file, and the bzImage with 1
//! vCPU and its console on stdout. Each boot takes ~25-60 s on PVM-backed KVM, so no boot
//! is here that another case already makes. Gated by `BULKHEAD_E2E=1`.

use std::process::Command;
use std::time::Duration;

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

#[test]
fn vmlinux_boots_with_two_vcpus_console_to_a_file() {
    if !require(&vm_needs()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let f = boot(&kernel(), 2, &["--console", console.to_str().unwrap()]);
    assert!(
        f.stdout.is_empty(),
        "console went to stdout too: {}",
        f.stdout
    );
    let text = std::fs::read_to_string(&console).unwrap();
    assert_booted(&f, &text, 2);
}

#[test]
fn bzimage_boots() {
    if !require(&vm_needs()) {
        return;
    }
    let f = boot(&bzimage(), 1, &[]);
    assert_booted(&f, &f.stdout, 1);
}

/// A guest's console cannot grow past twice `--console-max-bytes`: the test init prints ~215
/// bytes, more than twice this cap, and the newest output stays in the file and the chunk
/// before it in `.1`. (The cap is above the ~72 bytes from the verdict line to the end.)
#[test]
fn a_capped_console_file_rotates_during_the_boot() {
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
        1,
        &[
            "--console",
            console.to_str().unwrap(),
            "--console-max-bytes",
            &cap,
        ],
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
        text.contains("BULKHEAD-TEST-INIT: ok cpus=1"),
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
}

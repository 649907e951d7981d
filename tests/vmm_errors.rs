//! `bulkhead-vmm` refuses bad input with one line on stderr and a non-zero exit, never a panic.
//! These start no guest, so they run without `BULKHEAD_E2E`.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bulkhead_tests::{kernel, run, vmm_binary};

/// Runs `bulkhead-vmm` with `args` and returns its single line of stderr.
fn one_line_error(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(vmm_binary());
    cmd.args(args).envs(envs.iter().copied());
    let f = run(&mut cmd, Duration::from_secs(60));
    assert!(!f.status.success(), "{args:?} succeeded");
    assert_eq!(f.status.code(), Some(1), "{args:?}: {:?}", f.status);
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{}", f.stderr);
    assert!(lines[0].starts_with("bulkhead-vmm: "), "{}", lines[0]);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
    assert!(f.stdout.is_empty(), "{}", f.stdout);
    lines[0].to_string()
}

/// A file with a bzImage's magic numbers and nothing else: it gets past format detection.
fn fake_bzimage(dir: &Path) -> String {
    let mut bytes = vec![0u8; 0x400];
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = 0xaa;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    let path = dir.join("fake-bzImage");
    std::fs::write(&path, bytes).expect("write the fake bzImage");
    path.to_string_lossy().into_owned()
}

/// The real kernel if it is installed, else the fake bzImage.
fn some_kernel(dir: &Path) -> String {
    let k = kernel();
    if k.exists() {
        k.to_string_lossy().into_owned()
    } else {
        fake_bzimage(dir)
    }
}

#[test]
fn missing_kernel_file() {
    let line = one_line_error(&["--kernel", "/nonexistent/vmlinux"], &[]);
    assert!(
        line.contains("cannot read kernel /nonexistent/vmlinux"),
        "{line}"
    );
    assert!(line.contains("No such file"), "{line}");
}

#[test]
fn file_that_is_not_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"definitely not a kernel\n")
        .unwrap();
    let line = one_line_error(&["--kernel", path.to_str().unwrap()], &[]);
    assert!(line.contains("is not a kernel image"), "{line}");
    // A directory is not a kernel either.
    let line = one_line_error(&["--kernel", dir.path().to_str().unwrap()], &[]);
    assert!(line.contains("is not a kernel image"), "{line}");
}

#[test]
fn memory_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let k = some_kernel(dir.path());
    let line = one_line_error(&["--kernel", &k, "--mem", "16"], &[]);
    assert!(line.contains("below the minimum of 32 MiB"), "{line}");
}

#[test]
fn kvm_device_missing() {
    let dir = tempfile::tempdir().unwrap();
    let k = some_kernel(dir.path());
    let line = one_line_error(
        &["--kernel", &k],
        &[("BULKHEAD_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert!(line.contains("cannot open /nonexistent/kvm"), "{line}");
}

#[test]
fn missing_initrd_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = some_kernel(dir.path());
    let line = one_line_error(
        &["--kernel", &k, "--initrd", "/nonexistent/initrd.cpio"],
        &[],
    );
    assert!(
        line.contains("cannot read initrd /nonexistent/initrd.cpio"),
        "{line}"
    );
}

#[test]
fn zero_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let k = some_kernel(dir.path());
    let line = one_line_error(&["--kernel", &k, "--vcpus", "0"], &[]);
    assert!(line.contains("at least one vcpu"), "{line}");
}

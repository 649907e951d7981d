//! `bulkhead-vmm --fs` refuses bad shares with one line on stderr before it boots anything.
//! These start no guest, so they run without `BULKHEAD_E2E`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use bulkhead_tests::{run, vmm_binary};

/// Runs `bulkhead-vmm` with `args` and returns its single line of stderr.
fn one_line_error(args: &[&str]) -> String {
    let f = run(
        Command::new(vmm_binary()).args(args),
        Duration::from_secs(60),
    );
    assert_eq!(
        f.status.code(),
        Some(1),
        "{args:?}: {:?}\n{}",
        f.status,
        f.stderr
    );
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{}", f.stderr);
    assert!(lines[0].starts_with("bulkhead-vmm: "), "{}", lines[0]);
    lines[0].to_string()
}

/// A file with a bzImage's magic numbers and nothing else: it gets past format detection, so
/// the share checks that follow it are what fails.
fn not_a_kernel(dir: &std::path::Path) -> String {
    let mut bytes = vec![0u8; 0x400];
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = 0xaa;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    let path = dir.join("fake-bzImage");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn missing_share_directory() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = not_a_kernel(dir.path());
    let line = one_line_error(&["--kernel", &kernel, "--fs", "data=/nonexistent/share:ro"]);
    assert!(line.contains("cannot share /nonexistent/share"), "{line}");
    assert!(line.contains("No such file"), "{line}");
}

#[test]
fn share_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = not_a_kernel(dir.path());
    let line = one_line_error(&["--kernel", &kernel, "--fs", &format!("data={kernel}")]);
    assert!(line.contains("cannot share"), "{line}");
    assert!(line.contains("Not a directory"), "{line}");
}

#[test]
fn duplicate_tags() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = not_a_kernel(dir.path());
    let share = dir.path().display().to_string();
    let line = one_line_error(&[
        "--kernel",
        &kernel,
        "--fs",
        &format!("data={share}"),
        "--fs",
        &format!("data={share}:ro"),
    ]);
    assert!(line.contains("duplicate virtio-fs tag \"data\""), "{line}");
}

#[test]
fn bad_specs_are_usage_errors() {
    for spec in [
        "=/tmp",
        "no-directory",
        "tag=",
        "waytoolongtagwaytoolongtagwaytoolongtag=/tmp",
    ] {
        let f = run(
            Command::new(vmm_binary()).args(["--kernel", "/k", "--fs", spec]),
            Duration::from_secs(60),
        );
        assert_eq!(f.status.code(), Some(2), "{spec}: {:?}", f.status);
        assert!(f.stderr.contains("--fs"), "{spec}: {}", f.stderr);
    }
}

//! virtio-fs end to end: one boot of the real guest kernel with `bulkhead-fs-test-init` as
//! `/init` and two shares (`bulkhead` read-write, `ro` read-only). The guest measures simple
//! operations, does ordinary file work, tries to escape as root (`..`, symlinks to `/` and to
//! host paths, `/proc/self/fd`, device nodes, file handles, xattrs, renames racing with opens)
//! and prints a verdict; this test checks the verdict and the host side (guest writes visible,
//! nothing outside the shares touched) and reports FUSE requests per operation.
//!
//! The VM runs in this process through the `bulkhead_vmm` library, so the device's request
//! counters can be read at each quiet point the guest announces (`mark <step>`). The guest
//! starts the step only after a short pause and a `go <step>` line; a reading taken once that
//! line was on the console fails the test (the step's first requests could have been counted
//! in the step before, and a `<=` bound then pass when it should not). Needs root (the share
//! is confined in a mount namespace) and `/dev/kvm`; gated by `BULKHEAD_E2E=1`. ~2 min on PVM.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_tests::{kernel, repo_root, require, vm_needs, Need};
use bulkhead_vmm::devices::virtio::fs::{FsConfig, FsMetricsSnapshot, FsServer};
use bulkhead_vmm::{ConsoleOutput, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(900);
const SECRET: &[u8] = b"HOST-SECRET-5f1e\n";
const PREFIX: &str = "FS-TEST: ";

/// Same generator as the guest's `pattern`.
fn pattern(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// `$BULKHEAD_FS_TEST_INITRAMFS`, or built now by `images/build-fs-test-initramfs.sh`.
fn fs_test_initramfs() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_FS_TEST_INITRAMFS") {
        return PathBuf::from(path);
    }
    let script = repo_root().join("images/build-fs-test-initramfs.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("script prints the cpio path")
            .trim(),
    )
}

struct Layout {
    tmp: tempfile::TempDir,
    share: PathBuf,
    ro: PathBuf,
    outside: PathBuf,
}

/// The host side the guest program expects (see `images/fs-test-init/src/{work,escape}.rs`).
fn prepare() -> Layout {
    let tmp = tempfile::tempdir().unwrap();
    let (share, ro, outside) = (
        tmp.path().join("share"),
        tmp.path().join("ro"),
        tmp.path().join("outside"),
    );
    for d in [&share, &ro, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    let w = |p: &Path, data: &[u8]| std::fs::write(p, data).unwrap();
    w(&outside.join("secret"), SECRET);
    w(&ro.join("file"), b"read-only content\n");
    w(&share.join("small.txt"), b"small file content\n");
    std::fs::create_dir(share.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", share.join("bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static) is needed in the share");
    std::fs::create_dir(share.join("dir")).unwrap();
    for i in 0..20 {
        w(
            &share.join(format!("dir/f{i:02}")),
            format!("file {i:02}\n").as_bytes(),
        );
    }
    let big: Vec<u8> = (0..1 << 20).map(pattern).collect();
    w(&share.join("big.bin"), &big);
    w(&share.join("big2.bin"), &big);
    std::fs::create_dir(share.join("race")).unwrap();
    w(&share.join("race/secret"), b"inside\n");
    symlink(&outside, share.join("swap")).unwrap();
    symlink("/", share.join("to-root")).unwrap();
    symlink(&outside, share.join("to-outside")).unwrap();
    symlink(outside.join("secret"), share.join("to-secret")).unwrap();
    symlink("../outside/secret", share.join("rel")).unwrap();
    for fd in 0..20 {
        symlink(format!("/proc/self/fd/{fd}"), share.join(format!("fd{fd}"))).unwrap();
    }
    Layout {
        tmp,
        share,
        ro,
        outside,
    }
}

/// Everything under `dir` (relative paths), sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Whether the console file holds `go <step>`: the guest printed it before the step began.
fn step_began(console: &Path, step: &str) -> bool {
    let text = std::fs::read_to_string(console).unwrap_or_default();
    let go = format!("{PREFIX}go {step} [");
    text.lines().any(|l| l.starts_with(&go))
}

/// Boots the guest and follows its console: returns the console text and the counters
/// sampled at each mark. Panics if a mark was sampled after its step began.
fn boot(l: &Layout) -> (String, Vec<(String, FsMetricsSnapshot)>) {
    let console = l.tmp.path().join("console.log");
    let mut config = VmConfig::new(kernel());
    config.initrd = Some(fs_test_initramfs());
    config.mem_mib = 256;
    config.console = ConsoleOutput::File(console.clone());
    config.cmdline = Some(format!("fstest_outside={}", l.outside.display()));
    // The shares' servers are `bulkhead-vmm __virtiofs-server` processes (this test binary
    // boots the VM in-process, and cannot be a server itself).
    let server = FsServer::Exec {
        program: bulkhead_tests::vmm_binary(),
        args: vec![bulkhead_vmm::devices::virtio::fs::server::SUBCOMMAND.into()],
    };
    let mut ro = FsConfig::new("ro", &l.ro);
    ro.read_only = true;
    ro.server = server.clone();
    let mut rw = FsConfig::new("bulkhead", &l.share);
    rw.server = server;
    config.fs = vec![rw, ro];

    let vm = Vm::build(&config).expect("build the vm");
    let metrics = vm
        .fs_metrics("bulkhead")
        .expect("counters of the bulkhead share");
    let handle = vm.handle();
    let runner = std::thread::spawn(move || vm.run());

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut late = Vec::new();
    let mut seen = 0;
    loop {
        let done = runner.is_finished();
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Only whole lines (the last one may still be growing).
        let whole = if text.ends_with('\n') {
            lines.len()
        } else {
            lines.len().saturating_sub(1)
        };
        for line in &lines[seen.min(whole)..whole] {
            if let Some(rest) = line
                .strip_prefix(PREFIX)
                .and_then(|l| l.strip_prefix("mark "))
            {
                let name = rest.split(" [").next().unwrap_or(rest).to_string();
                let counters = metrics.snapshot();
                // Read after the counters: no `go` yet means no request of the step before
                // them (the guest prints it, sent out, before its first request).
                if step_began(&console, &name) {
                    late.push(name.clone());
                }
                samples.push((name, counters));
            }
        }
        seen = seen.max(whole);
        if done {
            break;
        }
        if start.elapsed() > TIMEOUT {
            handle.stop();
            let _ = runner.join();
            panic!("guest still running after {TIMEOUT:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let reason = runner.join().expect("vm thread").expect("vm run");
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        reason.is_clean(),
        "vm ended with {reason:?}; console:\n{text}"
    );
    assert!(
        late.is_empty(),
        "counters read after these steps began (host too slow for the guest's pause): {late:?}"
    );
    eprintln!("guest done in {:.1?}", start.elapsed());
    (text, samples)
}

#[test]
fn guest_uses_the_shares_and_cannot_escape() {
    if !require(&[&vm_needs()[..], &[Need::Root]].concat()) {
        return;
    }
    let l = prepare();
    let ro_before = tree(&l.ro);
    let (console, samples) = boot(&l);
    let ours: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .collect();
    eprintln!("guest said:\n  {}", ours.join("\n  "));

    // Requests per operation: what happened between a mark and the next one.
    let mut per_step: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    eprintln!("FUSE requests per operation (bulkhead share):");
    for w in samples.windows(2) {
        let delta = w[1].1.requests_since(&w[0].1);
        let total: u64 = delta.values().sum();
        eprintln!("  {:<20} {total:>4}  {delta:?}", w[0].0);
        per_step.insert(w[0].0.clone(), delta);
    }

    let failed: Vec<&&str> = ours.iter().filter(|l| l.contains(" FAIL")).collect();
    assert!(failed.is_empty(), "guest checks failed: {failed:#?}");
    assert!(
        ours.iter().any(|l| l.starts_with("verdict ok")),
        "no verdict; console:\n{console}"
    );
    for step in [
        "stat",
        "read-1mib-readahead",
        "read-small",
        "read-small-again",
        "exec-busybox",
        "exec-busybox-again",
        "cat-small",
        "ls-dir",
        "create-write",
        "read-1mib",
        "write-2mib",
    ] {
        assert!(per_step.contains_key(step), "no sample for {step}");
    }
    // The caching contract of an exclusive share: cached data costs no round trip. (A stat
    // after a read costs one GETATTR: the guest kernel drops its cached atime on every read.)
    let total = |step: &str| per_step[step].values().sum::<u64>();
    let count = |step: &str, op: &str| per_step[step].get(op).copied().unwrap_or(0);
    assert!(
        total("read-small-again") <= 1,
        "{:?}",
        per_step["read-small-again"]
    );
    assert_eq!(count("read-small-again", "READ"), 0);
    assert_eq!(count("read-small-again", "OPEN"), 0, "zero-message open");
    assert_eq!(
        total("exec-busybox-again"),
        0,
        "{:?}",
        per_step["exec-busybox-again"]
    );
    assert!(
        count("read-1mib-readahead", "READ") <= 2,
        "{:?}",
        per_step["read-1mib-readahead"]
    );
    // 1 MiB requests: a 2 MiB write takes a handful of WRITEs, not 512.
    let writes = count("write-2mib", "WRITE");
    assert!((1..=8).contains(&writes), "{writes} WRITEs for 2 MiB");

    // Host side: the guest's writes are there, nothing outside moved.
    let share = &l.share;
    let read = |p: &str| std::fs::read(share.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("guest-wrote.txt"), b"written by the guest\nappended\n");
    let big = read("guest-big.bin");
    assert_eq!(big.len(), 2 << 20);
    assert!(big.iter().enumerate().all(|(i, &b)| b == pattern(i)));
    assert_eq!(read("moved"), b"x");
    assert!(share.join("newdir").is_dir() && !share.join("doomed").exists());
    assert_eq!(
        std::fs::read_link(share.join("link-to-small")).unwrap(),
        Path::new("small.txt")
    );
    assert_eq!(
        std::fs::metadata(share.join("hardlink")).unwrap().ino(),
        std::fs::metadata(share.join("small.txt")).unwrap().ino()
    );
    for name in ["sda", "mem", "kvm"] {
        assert!(!share.join(name).exists(), "device node {name} on the host");
    }
    assert_eq!(
        tree(&l.outside),
        ["secret"],
        "something written outside the share"
    );
    assert_eq!(std::fs::read(l.outside.join("secret")).unwrap(), SECRET);
    assert_eq!(tree(&l.ro), ro_before, "read-only share changed");
    assert_eq!(
        std::fs::read(l.ro.join("file")).unwrap(),
        b"read-only content\n"
    );
    for name in ["escape-1", "escape-2", "escape-3", "escape-4"] {
        let hits: Vec<_> = tree(l.tmp.path())
            .into_iter()
            .filter(|p| p.ends_with(name))
            .collect();
        assert!(hits.is_empty(), "{name} reached the host: {hits:?}");
    }
}

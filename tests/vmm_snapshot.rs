//! Snapshot and restore end to end, on the real guest kernel: a template VM with two vCPUs boots
//! `snapshot_support/guest.rs` as PID 1 with a vsock device and a virtio-fs share it has not
//! mounted, `bulkhead-vmm --snapshot` saves it once the guest accepts on vsock port 1024, and
//! two clones are restored from that one snapshot, each in its own `bulkhead-vmm --restore`
//! process with its own socket, CID and share directory. Each clone must answer over vsock,
//! have the template's memory (the token the template printed and a 4 MiB pattern), see its
//! new CID, see both vCPUs online, mount the share and read its own directory's file, and power
//! off cleanly. Two vCPUs because the pause must stop both before either saves its state (an
//! IPI sent in between was lost and the clone hung); restore takes the vCPU count from the
//! snapshot, so the one template serves every case. A one-vCPU snapshot is made and restored
//! by every shim template elsewhere (`tests/template_vm.rs`, the engine suites: the default VM
//! size is one vCPU), so no second cold boot here. A corrupted, truncated or foreign snapshot
//! (another image, a short memory file) must be refused with one line. Prints save time,
//! memory file size, and restore → answer beside the template's boot and save (restore against
//! cold boot is `bench/docker-run.sh`'s).
//! Gated by `BULKHEAD_E2E=1`; when set, a missing prerequisite fails the test.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::{kernel, repo_root, require, run, vm_needs, vmm_binary};

#[path = "vsock_support/mod.rs"]
mod vsock_support;

use vsock_support::{read_line, try_connect};

/// A boot is ~15-30 s on PVM alone; be generous for busy CI machines.
const BOOT: Duration = Duration::from_secs(600);
const PORT: u32 = 1024;
/// The template's vCPUs, and so every clone's (restore takes them from the snapshot).
const VCPUS: u8 = 2;

/// Builds the guest with the workspace's rustc and packs it as `/init`.
fn guest_initramfs(out: &Path) -> PathBuf {
    let src = "tests/snapshot_support/guest.rs";
    vsock_support::init_initramfs(&repo_root(), src, "snapshot-test-guest", out)
}

/// Sends `line` on a fresh connection and returns the answer, retrying until `deadline`.
fn ask(socket: &Path, line: &str, deadline: Instant, vmm: &mut Child) -> Option<String> {
    while Instant::now() < deadline {
        if let Ok(Some(status)) = vmm.try_wait() {
            panic!("vmm exited early: {status}");
        }
        if let Some(mut s) = try_connect(socket, PORT) {
            s.write_all(format!("{line}\n").as_bytes()).ok()?;
            return read_line(&mut s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn poweroff(socket: &Path, mut vmm: Child) {
    if let Some(s) = try_connect(socket, PORT) {
        let _ = (&s).write_all(b"POWEROFF\n");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = vmm.try_wait().expect("wait") {
            assert!(status.success(), "vmm: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = vmm.kill();
            panic!("vmm did not exit after POWEROFF");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy)]
struct Vmm<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    dir: &'a Path,
}

impl Vmm<'_> {
    fn command(&self, name: &str, cid: u64) -> (Command, PathBuf, PathBuf) {
        let socket = self.dir.join(format!("{name}.sock"));
        let console = self.dir.join(format!("{name}.console"));
        // Each VM's own share, with a file naming it.
        let share = self.dir.join(format!("{name}.share"));
        std::fs::create_dir_all(&share).expect("create the share");
        std::fs::write(share.join("hello"), format!("share of {name}\n")).expect("write hello");
        let mut cmd = Command::new(vmm_binary());
        cmd.arg("--kernel")
            .arg(self.kernel)
            .arg("--initrd")
            .arg(self.initrd)
            .arg("--vsock")
            .arg(&socket)
            .args(["--vsock-cid", &cid.to_string()])
            .args(["--vcpus", &VCPUS.to_string()])
            .arg("--console")
            .arg(&console)
            .arg("--fs")
            .arg(format!("share={}", share.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        (cmd, socket, console)
    }

    /// Starts the VM and measures start → the guest's first `PONG`.
    fn start_until_pong(
        &self,
        name: &str,
        cid: u64,
        extra: &[&std::ffi::OsStr],
    ) -> (Child, PathBuf, Duration) {
        let (mut cmd, socket, console) = self.command(name, cid);
        cmd.args(extra);
        let start = Instant::now();
        let mut child = cmd.spawn().expect("start bulkhead-vmm");
        let pong = ask(&socket, "PING", start + BOOT, &mut child);
        let elapsed = start.elapsed();
        assert_eq!(
            pong.as_deref(),
            Some("PONG"),
            "{name}: {}",
            std::fs::read_to_string(console).unwrap_or_default()
        );
        (child, socket, elapsed)
    }
}

/// `bulkhead-vmm --restore` that must fail: its one-line error.
fn refused(vmm: &Vmm<'_>, name: &str, snapshot: &Path) -> String {
    let (mut cmd, _, _) = vmm.command(name, 9);
    cmd.arg("--restore").arg(snapshot);
    let f = run(&mut cmd, Duration::from_secs(120));
    assert!(!f.status.success(), "{name}: restored a bad snapshot");
    let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name}: not one line: {}", f.stderr);
    lines[0].to_owned()
}

fn copy_snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for f in ["state", "memory"] {
        // cp keeps the memory file sparse.
        let ok = Command::new("cp")
            .arg("--sparse=always")
            .arg(from.join(f))
            .arg(to.join(f))
            .status()
            .expect("run cp")
            .success();
        assert!(ok);
    }
}

#[test]
fn snapshot_restore_two_clones_and_refusals() {
    if !require(&vm_needs()) {
        return;
    }
    let kernel = kernel();
    assert!(
        kernel.exists(),
        "BULKHEAD_E2E=1 but {} is missing",
        kernel.display()
    );
    assert!(
        Path::new("/dev/kvm").exists(),
        "BULKHEAD_E2E=1 but /dev/kvm is missing"
    );
    let tmp = tempfile::tempdir().unwrap();
    let initrd = guest_initramfs(tmp.path());
    let vmm = Vmm {
        kernel: &kernel,
        initrd: &initrd,
        dir: tmp.path(),
    };

    // The template: boots with two vCPUs, is snapshotted once the guest listens, stops.
    let snapshot = tmp.path().join("template");
    let (mut cmd, _, console) = vmm.command("template", 3);
    cmd.arg("--snapshot")
        .arg(&snapshot)
        .args(["--snapshot-port", &PORT.to_string()])
        .stderr(Stdio::piped());
    let f = run(&mut cmd, BOOT);
    assert!(f.status.success(), "template: {}", f.stderr);
    // No cold boot to compare with (~30 s on PVM hosts): the template's own boot and save is
    // one, and bench/docker-run.sh measures restore against boot.
    let template_took = f.elapsed;
    let saved = f
        .stderr
        .lines()
        .find(|l| l.contains("snapshot"))
        .unwrap_or_default()
        .to_owned();
    let text = std::fs::read_to_string(&console).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("SNAPSHOT-TEST-GUEST: token "))
        .unwrap_or_else(|| panic!("template printed no token: {text}"))
        .trim()
        .to_owned();
    let memory = std::fs::metadata(snapshot.join("memory")).unwrap();

    // Two clones of the one snapshot, one after the other, each with its own CID. Each
    // answering at all shows the pause stopped both vCPUs before saving (a lost IPI hung it).
    let mut restores = Vec::new();
    for (name, cid) in [("clone1", 7u64), ("clone2", 8)] {
        let args = [std::ffi::OsStr::new("--restore"), snapshot.as_os_str()];
        let (mut child, socket, took) = vmm.start_until_pong(name, cid, &args);
        restores.push(took);
        let deadline = Instant::now() + Duration::from_secs(60);
        let memo = ask(&socket, "MEMO", deadline, &mut child).unwrap_or_default();
        let words: Vec<&str> = memo.split(' ').collect();
        assert_eq!(words.len(), 4, "{name}: {memo}");
        assert_eq!(words[1], token, "{name}: the template's memory");
        assert_eq!(words[2], words[3], "{name}: 4 MiB pattern intact");
        let cid_line = ask(&socket, "CID", deadline, &mut child).unwrap_or_default();
        assert_eq!(cid_line, format!("CID {cid}"), "{name}: re-read its CID");
        let cpus = ask(&socket, "CPUS", deadline, &mut child).unwrap_or_default();
        assert_eq!(cpus, format!("CPUS {VCPUS}"), "{name}: both vCPUs online");
        let fs = ask(&socket, "FS", deadline, &mut child).unwrap_or_default();
        assert_eq!(fs, format!("FS share of {name}"), "{name}: its own share");
        poweroff(&socket, child);
    }

    // Refusals, each one line.
    let bad = tmp.path().join("corrupt");
    copy_snapshot(&snapshot, &bad);
    let mut state = std::fs::read(bad.join("state")).unwrap();
    let at = state.len() / 2;
    state[at] ^= 0x55;
    std::fs::write(bad.join("state"), &state).unwrap();
    let line = refused(&vmm, "corrupt", &bad);
    assert!(line.contains("checksum mismatch"), "{line}");

    let short = tmp.path().join("short");
    copy_snapshot(&snapshot, &short);
    state.truncate(state.len() - 100);
    std::fs::write(short.join("state"), &state).unwrap();
    let line = refused(&vmm, "truncated", &short);
    assert!(line.contains("truncated"), "{line}");

    let other_initrd = tmp.path().join("other.cpio");
    let mut image = std::fs::read(&initrd).unwrap();
    image.extend_from_slice(&[0; 512]);
    std::fs::write(&other_initrd, image).unwrap();
    let other = Vmm {
        initrd: &other_initrd,
        ..vmm
    };
    let line = refused(&other, "other-image", &snapshot);
    assert!(line.contains("expected image"), "{line}");

    let cut = tmp.path().join("cut");
    copy_snapshot(&snapshot, &cut);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(cut.join("memory"))
        .unwrap();
    f.set_len(memory.len() / 2).unwrap();
    let line = refused(&vmm, "short-memory", &cut);
    assert!(line.contains("memory file is"), "{line}");

    eprintln!("{saved}");
    eprintln!(
        "memory file: {} MiB apparent, {} MiB on disk",
        memory.len() >> 20,
        (memory.blocks() * 512) >> 20
    );
    let secs = |d: &Duration| format!("{:.3} s", d.as_secs_f64());
    eprintln!(
        "start → guest answers over vsock ({VCPUS} vcpus): restore {} and {}; the template's boot until it \
         listened, and its save, {}",
        secs(&restores[0]),
        secs(&restores[1]),
        secs(&template_took)
    );
}

//! Helpers shared by the end-to-end tests.
//!
//! End-to-end tests boot real VMs, which takes tens of seconds on PVM-backed KVM, so they only run
//! when `BULKHEAD_E2E=1` (set by `scripts/test.sh`, which CI runs). `cargo test` alone stays quick;
//! every test says what it needs with [`require`], which skips out loud without `BULKHEAD_E2E=1`
//! and fails with it.

pub mod agent_cases;
pub mod busybox;
pub mod cli;
pub mod engine;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use bulkhead_test_support::{requested, require, require_for, Need, SKIP_MARKER};

/// Where the setup script installs the guest images.
pub const SHARE_DIR: &str = "/usr/local/share/bulkhead";

/// What a test that boots a guest needs: end-to-end tests asked for, `/dev/kvm`, the guest
/// kernel.
pub fn vm_needs() -> [Need; 3] {
    [
        Need::EndToEnd,
        Need::Kvm,
        Need::File(kernel(), "run scripts/setup.sh or set BULKHEAD_KERNEL"),
    ]
}

fn from_env_or_share(var: &str, file: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(SHARE_DIR).join(file))
}

/// The guest kernel (ELF vmlinux): `$BULKHEAD_KERNEL`, else the installed one.
pub fn kernel() -> PathBuf {
    from_env_or_share("BULKHEAD_KERNEL", "vmlinux")
}

/// The guest kernel as a bzImage: `$BULKHEAD_BZIMAGE`, else `bzImage` next to [`kernel`].
pub fn bzimage() -> PathBuf {
    std::env::var_os("BULKHEAD_BZIMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| kernel().with_file_name("bzImage"))
}

/// The VMM boot-test initramfs: `$BULKHEAD_TEST_INITRAMFS`, else the installed one.
pub fn test_initramfs() -> PathBuf {
    from_env_or_share("BULKHEAD_TEST_INITRAMFS", "test-initramfs.cpio")
}

/// The workspace's `target/` directory, found from the running test binary
/// (`target/<profile>/deps/<test>`), or `$CARGO_TARGET_DIR`.
fn target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}

/// A workspace binary: `$BULKHEAD_<NAME>_BIN` if set, else the newest of the debug and release
/// builds in the workspace's target directory (`cargo test --workspace` builds the debug one).
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!("BULKHEAD_{}_BIN", name.replace('-', "_").to_uppercase());
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let target = target_dir().expect("cannot locate the target directory");
    ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!("{name} is not built: run `cargo build -p {name}` (or set {var})")
        })
}

/// The `bulkhead-vmm` binary under test.
pub fn vmm_binary() -> PathBuf {
    workspace_binary("bulkhead-vmm")
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait failed") {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` with stdin closed, capturing its output; kills it and fails the test after
/// `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    let status = wait_with_timeout(&mut child, timeout);
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Runs the shell command `line` on a terminal (under util-linux `script`), with `env` added,
/// and returns its terminal output and `script`'s stderr; fails the test after `timeout`.
///
/// `script`'s stdin is a pipe held open until the command has ended: on a stdin at EOF (such as
/// /dev/null) `script` 2.38 returns with none of the output about one run in five when the
/// command is quick (seen with `podman run -it` on runc).
pub fn in_terminal(line: &str, env: &[(String, String)], timeout: Duration) -> (String, String) {
    let mut child = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run script (util-linux): {e}"));
    let held_open = child.stdin.take();
    let out = drain(child.stdout.take().expect("stdout piped"));
    let err = drain(child.stderr.take().expect("stderr piped"));
    wait_with_timeout(&mut child, timeout);
    drop(held_open);
    (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The `target/<profile>` directory this test binary was built into.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_owned()
}

/// The `bulkhead-agent` binary: `$BULKHEAD_AGENT_BIN`, or built now with the same profile and
/// target directory as the tests (cargo does not build other packages' binaries for tests).
pub fn agent_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BULKHEAD_AGENT_BIN") {
            return PathBuf::from(bin);
        }
        let profile = profile_dir();
        let target = profile.parent().expect("target dir").to_owned();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "-p", "bulkhead-agent"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p bulkhead-agent failed");
        profile.join("bulkhead-agent")
    })
    .clone()
}

/// The agent initramfs with busybox as /bin/sh, for tests that run programs through the agent:
/// `$BULKHEAD_AGENT_TEST_INITRAMFS`, or built now by `images/build-agent-initramfs.sh --test`
/// into this target directory (cargo's cache makes later builds quick).
pub fn agent_test_initramfs() -> PathBuf {
    static CPIO: OnceLock<PathBuf> = OnceLock::new();
    CPIO.get_or_init(|| {
        if let Some(path) = std::env::var_os("BULKHEAD_AGENT_TEST_INITRAMFS") {
            return PathBuf::from(path);
        }
        let target = profile_dir().parent().expect("target dir").to_owned();
        let out = Command::new(repo_root().join("images/build-agent-initramfs.sh"))
            .arg("--test")
            .env("CARGO_TARGET_DIR", &target)
            .stderr(Stdio::inherit())
            .output()
            .expect("run images/build-agent-initramfs.sh");
        assert!(
            out.status.success(),
            "building the agent test initramfs failed"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("script prints the path")
                .trim(),
        )
    })
    .clone()
}

/// Removes the (empty) cgroup directory `name` below the root of every hierarchy: runtimes
/// remove a container's own group, not the parents its `cgroupsPath` or an engine's namespace
/// made, so a test that names such a parent removes it when it is done.
pub fn remove_cgroup_dirs(name: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(name)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Calls [`remove_cgroup_dirs`] when dropped (also when the test fails).
pub struct CgroupDirs(pub String);

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        remove_cgroup_dirs(&self.0);
    }
}

//! Driving the shipped `bulkhead` binary like an engine does, with real micro-VMs: a private
//! `--root`, a config naming the installed (or freshly built) guest kernel and agent initramfs,
//! and console logs in the test's own directory.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{kernel, repo_root, workspace_binary, SHARE_DIR};

/// The production agent initramfs: `$BULKHEAD_AGENT_INITRAMFS`, else the installed one, else
/// built now by `images/build-agent-initramfs.sh`.
pub fn agent_initramfs() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_AGENT_INITRAMFS") {
        return PathBuf::from(p);
    }
    let installed = Path::new(SHARE_DIR).join("agent-initramfs.cpio");
    if installed.exists() {
        return installed;
    }
    let o = Command::new(repo_root().join("images/build-agent-initramfs.sh"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "agent initramfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// Waits for a child (or, as a subreaper, an orphaned descendant) and returns its status the
/// way a shell shows it (128 + signal when killed).
pub fn wait_status(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) => continue,
            Err(e) => panic!("waitpid {pid}: {e}"),
        }
    }
}

/// Waits until `file` contains `what`; the contents. Waiting past `patience` is a failure.
pub fn wait_for_text(file: &Path, what: &str, patience: std::time::Duration) -> String {
    let t = std::time::Instant::now();
    loop {
        let text = fs::read_to_string(file).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            t.elapsed() < patience,
            "no {what:?} in {}: {text:?}",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Makes this process a child subreaper (once), as containerd's shim and conmon are, so it can
/// wait for the monitors whose pids `create` writes.
pub fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0);
    });
}

/// Runs `cmd` with stdout and stderr in files (`<base>.stdout`/`.stderr`, or both in `both`),
/// waits for it to exit — not for EOF: monitors and exec'd processes it leaves behind inherit
/// the files — and returns what it wrote.
pub fn output_via_files(mut cmd: Command, base: &Path, both: Option<&Path>) -> Output {
    let (out_path, err_path) = match both {
        Some(p) => (p.to_path_buf(), p.to_path_buf()),
        None => (base.with_extension("stdout"), base.with_extension("stderr")),
    };
    let out = fs::File::create(&out_path).unwrap();
    let err = if both.is_some() {
        out.try_clone().unwrap()
    } else {
        fs::File::create(&err_path).unwrap()
    };
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap();
    let stdout = fs::read(&out_path).unwrap();
    let stderr = if both.is_some() {
        stdout.clone()
    } else {
        fs::read(&err_path).unwrap()
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The `bulkhead` CLI with its own root, config and log directory under a temporary directory.
pub struct Cli {
    pub tmp: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Cli {
    /// A CLI whose containers boot the guest kernel with the production agent initramfs.
    pub fn new() -> Cli {
        Cli::with_config("")
    }

    /// Like [`Cli::new`], with `extra` lines appended to its config.toml.
    pub fn with_config(extra: &str) -> Cli {
        let tmp = tempfile::tempdir().unwrap();
        // The test's images and log directory, unless `extra` names its own.
        let defaults = [
            ("kernel", kernel()),
            ("initramfs", agent_initramfs()),
            ("log_dir", tmp.path().join("logs")),
        ];
        let mut config = String::new();
        for (key, value) in defaults {
            if !extra.lines().any(|l| l.starts_with(&format!("{key} ="))) {
                config += &format!("{key} = {:?}\n", value.display().to_string());
            }
        }
        config += extra;
        fs::write(tmp.path().join("config.toml"), config).unwrap();
        Cli {
            tmp,
            bin: workspace_binary("bulkhead"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("BULKHEAD_CONFIG", self.dir().join("config.toml"))
            .arg("--root")
            .arg(self.dir().join("root"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs with stdout and stderr in the file `out`: monitors and exec'd processes inherit it
    /// and may write to it after the command returned.
    pub fn run_to(&self, args: &[&str], out: &Path) -> Output {
        output_via_files(self.cmd(args), out, Some(out))
    }

    /// Runs to completion; exit code and combined output.
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let n = fs::read_dir(self.dir()).unwrap().count();
        let o = self.run_to(args, &self.dir().join(format!("out-{n}")));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// `create --bundle B --pid-file … ID` with the init's output going to `out`; the monitor's
    /// pid on success.
    pub fn create(&self, id: &str, bundle: &Path, out: &Path) -> Result<i32, String> {
        let pid_file = self.dir().join(format!("{id}.pid"));
        let o = self.run_to(
            &[
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                id,
            ],
            out,
        );
        if !o.status.success() {
            return Err(format!(
                "create: {}\nconsole: {}",
                String::from_utf8_lossy(&o.stdout),
                self.console(id)
            ));
        }
        Ok(fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap())
    }

    /// The guest console log of container `id` (empty if no VM was ever started).
    pub fn console(&self, id: &str) -> String {
        fs::read_to_string(self.console_path(id)).unwrap_or_default()
    }

    pub fn console_path(&self, id: &str) -> PathBuf {
        let name = bulkhead_protocol::id_file_name(id);
        self.dir().join(format!("logs/{name}.console.log"))
    }

    /// Every file in this CLI's log directory: what a check that a log is gone must look at,
    /// rather than one name the test derives from the implementation's naming.
    pub fn log_files(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir().join("logs"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The monitor's phase timings of container `id`, as JSON text (written with
    /// `keep_logs = true` only).
    pub fn timings(&self, id: &str) -> String {
        fs::read_to_string(self.dir().join(format!("logs/{id}.timings.json"))).unwrap_or_default()
    }

    /// Nothing of container `id` is left: no state directory, no mounts under our directory.
    pub fn assert_gone(&self, id: &str) {
        let name = bulkhead_protocol::id_file_name(id);
        assert!(!self.dir().join("root").join(&*name).exists(), "state left");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.dir().to_str().unwrap()),
            "mounts left under {}",
            self.dir().display()
        );
    }
}

/// A failed test must not leave its VMs behind: whatever is still under the root is
/// force-deleted (kills the monitor, unmounts the share, removes the state). Directory names
/// are not always ids (long ids get short names), so the ids come from the state files.
impl Drop for Cli {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(self.dir().join("root")) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let state = fs::read(e.path().join("state.json")).unwrap_or_default();
            let id = serde_json::from_slice::<serde_json::Value>(&state)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .or_else(|| e.file_name().to_str().map(str::to_string));
            if let Some(id) = id {
                let _ = self
                    .cmd(&["delete", "--force", &id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A busybox rootfs at `dir` (every applet linked, `/etc/passwd` with root and uid 1000), for
/// bundles of the CLI tests.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is not installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n";
    fs::write(dir.join("etc/passwd"), passwd).unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    dir.to_path_buf()
}

impl Default for Cli {
    fn default() -> Self {
        Cli::new()
    }
}

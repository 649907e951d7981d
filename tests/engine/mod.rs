//! Driving container engines (Docker, podman, containerd's `ctr`) against runc and Bulkhead.
//!
//! Each engine suite is a `libtest-mimic` main (`harness = false`): every case is a named trial
//! that reports on its own, the trials run in order on one thread and share one engine started
//! by the first of them ([`Shared`]); the runc half runs first (it proves the cases), then the
//! Bulkhead half, then the "nothing left behind" checks. See [`suite::run`].

pub mod cases;
pub mod dockerd;
pub mod netns;
pub mod network_cases;
pub mod podman;
pub mod suite;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one engine command may take before the test fails: a guest boot is ~30 s on an
/// idle PVM host and several times that on a slow or busy one. Only turns a hang into a
/// failure; no case measures speed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` with stdin closed and its output captured; fails the test after
/// [`COMMAND_TIMEOUT`].
pub fn output(cmd: &mut Command) -> Output {
    let f = crate::run(cmd, COMMAND_TIMEOUT);
    Output {
        status: f.status,
        stdout: f.stdout.into_bytes(),
        stderr: f.stderr.into_bytes(),
    }
}

/// Pids of the processes running `exe` (monitors and exec proxies are forks of it).
pub fn processes_of(exe: &Path) -> Vec<i32> {
    let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
                .collect()
        })
        .unwrap_or_default()
}

/// A private copy of the `bulkhead` binary in `dir`: the suites' "no bulkhead process left"
/// checks look for processes of *this* file, so suites running side by side (and other
/// people's containers on the machine) never count against each other.
pub fn private_bulkhead(dir: &Path) -> PathBuf {
    let copy = dir.join("bulkhead");
    fs::copy(crate::workspace_binary("bulkhead"), &copy)
        .unwrap_or_else(|e| panic!("copy bulkhead to {}: {e}", copy.display()));
    copy
}

/// A runtime that is `bin` with a config naming a guest kernel that does not exist (engines
/// pass no environment through to runtimes, so a wrapper script sets it).
pub fn broken_runtime(dir: &Path, bin: &Path) -> PathBuf {
    let cfg = dir.join("broken.toml");
    fs::write(&cfg, "kernel = \"/nonexistent/vmlinux\"\n").expect("write broken.toml");
    let wrapper = dir.join("bulkhead-broken");
    let script = format!(
        "#!/bin/sh\nBULKHEAD_CONFIG={} exec {} \"$@\"\n",
        cfg.display(),
        bin.display()
    );
    fs::write(&wrapper, script).expect("write the wrapper");
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the wrapper");
    wrapper
}

/// Stops a daemon we started: SIGTERM, up to a minute to finish, then SIGKILL.
pub fn stop_daemon(child: &mut Child) {
    // SAFETY: kill(2) on a child we have not reaped yet, so its pid is still ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Share mounts (`…/share/rootfs`) of runtime state under `root` still visible here.
pub fn share_mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/share/rootfs") && l.contains(&root))
        .map(String::from)
        .collect()
}

/// How to drive one engine's docker-compatible CLI (docker, podman).
pub struct EngineCli {
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
    /// Global flags before the subcommand.
    pub global: Vec<String>,
    /// podman takes `--runtime` as a global flag, docker as a `run` flag.
    pub runtime_is_global: bool,
    /// Extra `run` flags the engine needs on this host.
    pub run_extra: Vec<String>,
    /// A directory for volumes.
    pub scratch: PathBuf,
}

impl EngineCli {
    fn args(&self, runtime: &str, args: &[&str]) -> Vec<String> {
        let mut v = self.global.clone();
        if self.runtime_is_global {
            v.extend(["--runtime".to_string(), runtime.to_string()]);
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    pub fn command(&self, runtime: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.args(self.args(runtime, args))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null());
        c
    }

    /// Runs the engine command; fails the test after [`COMMAND_TIMEOUT`]. An attached `run`
    /// that podman could not attach to runs once more: podman 4.3 loses the race with a
    /// container that ends before it connects to conmon's attach socket ("failed to connect to
    /// container's attach socket: …: no such file or directory"), seen with runc too; the
    /// container's own output never reached the test, so there is nothing to check in it.
    pub fn output(&self, runtime: &str, args: &[&str]) -> Output {
        let o = output(&mut self.command(runtime, args));
        let lost_attach = args.first() == Some(&"run")
            && !args.contains(&"-d")
            && text(&o.stderr).contains("failed to connect to container's attach socket");
        if lost_attach {
            eprintln!(
                "{} lost the attach race; running it once more",
                self.program.display()
            );
            return output(&mut self.command(runtime, args));
        }
        o
    }

    /// `run MODE [--runtime R] EXTRA… ARGS…`.
    pub fn run_args<'a>(
        &'a self,
        runtime: &'a str,
        mode: &'a str,
        args: &[&'a str],
    ) -> Vec<&'a str> {
        let mut v = vec!["run", mode];
        if !self.runtime_is_global {
            v.extend(["--runtime", runtime]);
        }
        v.extend(self.run_extra.iter().map(String::as_str));
        v.extend_from_slice(args);
        v
    }

    /// Runs the engine with `args` on a terminal; its terminal output and `script`'s stderr.
    pub fn in_terminal(&self, runtime: &str, args: &[&str]) -> (String, String) {
        let line = self.shell_line(runtime, args);
        crate::in_terminal(&line, &self.env, COMMAND_TIMEOUT)
    }

    /// A shell command line (for `script`, which needs a terminal program to run).
    pub fn shell_line(&self, runtime: &str, args: &[&str]) -> String {
        let mut parts = vec![self.program.display().to_string()];
        parts.extend(self.args(runtime, args));
        parts
            .iter()
            .map(|p| format!("'{}'", p.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

//! The shipped `bulkhead` binary runs a container in a real micro-VM (issue 5): `create`
//! (pid file, stdout relayed), `state`, `start`, `exec` (reading and writing a bind-mounted
//! volume through the virtio-fs share), `kill` (the monitor exits 137), `delete`, and nothing
//! left behind. One guest boot (~1.5 min on PVM-backed KVM). Gated by `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bulkhead_tests::{e2e_enabled, kernel, repo_root, workspace_binary, SHARE_DIR};
use serde_json::json;

fn agent_initramfs() -> PathBuf {
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

fn wait_status(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, c) => return c,
            WaitStatus::Signaled(_, s, _) => return 128 + s as i32,
            _ => continue,
        }
    }
}

struct Rt {
    tmp: tempfile::TempDir,
    bin: PathBuf,
}

impl Rt {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("BULKHEAD_CONFIG", self.tmp.path().join("config.toml"))
            .arg("--root")
            .arg(self.tmp.path().join("root"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Output in a file: the monitor and exec'd processes inherit it.
    fn run_to(&self, args: &[&str], out: &Path) -> Output {
        let f = fs::File::create(out).unwrap();
        let status = self
            .cmd(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .status()
            .unwrap();
        let text = fs::read(out).unwrap();
        Output {
            status,
            stdout: text.clone(),
            stderr: text,
        }
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let n = fs::read_dir(self.tmp.path()).unwrap().count();
        let o = self.run_to(args, &self.tmp.path().join(format!("out-{n}")));
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }
}

/// Ignored in the default run: on this PVM host 1 of 3 runs saw the guest misbehave (a busybox
/// segfault, an exec'd process killed) — being investigated with the guest/VMM owners. Run it
/// with `BULKHEAD_E2E=1 cargo test -p bulkhead-tests --test shim_cli -- --ignored`.
#[test]
#[ignore = "guest flakiness on PVM hosts; run with --ignored"]
fn bulkhead_runs_a_container_in_a_micro_vm() {
    if !e2e_enabled("bulkhead_runs_a_container_in_a_micro_vm") {
        return;
    }
    // SAFETY: prctl with integer arguments only; we reap the monitor like an engine.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let config = format!(
        "kernel = {:?}\ninitramfs = {:?}\nlog_dir = {:?}\n",
        kernel().display().to_string(),
        agent_initramfs().display().to_string(),
        d.join("logs").display().to_string()
    );
    fs::write(d.join("config.toml"), config).unwrap();
    let rt = Rt {
        tmp,
        bin: workspace_binary("bulkhead"),
    };

    // Bundle: a busybox rootfs and a volume.
    let rootfs = d.join("bundle/rootfs");
    for sub in ["bin", "etc", "tmp", "proc", "dev", "data"] {
        fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static is not installed");
    for applet in ["sh", "uname"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let vol = d.join("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("in"), "from host\n").unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", "echo init $$; exec busybox sleep 1000"],
                    "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "vm",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    });
    fs::write(d.join("bundle/config.json"), spec.to_string()).unwrap();

    let out = d.join("init.out");
    let pid_file = d.join("c.pid");
    let o = rt.run_to(
        &[
            "create",
            "--bundle",
            d.join("bundle").to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c",
        ],
        &out,
    );
    assert!(
        o.status.success(),
        "create: {}\nconsole: {}",
        String::from_utf8_lossy(&o.stdout),
        fs::read_to_string(d.join("logs/c.console.log")).unwrap_or_default()
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, state) = rt.run(&["state", "c"]);
    assert_eq!(code, Some(0));
    assert!(state.contains("\"created\""), "{state}");
    assert_eq!(rt.run(&["start", "c"]).0, Some(0));

    let diag = || {
        format!(
            "init output: {:?}\nstate: {}\nconsole tail: {}",
            fs::read_to_string(&out).unwrap_or_default(),
            rt.run(&["state", "c"]).1,
            fs::read_to_string(d.join("logs/c.console.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let (code, text) = rt.run(&["exec", "c", "busybox", "cat", "/data/in"]);
    assert_eq!(
        (code, text.as_str()),
        (Some(0), "from host\n"),
        "{}",
        diag()
    );
    let (code, _) = rt.run(&[
        "exec",
        "c",
        "sh",
        "-c",
        "echo from guest > /data/out; exit 5",
    ]);
    assert_eq!(code, Some(5), "{}", diag());
    assert_eq!(fs::read_to_string(vol.join("out")).unwrap(), "from guest\n");
    let host = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .into_owned();
    let (code, release) = rt.run(&["exec", "c", "uname", "-r"]);
    assert_eq!(code, Some(0), "{release}");
    assert!(
        !release.trim().is_empty() && release != host,
        "guest kernel {release:?}"
    );

    assert_eq!(rt.run(&["kill", "c", "KILL"]).0, Some(0));
    assert_eq!(wait_status(pid), 137);
    let init = fs::read_to_string(&out).unwrap();
    assert!(init.ends_with("init 1\n"), "init said {init:?}");
    assert_eq!(rt.run(&["delete", "c"]).0, Some(0));
    assert!(!d.join("root/c").exists());
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(d.to_str().unwrap()));
    eprintln!(
        "timings: {}",
        fs::read_to_string(d.join("logs/c.timings.json")).unwrap_or_default()
    );
}

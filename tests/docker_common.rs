//! A private `dockerd` for the Docker tests: its own data root, exec root, socket and containerd
//! namespace under a temporary directory, `--iptables=false --bridge=none`, with Bulkhead added
//! as runtime `bulkhead`, and a busybox image imported from Debian's busybox-static. Stopped (and
//! its directory removed) when dropped.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "bulkhead-busybox:test";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client matching the daemon (another `docker` may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";

pub fn docker_available() -> bool {
    Path::new(DOCKERD).exists() && Path::new(DOCKER).exists()
}

/// Installs Debian's docker.io when missing (the test setup's job, as the issue asks).
pub fn ensure_docker() -> bool {
    if docker_available() {
        return true;
    }
    eprintln!("installing docker.io (apt-get)");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "docker.io",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok && docker_available()
}

pub struct Dockerd {
    pub dir: tempfile::TempDir,
    child: Child,
    pub namespace: String,
}

impl Dockerd {
    /// Starts dockerd with `bulkhead` registered as runtime `bulkhead`, and `bulkhead-broken`: the
    /// same binary with a config naming a guest kernel that does not exist (engines pass no
    /// environment through to runtimes, so a wrapper script sets it). Imports the test image.
    pub fn start(bulkhead: &Path) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("bh-docker")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let broken_cfg = d.join("broken.toml");
        fs::write(&broken_cfg, "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
        let wrapper = d.join("bulkhead-broken");
        let script = format!(
            "#!/bin/sh\nBULKHEAD_CONFIG={} exec {} \"$@\"\n",
            broken_cfg.display(),
            bulkhead.display()
        );
        fs::write(&wrapper, script).unwrap();
        fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let namespace = format!("bhtest{}", std::process::id());
        let log = fs::File::create(d.join("dockerd.log")).unwrap();
        // Not the host's /etc/docker/daemon.json: it may register `bulkhead` too (setup does).
        fs::write(d.join("daemon.json"), "{}\n").unwrap();
        let child = Command::new(DOCKERD)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .args([
                "--containerd-namespace",
                &namespace,
                "--containerd-plugins-namespace",
                &format!("{namespace}p"),
            ])
            .arg("--add-runtime")
            .arg(format!("bulkhead={}", bulkhead.display()))
            .arg("--add-runtime")
            .arg(format!("bulkhead-broken={}", wrapper.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dockerd = Dockerd {
            dir,
            child,
            namespace,
        };
        let t = Instant::now();
        while !dockerd.docker(&["info"]).status.success() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not start: {}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd.import_busybox();
        dockerd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.path().join("docker.sock").display()),
        )
        .args(args);
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    fn import_busybox(&self) {
        let tar = busybox_tar(self.dir.path());
        let o = self.docker(&[
            "import",
            "-c",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            IMAGE,
        ]);
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The docker CLI of this daemon, for [`suite`].
    pub fn cli(&self) -> EngineCli {
        EngineCli {
            program: DOCKER.into(),
            env: vec![(
                "DOCKER_HOST".into(),
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )],
            global: Vec::new(),
            runtime_is_global: false,
            run_extra: Vec::new(),
            scratch: self.dir.path().to_path_buf(),
        }
    }

    /// containerd's state directory for our namespace's runc-v2 tasks (`--root` of the runtime).
    pub fn runtime_root(&self) -> PathBuf {
        PathBuf::from("/run/containerd/runc").join(&self.namespace)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "-v"]);
        // containerd's (empty) per-namespace runtime root outlives the daemon otherwise.
        let _ = fs::remove_dir(self.runtime_root());
        // SAFETY: kill(2) on the dockerd we started; it stops its containerd and unmounts.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pids of the processes running `exe` (monitors and exec proxies are forks of it).
pub fn processes_of(exe: &Path) -> Vec<i32> {
    let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
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

    pub fn output(&self, runtime: &str, args: &[&str]) -> Output {
        self.command(runtime, args).output().unwrap()
    }

    fn run_args<'a>(&'a self, runtime: &'a str, mode: &'a str, args: &[&'a str]) -> Vec<&'a str> {
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
        bulkhead_tests::in_terminal(&line, &self.env, Duration::from_secs(300))
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

struct Case<'a> {
    e: &'a EngineCli,
    runtime: &'a str,
}

impl Case<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.e
            .output(self.runtime, &self.e.run_args(self.runtime, "--rm", args))
    }

    fn out(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.runtime,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    fn code(&self, args: &[&str]) -> Option<i32> {
        self.run(args).status.code()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.e.output(self.runtime, args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.runtime,
            text(&o.stderr)
        );
        text(&o.stdout).trim().to_string()
    }

    fn detached(&self, args: &[&str]) -> String {
        let o = self
            .e
            .output(self.runtime, &self.e.run_args(self.runtime, "-d", args));
        assert!(
            o.status.success(),
            "{} run -d {args:?}: {}",
            self.runtime,
            text(&o.stderr)
        );
        text(&o.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    }
}

/// The issue-5 cases, for any engine and runtime. `guest_kernel`: the container must see a
/// kernel other than the host's.
pub fn suite(e: &EngineCli, runtime: &str, image: &str, guest_kernel: bool) {
    let c = Case { e, runtime };
    let host_release = text(&Command::new("uname").arg("-r").output().unwrap().stdout);

    // Output, exit codes.
    assert_eq!(c.out(&[image, "echo", "hi"]), "hi\n");
    assert_eq!(c.code(&[image, "true"]), Some(0));
    assert_eq!(c.code(&[image, "sh", "-c", "exit 3"]), Some(3));
    assert_eq!(c.code(&[image, "no-such-command"]), Some(127));

    let release = c.out(&[image, "uname", "-r"]);
    assert_eq!(release != host_release, guest_kernel, "uname -r: {release}");

    // -e, -w, -u.
    assert_eq!(
        c.out(&["-e", "FOO=bar", image, "sh", "-c", "echo $FOO"]),
        "bar\n"
    );
    assert_eq!(c.out(&["-w", "/tmp", image, "pwd"]), "/tmp\n");
    assert_eq!(
        c.out(&[
            "-u",
            "1000:1000",
            image,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)"
        ]),
        "1000:1000\n"
    );

    // -v both directions.
    let vol = e.scratch.join(format!("vol-{}", runtime.replace('/', "_")));
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("from-host"), "host data\n").unwrap();
    let spec = format!("{}:/data", vol.display());
    let both = "cat /data/from-host; echo guest data > /data/from-guest";
    assert_eq!(
        c.out(&["-v", &spec, image, "sh", "-c", both]),
        "host data\n"
    );
    assert_eq!(
        fs::read_to_string(vol.join("from-guest")).unwrap(),
        "guest data\n"
    );

    // --read-only, --cap-drop ALL, --pids-limit, --memory.
    let o = c.run(&["--read-only", image, "touch", "/x"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("Read-only file system"),
        "{}",
        text(&o.stderr)
    );
    let caps = c.out(&[
        "--cap-drop",
        "ALL",
        image,
        "sh",
        "-c",
        "grep CapEff /proc/self/status",
    ]);
    assert_eq!(caps, "CapEff:\t0000000000000000\n");
    let forks = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait";
    assert_ne!(
        c.code(&["--pids-limit", "5", image, "sh", "-c", forks]),
        Some(0),
        "pids limit not enforced"
    );
    // One 48 MiB read buffer that the kernel fills: the fewest guest-kernel instructions per
    // charged page (a guest's page faults are emulated on PVM hosts; ~1 min here).
    let hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"];
    assert_eq!(
        c.code(&[&["--memory", "32m", image][..], &hog].concat()),
        Some(137),
        "OOM kill not reported"
    );

    // -d, logs, exec, exec -it, kill.
    let id = c.detached(&[image, "sh", "-c", "echo started; sleep 1000"]);
    let t = Instant::now();
    while !c.ok(&["logs", &id]).contains("started") {
        assert!(t.elapsed() < Duration::from_secs(120), "no logs");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.ok(&["exec", &id, "echo", "in-exec"]), "in-exec");
    assert_eq!(
        e.output(runtime, &["exec", &id, "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    let (s, err) = e.in_terminal(
        runtime,
        &["exec", "-it", &id, "sh", "-c", "tty; echo tty-ok"],
    );
    assert!(
        s.contains("/dev/pts/") && s.contains("tty-ok"),
        "exec -it: {s} {err}"
    );
    c.ok(&["kill", &id]);
    assert_eq!(c.ok(&["wait", &id]), "137");
    c.ok(&["rm", &id]);

    // run -it: the init's terminal is a /dev/pts/N of the container, /dev/console a bind of it.
    let script = "tty; [ /dev/console -ef \"$(tty)\" ] && echo console-ok; echo run-tty-ok";
    let run_it = e.run_args(runtime, "--rm", &["-it", image, "sh", "-c", script]);
    let (s, err) = e.in_terminal(runtime, &run_it);
    assert!(
        s.contains("/dev/pts/") && s.contains("console-ok") && s.contains("run-tty-ok"),
        "run -it: {s} {err}"
    );

    // stop: SIGTERM honoured…
    let id = c.detached(&[
        image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    c.ok(&["stop", "-t", "60", &id]);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "SIGTERM not honoured"
    );
    assert_eq!(c.ok(&["wait", &id]), "0");
    c.ok(&["rm", &id]);
    // …and SIGKILL after the timeout (a PID 1 without a handler ignores SIGTERM).
    let id = c.detached(&[image, "sleep", "1000"]);
    c.ok(&["stop", "-t", "2", &id]);
    assert_eq!(c.ok(&["wait", &id]), "137");
    c.ok(&["rm", &id]);
}

/// The busybox rootfs tarball, built from Debian's busybox-static into `dir`.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("busybox");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"] {
        fs::create_dir_all(root.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is not installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n";
    fs::write(root.join("etc/passwd"), passwd).unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    let tar = dir.join("busybox.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    tar
}

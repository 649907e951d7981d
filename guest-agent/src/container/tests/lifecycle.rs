//! Exec, pids, pause/resume, stats, signals, destroy, limits, joining namespaces, terminals.

use std::io::Read;
use std::time::Duration;

use bulkhead_test_support::{require, Need};
use nix::sys::signal::Signal;
use oci_spec::runtime::Process;
use serde_json::json;

use super::{base_spec, container_test, controller_available, create, wait, Bundle, Output};
use crate::container::{Container, ContainerError, CreateOptions, Stdio};
use crate::reaper::ExitStatus;

/// Creates and starts a container running `script` (`sleep 1000` is run directly, without a
/// shell, so the init is `sleep` from the start), changed by `tweak`.
fn running(bundle: &Bundle, script: &str, tweak: impl FnOnce(&mut serde_json::Value)) -> Container {
    let mut spec = base_spec(script);
    if script == "sleep 1000" {
        spec["process"]["args"] = json!(["sleep", "1000"]);
    }
    tweak(&mut spec);
    let (stdio, _output) = Output::capture();
    let mut c = create(&spec, &bundle.rootfs, stdio, CreateOptions::default()).unwrap();
    c.start().unwrap();
    c
}

fn process(json: serde_json::Value) -> Process {
    serde_json::from_value(json).unwrap()
}

/// Runs `process` in `c` and returns (status, stdout, stderr).
fn exec(c: &Container, p: serde_json::Value) -> (ExitStatus, String, String) {
    let (stdio, output) = Output::capture();
    let pid = c.exec(&process(p), stdio).unwrap();
    let status = wait(pid);
    let (out, err) = output.finish();
    (status, out, err)
}

container_test! {
    fn exec_joins_the_container_with_its_own_identity() {
        let bundle = Bundle::busybox();
        let mut c = running(&bundle, "sleep 1000", |_| {});
        let (status, out, err) = exec(&c, json!({
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [20]},
            "args": ["sh", "-c", "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; id -u; id -G; pwd; \
                     echo $X; hostname; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
                     grep ^0:: /proc/self/cgroup; ls /proc > /tmp/l; grep -c '^[0-9]' /tmp/l"],
            "env": ["PATH=/bin", "X=y"],
            "cwd": "/tmp",
            "noNewPrivileges": true,
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        }));
        assert_eq!(status, ExitStatus::Exited(0), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_ne!(lines[0], "1", "exec'd shell must not be the init");
        assert_eq!(
            &lines[1..],
            [
                "sleep 1000 ", "1000", "1000 20", "/tmp", "y", "bulkhead",
                "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "0::/",
                // init, the shell and ls: the shell sees the container's pid namespace.
                "3"
            ]
        );
        // The thread that cloned it went back to its own pid namespace for its next children.
        let ns = |n: &str| std::fs::read_link(format!("/proc/thread-self/ns/{n}")).unwrap();
        assert_eq!(ns("pid_for_children"), ns("pid"));
        // Without capabilities in the exec spec, the container's apply (Docker's list here).
        let (_, out, _) = exec(&c, json!({
            "user": {"uid": 0, "gid": 0}, "args": ["grep", "^CapBnd", "/proc/self/status"],
            "env": ["PATH=/bin"], "cwd": "/"
        }));
        assert_eq!(out, "CapBnd:\t00000000a80425fb\n");
        // Exec errors use runc's wording too.
        let (stdio, _o) = Output::capture();
        let err = c
            .exec(&process(json!({"user": {"uid": 0, "gid": 0}, "args": ["nope"], "env": ["PATH=/bin"], "cwd": "/"})), stdio)
            .unwrap_err();
        assert_eq!(err.to_string(), "exec: \"nope\": executable file not found in $PATH");
        // A child that failed after the clone left the thread in its own pid namespace too.
        assert_eq!(ns("pid_for_children"), ns("pid"));
        c.signal_all(Signal::SIGKILL).unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Signaled(9));
        c.destroy().unwrap();
    }
}

container_test! {
    fn exec_works_without_pivot_root() {
        let bundle = Bundle::busybox();
        let mut spec = base_spec("");
        spec["process"]["args"] = json!(["sleep", "1000"]);
        spec["root"]["readonly"] = json!(true);
        let (stdio, _output) = Output::capture();
        let opts = CreateOptions { force_no_pivot: true };
        let mut c = create(&spec, &bundle.rootfs, stdio, opts).unwrap();
        c.start().unwrap();
        let (status, out, err) = exec(&c, json!({
            "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "ls /; cat /proc/1/cmdline"],
            "env": ["PATH=/bin"], "cwd": "/"
        }));
        assert_eq!(status, ExitStatus::Exited(0), "{err}");
        assert_eq!(out, "bin\ndev\netc\nhome\nmnt\nproc\nroot\nsys\ntmp\nsleep\u{0}1000\u{0}");
        c.destroy().unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Signaled(9));
    }
}

/// Waits until `cond` holds; a generous bound turns a hang into a failure, never a speed
/// assumption.
fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

container_test! {
    fn pids_pause_resume_stats_and_destroy() {
        let bundle = Bundle::busybox();
        let volume = bundle.host_dir("count");
        let mut c = running(
            &bundle,
            "i=0; while true; do i=$((i+1)); echo $i > /data/n; usleep 20000; done",
            |s| {
                s["mounts"].as_array_mut().unwrap().push(
                    json!({"destination": "/data", "type": "bind", "source": volume, "options": ["rbind"]}),
                );
            },
        );
        let count = || std::fs::read_to_string(volume.join("n")).unwrap_or_default();
        until(|| !count().is_empty(), "the loop never wrote");
        let pids = c.pids().unwrap();
        assert!(pids.contains(&c.init_pid()), "{pids:?}");

        c.pause().unwrap();
        assert!(c.is_paused().unwrap());
        let frozen = count();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(count(), frozen, "a paused container kept running");
        let (stdio, _o) = Output::capture();
        let p = process(json!({"user": {"uid": 0, "gid": 0}, "args": ["true"], "cwd": "/"}));
        assert!(matches!(c.exec(&p, stdio), Err(ContainerError::Paused)));
        c.resume().unwrap();
        until(|| count() != frozen, "a resumed container stayed frozen");

        let stats = c.stats().unwrap();
        assert!(stats.cpu.usage_usec > 0, "{stats:?}");
        assert!(stats.cpu.user_usec + stats.cpu.system_usec > 0, "{stats:?}");
        assert_eq!(stats.memory.is_some(), controller_available("memory"));
        if let Some(m) = &stats.memory {
            assert!(m.usage > 0 && m.limit == crate::container::NO_LIMIT, "{m:?}");
        }
        assert_eq!(stats.pids.is_some(), controller_available("pids"));
        if let Some(p) = stats.pids {
            assert!(p.current >= 1, "{p:?}");
        }

        let cgroup = c.cgroup.as_ref().unwrap().path().to_path_buf();
        let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        c.destroy().unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Signaled(9));
        assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
        let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts_before, mounts_after);
        assert!(!mounts_after.contains(bundle.rootfs.to_str().unwrap()));
        assert!(matches!(c.pids(), Err(ContainerError::NotRunning)));
        c.destroy().unwrap();
    }
}

container_test! {
    fn signals_reach_every_process() {
        let bundle = Bundle::busybox();
        // The init traps TERM (an init only gets signals it handles) and reports it.
        let mut spec = base_spec("trap 'echo got-term; exit 3' TERM; sleep 1000 & wait");
        spec["process"]["args"] = json!(["sh", "-c", spec["process"]["args"][2]]);
        let (stdio, output) = Output::capture();
        let mut c = create(&spec, &bundle.rootfs, stdio, CreateOptions::default()).unwrap();
        c.start().unwrap();
        // Two processes: the shell has set its trap and started sleep.
        until(|| c.pids().unwrap().len() == 2, "sleep never started");
        c.signal_all(Signal::SIGTERM).unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Exited(3));
        assert_eq!(output.finish().0, "got-term\n");
        c.destroy().unwrap();
    }
}

container_test! {
    fn memory_limit_oom_kills() {
        if !require(&[Need::CgroupV2Controller("memory")]) {
            return;
        }
        let bundle = Bundle::busybox();
        let mut spec = base_spec("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived");
        spec["linux"]["resources"] = json!({"memory": {"limit": 33554432, "swap": 33554432}});
        let (stdio, output) = Output::capture();
        let mut c = create(&spec, &bundle.rootfs, stdio, CreateOptions::default()).unwrap();
        assert_eq!(c.stats().unwrap().memory.unwrap().limit, 33554432);
        c.start().unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Signaled(9));
        assert_eq!(output.finish().0, "");
        c.destroy().unwrap();
    }
}

container_test! {
    fn resources_reach_the_cgroup() {
        let bundle = Bundle::busybox();
        let mut c = running(&bundle, "sleep 1000", |_| {});
        let cgroup = c.cgroup.as_ref().unwrap().path().to_path_buf();
        if controller_available("pids") {
            c.update(&serde_json::from_value(json!({"pids": {"limit": 5}})).unwrap()).unwrap();
            assert_eq!(std::fs::read_to_string(cgroup.join("pids.max")).unwrap(), "5\n");
        } else {
            // The file is missing without the controller: the error says which.
            let err = c
                .update(&serde_json::from_value(json!({"pids": {"limit": 5}})).unwrap())
                .unwrap_err();
            assert_eq!(
                std::error::Error::source(&err).unwrap().to_string(),
                format!("write {}", cgroup.join("pids.max").display())
            );
        }
        c.destroy().unwrap();
    }
}

container_test! {
    fn a_pid_namespace_can_be_joined_by_path() {
        let bundle = Bundle::busybox();
        let mut first = running(&bundle, "sleep 1000", |_| {});
        let ns = format!("/proc/{}/ns/pid", first.init_pid());
        let mut spec = base_spec("echo $$; ls /proc > /tmp/l; grep -c '^[0-9]' /tmp/l");
        for n in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "pid" {
                n["path"] = json!(ns);
            }
        }
        let done = super::run(&spec, &bundle);
        assert_eq!(done.status, ExitStatus::Exited(0), "{}", done.stderr);
        let lines: Vec<&str> = done.stdout.lines().collect();
        assert_ne!(lines[0], "1");
        // The first container's init, this shell and ls.
        assert_eq!(lines[1], "3");
        first.destroy().unwrap();
    }
}

container_test! {
    /// As runc: the init's terminal is a pty of the container's own devpts, `/dev/console` is
    /// a bind of it, and its master comes back from `take_console`.
    fn a_terminal_becomes_the_controlling_tty() {
        let bundle = Bundle::busybox();
        let (_agent_master, slave) = pty();
        let spec = {
            let mut s = base_spec("tty; stty size; readlink /proc/self/fd/0; ls -l /dev/console | cut -c1; \
                                   [ /dev/console -ef /dev/pts/0 ] && echo console-is-pts0");
            s["process"]["terminal"] = json!(true);
            s["process"]["consoleSize"] = json!({"height": 30, "width": 100});
            s
        };
        let mut c = create(&spec, &bundle.rootfs, Stdio::Terminal(slave), CreateOptions::default()).unwrap();
        let master = c.take_console().expect("a pty of the container's devpts");
        c.start().unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Exited(0));
        let out = read_master(master);
        assert_eq!(out, "/dev/pts/0\n30 100\n/dev/pts/0\nc\nconsole-is-pts0\n");
        c.destroy().unwrap();
    }
}

container_test! {
    /// Without a devpts of its own the container keeps the agent's pty (`tty` then finds it
    /// only as `/dev/console`).
    fn a_terminal_without_a_container_devpts_is_the_agents() {
        let bundle = Bundle::busybox();
        let (master, slave) = pty();
        let spec = {
            let mut s = base_spec("tty; stty size");
            s["process"]["terminal"] = json!(true);
            s["process"]["consoleSize"] = json!({"height": 30, "width": 100});
            let mounts = s["mounts"].as_array_mut().unwrap();
            mounts.retain(|m| m["destination"] != "/dev/pts");
            s
        };
        let mut c = create(&spec, &bundle.rootfs, Stdio::Terminal(slave), CreateOptions::default()).unwrap();
        assert!(c.take_console().is_none());
        c.start().unwrap();
        assert_eq!(wait(c.init_pid()), ExitStatus::Exited(0));
        let mut out = String::new();
        let mut master = std::fs::File::from(master);
        // EIO once the slave side is closed.
        let _ = master.read_to_string(&mut out);
        assert_eq!(out.replace("\r\n", "\n"), "/dev/console\n30 100\n");
        c.destroy().unwrap();
    }
}

/// Everything written to a (possibly non-blocking) pty master until the slave side closes.
fn read_master(master: std::os::fd::OwnedFd) -> String {
    let mut out = Vec::new();
    let mut master = std::fs::File::from(master);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    // Non-blocking master: EAGAIN until the output is there, EIO once the slave is closed.
    while std::time::Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).replace("\r\n", "\n")
}

container_test! {
    /// An exec'd terminal from the container's own devpts is a `/dev/pts/N` in there.
    fn an_exec_terminal_comes_from_the_containers_devpts() {
        let bundle = Bundle::busybox();
        let mut c = running(&bundle, "sleep 1000", |_| {});
        let ptmx = c.ptmx().expect("the container has its own devpts");
        let pty = crate::process::pty::open_pty(Some((24, 80)), Some(ptmx)).unwrap();
        let pid = c
            .exec(
                &process(json!({"args": ["sh", "-c", "tty; stty size"], "env": ["PATH=/bin"],
                                "user": {"uid": 0, "gid": 0},
                                "cwd": "/", "terminal": true})),
                Stdio::Terminal(pty.slave),
            )
            .unwrap();
        assert_eq!(wait(pid), ExitStatus::Exited(0));
        let out = read_master(pty.master);
        assert!(out.starts_with("/dev/pts/") && out.ends_with("24 80\n"), "{out:?}");
        c.destroy().unwrap();
    }
}

/// A pty pair (master, slave); the slave is opened with O_NOCTTY.
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use nix::fcntl::OFlag;
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).unwrap();
    nix::pty::grantpt(&master).unwrap();
    nix::pty::unlockpt(&master).unwrap();
    // SAFETY: ptsname is not thread-safe; this test process has no other thread calling it.
    let name = unsafe { nix::pty::ptsname(&master) }.unwrap();
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    // SAFETY: posix_openpt returned a new descriptor we own.
    let master = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(master),
        )
    };
    (master, super::owned(slave))
}

container_test! {
    /// A Docker-like create + start of `true`, twice (the first create also finds the agent's
    /// cgroup), each bracketed by markers (`write(-1, "BULKHEAD-…")`) so `strace -f` can count
    /// the system calls of exactly this (see docs/DESIGN-NOTES.md).
    fn docker_like_create_and_start() {
        let bundle = Bundle::busybox();
        let mut spec = base_spec("");
        spec["process"]["args"] = json!(["true"]);
        spec["process"]["noNewPrivileges"] = json!(true);
        spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]);
        spec["linux"]["seccomp"] =
            serde_json::from_str(include_str!("../testdata/docker-default-seccomp.json")).unwrap();
        let spec: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        let marker = |text: &[u8]| {
            // SAFETY: writing to an invalid descriptor only fails with EBADF.
            unsafe { libc::write(-1, text.as_ptr().cast(), text.len()) };
        };
        for _ in 0..2 {
            let (stdio, output) = Output::capture();
            marker(b"BULKHEAD-BEGIN");
            let id = super::unique_id();
            let mut c = Container::create(&id, &spec, &bundle.rootfs, stdio, super::reaper()).unwrap();
            c.start().unwrap();
            marker(b"BULKHEAD-END");
            assert_eq!(wait(c.init_pid()), ExitStatus::Exited(0));
            c.destroy().unwrap();
            assert_eq!(output.finish(), (String::new(), String::new()));
        }
    }
}

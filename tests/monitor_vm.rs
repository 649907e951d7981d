//! The sandbox monitor with real micro-VMs, through the shipped `bulkhead` CLI: what a container
//! engine relies on between `create` and the exit status. Each case boots as few VMs as it can
//! and checks several things on them. Gated by `BULKHEAD_E2E=1`.
//!
//! - `lifecycle_on_one_vm_with_a_second_beside_it`: `--cpus`-style quota → vCPUs, the host
//!   cgroup's limits, piped stdin through `exec`, a signal sent to the monitor's pid reaching the
//!   init, `ps`, `pause`/`resume` (and exec refused while paused), `update` in the guest and on
//!   the host; meanwhile a second container (a 300-character id, piped stdin to its init) runs
//!   in its own VM and is killed by the guest's OOM killer, which the log says; finally the
//!   first VM is killed from the host, which is told apart from the guest's OOM kill.
//! - `terminal_resizes_reach_the_init_and_an_exec`: a console-socket terminal whose master is
//!   resized, for the init and for a detached `exec -t`.
//! - `a_guest_that_goes_away_under_its_container_is_a_failure`: the guest reboots while the
//!   container runs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bulkhead_tests::cli::{become_subreaper, busybox_rootfs, Cli};
use bulkhead_tests::{require, vm_needs};
use nix::sys::wait::{waitpid, WaitStatus};
use serde_json::{json, Value};

/// Generous bound on what the guest is waited for; reaching it is a failure, not a pass.
const PATIENCE: Duration = Duration::from_secs(300);

fn write_bundle(dir: &Path, rootfs: &Path, process: Value, linux: Value) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs},
        "hostname": "monitor-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev"]}
        ],
        "linux": linux
    });
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_path_buf()
}

fn sh(script: &str) -> Value {
    json!({"args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
           "user": {"uid": 0, "gid": 0}})
}

/// Waits until `file` contains `what`; the contents.
fn wait_for_text(file: &Path, what: &str) -> String {
    bulkhead_tests::cli::wait_for_text(file, what, PATIENCE)
}

/// Runs `bulkhead exec` with `input` on a pipe as its stdin; exit code and stdout.
fn exec_with_stdin(rt: &Cli, args: &[&str], input: &[u8]) -> (Option<i32>, String) {
    let out = rt.dir().join(format!("exec-{}.out", input.len()));
    let mut child = rt
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin); // EOF
    let status = child.wait().unwrap();
    (status.code(), fs::read_to_string(&out).unwrap())
}

fn read_trimmed(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn lifecycle_on_one_vm_with_a_second_beside_it() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let parent = format!("bulkhead-e2e-{}", std::process::id());
    // Declared before the runtime: dropped after it has deleted the containers.
    let _parent = bulkhead_tests::CgroupDirs(parent.clone());
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let cgroup = format!("{parent}/vm1");
    let disk = bulkhead_test_support::a_disk();
    let bundle = write_bundle(
        &d.join("b1"),
        &rootfs,
        sh("trap 'echo got-usr1' USR1; sleep 100000 & echo ready; while :; do wait; done"),
        json!({
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "cgroup"}, {"type": "network"}],
            "cgroupsPath": format!("/{cgroup}"),
            "resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 50},
                          "cpu": {"quota": 200000, "period": 100000},
                          "blockIO": {"throttleReadBpsDevice": [
                              {"major": disk.0, "minor": disk.1, "rate": 10 << 20}]}}
        }),
    );
    let out = d.join("vm1.out");
    let pid = rt.create("vm1", &bundle, &out).unwrap();
    assert_eq!(rt.run(&["start", "vm1"]).0, Some(0));
    wait_for_text(&out, "ready");

    // A CPU quota of two CPUs is a VM of two vCPUs.
    assert_eq!(
        rt.run(&["exec", "vm1", "nproc"]),
        (Some(0), "2\n".into()),
        "vCPUs"
    );

    // The host cgroup (v1 controllers on this host) holds the whole VM: 64 MiB limit + 64
    // guest overhead = a 128 MiB VM, + 64 host overhead; pids + the monitor's 64 threads.
    let host =
        |ctl: &str, file: &str| read_trimmed(format!("/sys/fs/cgroup/{ctl}/{cgroup}/{file}"));
    let host_mem = host("memory", "memory.limit_in_bytes");
    assert_eq!(host_mem, (192u64 << 20).to_string(), "host memory limit");
    assert_eq!(host("pids", "pids.max"), "114", "host pids limit");
    assert_eq!(
        host("blkio", "blkio.throttle.read_bps_device"),
        format!("{}:{} {}", disk.0, disk.1, 10 << 20),
        "host block I/O throttle"
    );
    assert_eq!(host("cpu", "cpu.cfs_quota_us"), "200000", "host cpu quota");
    assert_eq!(
        host("cpu", "cpu.cfs_period_us"),
        "100000",
        "host cpu period"
    );

    // Piped stdin through the shim's exec path reaches the process, and its EOF too.
    let (code, text) = exec_with_stdin(&rt, &["exec", "vm1", "cat"], b"through the shim\n");
    assert_eq!((code, text.as_str()), (Some(0), "through the shim\n"));

    // A signal an engine sends to the pid it knows (the monitor's) reaches the init.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGUSR1).unwrap();
    wait_for_text(&out, "got-usr1");

    // ps lists the guest's processes of the container (the init is pid 1 of its namespace).
    let (code, pids) = rt.run(&["ps", "--format", "json", "vm1"]);
    assert_eq!(code, Some(0));
    let pids: Vec<i32> = serde_json::from_str(pids.trim()).unwrap();
    assert!(!pids.is_empty(), "ps: {pids:?}");

    // pause freezes the container; exec is refused with runc's words until resume.
    assert_eq!(rt.run(&["pause", "vm1"]).0, Some(0));
    assert!(rt.run(&["state", "vm1"]).1.contains("\"paused\""));
    let (code, text) = rt.run(&["exec", "vm1", "true"]);
    assert_eq!(code, Some(1));
    assert!(text.contains("cannot exec in a paused container"), "{text}");
    assert_eq!(rt.run(&["resume", "vm1"]).0, Some(0));
    assert!(rt.run(&["state", "vm1"]).1.contains("\"running\""));

    // update: new limits in the guest's cgroup; the host keeps covering the VM's memory and
    // moves the pids limit.
    let (code, text) = rt.run(&["update", "--memory", "96m", "--pids-limit", "20", "vm1"]);
    assert_eq!(code, Some(0), "update: {text}");
    let guest = |file: &str| rt.run(&["exec", "vm1", "cat", &format!("/sys/fs/cgroup/{file}")]);
    assert_eq!(guest("memory.max"), (Some(0), format!("{}\n", 96u64 << 20)));
    assert_eq!(guest("pids.max"), (Some(0), "20\n".into()));
    assert_eq!(host("memory", "memory.limit_in_bytes"), host_mem);
    assert_eq!(host("pids", "pids.max"), "84");

    // A second container at the same time, in its own VM: a 300-character id, its init's stdin
    // on a pipe, and an init the guest's OOM killer takes (an 8 MiB limit, a 12 MiB buffer).
    let long_id = "x".repeat(300);
    let bundle2 = write_bundle(
        &d.join("b2"),
        &rootfs,
        sh("cat; cat /proc/sys/kernel/random/boot_id; \
            exec dd if=/dev/zero of=/dev/null bs=12M count=1"),
        json!({
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
            "resources": {"memory": {"limit": 8 << 20}}
        }),
    );
    let log2 = d.join("vm2.log");
    let out2 = d.join("vm2.out");
    let mut run2 = rt
        .cmd(&["--log", log2.to_str().unwrap(), "run", "--bundle"])
        .arg(&bundle2)
        .arg(&long_id)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&out2).unwrap())
        .stderr(fs::File::create(d.join("vm2.err")).unwrap())
        .spawn()
        .unwrap();
    let mut stdin2 = run2.stdin.take().unwrap();
    stdin2.write_all(b"hello from stdin\n").unwrap();
    drop(stdin2);
    let code2 = run2.wait().unwrap().code();
    let text2 = fs::read_to_string(&out2).unwrap();
    assert_eq!(
        code2,
        Some(137),
        "guest OOM kill: {text2:?} {}",
        fs::read_to_string(d.join("vm2.err")).unwrap_or_default()
    );
    let mut lines2 = text2.lines();
    assert_eq!(lines2.next(), Some("hello from stdin"));
    let boot2 = lines2.next().unwrap_or_default().to_string();
    let log2 = fs::read_to_string(&log2).unwrap_or_default();
    assert!(
        log2.contains("killed by the guest's OOM killer"),
        "the log tells a guest OOM kill: {log2:?}"
    );
    rt.assert_gone(&long_id);
    let (_, boot1) = rt.run(&["exec", "vm1", "cat", "/proc/sys/kernel/random/boot_id"]);
    assert!(
        boot2.len() == 36 && boot1.trim() != boot2,
        "each container has its own guest kernel: {boot1:?} vs {boot2:?}"
    );

    // The host kills the whole VM (its monitor): the engine sees the monitor killed, not an
    // exit status, the state says stopped, and delete leaves nothing.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
        WaitStatus::Signaled(_, nix::sys::signal::SIGKILL, _) => {}
        other => panic!("monitor: {other:?}"),
    }
    assert!(rt.run(&["state", "vm1"]).1.contains("\"stopped\""));
    assert_eq!(rt.run(&["delete", "vm1"]).0, Some(0));
    rt.assert_gone("vm1");
    assert!(
        !Path::new("/sys/fs/cgroup/memory").join(&cgroup).exists(),
        "host cgroup left"
    );
    let _ = fs::remove_dir(
        Path::new("/sys/fs/cgroup/memory")
            .join(&cgroup)
            .parent()
            .unwrap(),
    );
}

/// Receives the pty master that `--console-socket` sends.
fn receive_master(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

/// Reads the pty master (in a thread, into a shared buffer) so the guest never blocks on it.
fn drain(master: &OwnedFd) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut f = fs::File::from(master.try_clone().unwrap());
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

fn wait_for_output(seen: &std::sync::Mutex<String>, what: &str) {
    let t = Instant::now();
    while !seen.lock().unwrap().contains(what) {
        assert!(
            t.elapsed() < PATIENCE,
            "no {what:?} on the terminal: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    assert!(bulkhead_shim::console::set_winsize(
        master.as_raw_fd(),
        rows,
        cols
    ));
}

#[test]
fn terminal_resizes_reach_the_init_and_an_exec() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    // Idle between signals: a trapped signal ends `wait`, the loop waits again.
    let watcher = "trap 'echo size=$(stty size)' WINCH; sleep 100000 & echo ready; \
                   while :; do wait; done";
    let mut process = sh(watcher);
    process["terminal"] = json!(true);
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        process,
        json!({"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}),
    );
    let socket = d.join("console.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let receiver = std::thread::spawn(move || receive_master(&listener));
    let pid_file = d.join("tty.pid");
    let o = rt.run_to(
        &[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--console-socket",
            socket.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "tty",
        ],
        &d.join("create.out"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let master = receiver.join().unwrap();
    let seen = drain(&master);
    assert_eq!(rt.run(&["start", "tty"]).0, Some(0));
    wait_for_output(&seen, "ready");
    set_size(&master, 31, 101);
    wait_for_output(&seen, "size=31 101");

    // A detached exec with its own console socket: its proxy passes its resizes on.
    let socket2 = d.join("exec.sock");
    let listener2 = UnixListener::bind(&socket2).unwrap();
    let receiver2 = std::thread::spawn(move || receive_master(&listener2));
    let exec_pid = d.join("exec.pid");
    let exec_watcher = watcher.replace("ready", "exec-ready");
    let o = rt.run_to(
        &[
            "exec",
            "-t",
            "-d",
            "--console-socket",
            socket2.to_str().unwrap(),
            "--pid-file",
            exec_pid.to_str().unwrap(),
            "tty",
            "sh",
            "-c",
            &exec_watcher,
        ],
        &d.join("exec.out"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let master2 = receiver2.join().unwrap();
    let seen2 = drain(&master2);
    wait_for_output(&seen2, "exec-ready");
    set_size(&master2, 22, 66);
    wait_for_output(&seen2, "size=22 66");

    assert_eq!(rt.run(&["delete", "--force", "tty"]).0, Some(0));
    rt.assert_gone("tty");
}

#[test]
fn a_guest_that_goes_away_under_its_container_is_a_failure() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    // No pid namespace and CAP_SYS_BOOT: the container's reboot(2) takes the guest down.
    let mut process = sh("echo going; reboot -f; sleep 1000");
    let caps = json!(["CAP_SYS_BOOT"]);
    process["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        process,
        json!({"namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}),
    );
    let log = d.join("run.log");
    let out = d.join("run.out");
    let o = rt.run_to(
        &[
            "--log",
            log.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "gone",
        ],
        &out,
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("going"), "{text}");
    // Not a clean exit and not a kill: the runtime's own failure status, with the reason.
    assert_eq!(o.status.code(), Some(255), "{text}");
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("vm ended"), "{log}");
    // The console log of a VM that failed is kept for the user to read.
    assert!(!rt.console("gone").is_empty(), "console log kept");
    rt.assert_gone("gone");
}

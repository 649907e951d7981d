//! A hostile guest against the host's walls (issue 11), through the shipped `bulkhead` CLI with
//! real micro-VMs. Each case gives the container what an attacker inside it would use
//! (capabilities, no pid namespace, the raw virtio-fs tag) and checks what the host sees, not
//! what the guest says. Gated by `BULKHEAD_E2E=1`.
//!
//! - `a_sigkill_the_guest_does_not_carry_out_is_carried_out_by_the_host`: the container freezes
//!   the guest agent (moves the guest's PID 1 into a cgroup of its own and freezes it), so the
//!   guest never acts on `kill KILL`; the host stops the VM and the container ends with 137,
//!   which the log says.
//! - `a_guest_kernel_panic_is_a_failure_with_the_console_tail`: the container makes the guest
//!   kernel panic (`panic_on_oom = 2`, then an OOM); the run fails and `--log` has the panic
//!   line from the console.
//! - `the_share_root_read_only_binds_and_volumes_hold_on_the_host`: the container mounts the
//!   share's tag itself (bypassing its own read-only mounts) and writes into the share root,
//!   its `mounts` directory, a read-only root, `rbind`+`ro` (a submount too) and `rro` binds,
//!   makes set-ID files and a device node in a volume; the host finds none of it.
//! - `a_guest_that_opens_files_without_end_stops_at_the_share_cap`: the container creates files
//!   until it is refused; the monitor's fd table stays below the share's cap plus its reserve,
//!   and the monitor still answers (`ps`, then `kill KILL` → 137).
//! - `the_fs_server_is_a_process_that_reaches_only_the_share`: the virtio-fs server, found from
//!   the host while a container runs, is its own process (PID 1 of its own PID namespace) whose
//!   root is the share, whose fds are its socket, stdio, its own `/proc/self/fd` and files of
//!   the share, with the 7 capabilities (bounding set too), seccomp and `no_new_privs`, its
//!   limits; it dies with the monitor (SIGKILL).
//! - `a_dead_fs_server_ends_its_container_with_one_line`: killing the server stops the VM; the
//!   container ends as a failure, `--log` says so in one line, delete leaves nothing.
//! - `the_monitor_runs_the_workload_from_its_jail`: once started, the monitor's root (seen from
//!   the host through `/proc/<pid>/root`) holds only the jail's binds, the state `delete` acts
//!   on and the host cgroup's limits are read-only there (a write from the host through that
//!   view fails with EROFS), its main thread keeps no capability (bounding set too) with
//!   `no_new_privs`, its open-file and core limits are set; and exec, ps, stats,
//!   update of the host cgroup, pause/resume, console output and rotation, `--log` lines,
//!   timings, the state's exit and delete all still work.
//! - `a_guest_that_floods_device_warnings_is_rate_limited_in_the_log`
//!   (`hostile/warning_flood.rs`): a guest of a few instructions (no Linux) resets a virtio
//!   device and offers it no features, over and over; the device refuses each time with a
//!   warning, and `--log` gets the limiter's burst and trickle only, one line saying how many
//!   thousands were dropped, while the device counted every attempt.
//! - `the_monitor_gives_up_root_for_the_configured_user` (`hostile/monitor_user.rs`): with
//!   `monitor_uid`/`monitor_gid`, every thread of the started monitor is that user with no
//!   group and no capability, it owns only its live state, sockets and logs, and the whole life
//!   (exec, stats, update, pause, resume, kill → 137, timings, delete) still works.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

/// The virtio-fs server process, seen from the host.
#[path = "hostile/fs_server.rs"]
mod fs_server;
use fs_server::fs_server_of;

/// A monitor that gives up root.
#[path = "hostile/monitor_user.rs"]
mod monitor_user;

/// A guest that floods the log with device warnings.
#[path = "hostile/warning_flood.rs"]
mod warning_flood;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_tests::cli::{become_subreaper, busybox_rootfs, Cli};
use bulkhead_tests::{require, vm_needs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};

/// Generous bound on what the guest is waited for; reaching it is a failure, not a pass.
const PATIENCE: Duration = Duration::from_secs(300);

/// Every capability an attacker in the container would want for these cases.
const CAPS: [&str; 8] = [
    "CAP_SYS_ADMIN",
    // Moving a process between cpusets needs it when the target has more capabilities.
    "CAP_SYS_NICE",
    "CAP_MKNOD",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_DAC_OVERRIDE",
    "CAP_SETUID",
];

/// A bundle whose process runs `script` as root with [`CAPS`], in mount/ipc/uts namespaces only
/// (no pid namespace: the guest's processes, its agent included, are in view).
fn write_bundle(dir: &Path, rootfs: &Path, script: &str, extra: Value) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let caps = json!(CAPS);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
        },
        "root": {"path": rootfs},
        "hostname": "hostile",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}
    });
    merge(&mut spec, extra);
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_path_buf()
}

/// `extra`'s keys replace the spec's (objects merged one level down, arrays appended).
fn merge(spec: &mut Value, extra: Value) {
    let Value::Object(extra) = extra else { return };
    for (k, v) in extra {
        match (spec.get_mut(&k), v) {
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (Some(Value::Object(a)), Value::Object(b)) => a.extend(b),
            (_, v) => spec[&k] = v,
        }
    }
}

/// `create`s container `id` with its log in `log` (and `--debug` if asked), the container's
/// output in `out`; returns the monitor's pid. A failed create panics with its output.
fn create_logged(rt: &Cli, id: &str, bundle: &Path, log: &Path, out: &Path, debug: bool) -> i32 {
    let pid_file = out.with_extension("pid");
    let mut args = vec!["--log", log.to_str().unwrap()];
    if debug {
        args.push("--debug");
    }
    args.extend([
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        id,
    ]);
    let o = rt.run_to(&args, out);
    assert!(
        o.status.success(),
        "create {id}: {}\nconsole: {}",
        fs::read_to_string(out).unwrap_or_default(),
        rt.console(id)
    );
    fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `file` contains `what`; the contents.
fn wait_for_text(file: &Path, what: &str) -> String {
    bulkhead_tests::cli::wait_for_text(file, what, PATIENCE)
}

/// The exit status (128 + signal when killed) of the monitor `pid`, a descendant of this
/// subreaper, if it has ended (and is reaped now).
fn exited(pid: i32) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => Some(c),
        Ok(WaitStatus::Signaled(_, s, _)) => Some(128 + s as i32),
        Ok(_) => None,
        Err(e) => panic!("waitpid {pid}: {e}"),
    }
}

/// [`exited`], waited for; waiting past [`PATIENCE`] is a failure.
fn exit_status(pid: i32) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(status) = exited(pid) {
            return status;
        }
        assert!(t.elapsed() < PATIENCE, "monitor {pid} still running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sigkill_the_guest_does_not_carry_out_is_carried_out_by_the_host() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let flag = d.join("flag");
    fs::create_dir_all(&flag).unwrap();
    // The guest's PID 1 (its agent) is visible without a pid namespace, and with the guest's
    // cgroup2 hierarchy mounted it can be moved into a cgroup of its own and frozen: the guest
    // goes deaf. The flag is written through virtio-fs once it is, so the host knows.
    let script = "mount -t cgroup2 none /tmp || exit 3; \
        mkdir /tmp/frozen-agent && echo 1 > /tmp/frozen-agent/cgroup.procs || exit 4; \
        echo 1 > /tmp/frozen-agent/cgroup.freeze || exit 5; \
        echo frozen > /flag/ready; \
        exec sleep 100000";
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        script,
        json!({"mounts": [{"destination": "/flag", "type": "bind", "source": flag,
                            "options": ["rbind", "rw"]}]}),
    );
    let log = d.join("kill.log");
    let out = d.join("kill.out");
    let pid = create_logged(&rt, "deaf", &bundle, &log, &out, false);
    assert_eq!(rt.run(&["start", "deaf"]).0, Some(0));
    // A script that failed ends the container instead: say so at once.
    let t = Instant::now();
    while !fs::read_to_string(flag.join("ready")).is_ok_and(|t| t.contains("frozen")) {
        if let Some(status) = exited(pid) {
            panic!(
                "the container ended ({status}) before freezing its guest: {}",
                fs::read_to_string(&out).unwrap_or_default()
            );
        }
        assert!(t.elapsed() < PATIENCE, "the guest never froze");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The kill is accepted although the guest never answers it…
    let (code, text) = rt.run(&["--log", log.to_str().unwrap(), "kill", "deaf", "KILL"]);
    assert_eq!(code, Some(0), "{text}");
    // …and the container ends as a SIGKILLed one: the monitor exits with 137.
    assert_eq!(
        exit_status(pid),
        137,
        "{}",
        fs::read_to_string(&out).unwrap()
    );
    let (_, state) = rt.run(&["state", "deaf"]);
    assert!(state.contains("\"stopped\""), "{state}");
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("after SIGKILL: stopping its vm from the host"),
        "the host, not the guest, ended it: {log}"
    );
    assert_eq!(rt.run(&["delete", "deaf"]).0, Some(0));
    rt.assert_gone("deaf");
}

#[test]
fn a_guest_kernel_panic_is_a_failure_with_the_console_tail() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    // An OOM in the container's memory cgroup panics the guest kernel with panic_on_oom = 2.
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        "echo 2 > /proc/sys/vm/panic_on_oom || exit 3; echo panicking; \
         exec dd if=/dev/zero of=/dev/null bs=12M count=1",
        json!({"linux": {"resources": {"memory": {"limit": 8 << 20}}}}),
    );
    let log = d.join("panic.log");
    let o = rt.run_to(
        &[
            "--log",
            log.to_str().unwrap(),
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "panics",
        ],
        &d.join("panic.out"),
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("panicking"), "{text}");
    // Not a clean exit and not an OOM kill: the runtime's failure status, with the reason.
    assert_eq!(o.status.code(), Some(255), "{text}");
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("guest kernel panic"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("console: ") && l.contains("Kernel panic - not syncing")),
        "the console tail is in the log: {log}"
    );
    assert!(
        rt.console("panics").contains("Kernel panic"),
        "console log kept"
    );
    rt.assert_gone("panics");
}

#[test]
fn the_share_root_read_only_binds_and_volumes_hold_on_the_host() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let vol = d.join("vol");
    fs::create_dir_all(&vol).unwrap();
    // A read-only tree with a host mount inside it, bound twice: rbind + ro and rro. Outside
    // the runtime's directory, whose mounts `assert_gone` checks.
    let host = tempfile::tempdir().unwrap();
    let tree = host.path().join("tree");
    let inner = host.path().join("inner");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::create_dir_all(&inner).unwrap();
    let sub = tree.join("sub");
    mount(
        Some(&inner),
        &sub,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let _unmount = Unmount(sub);
    // mounts: 0 proc, 1 /vol, 2 /ro1, 3 /ro2 — the share's mounts/<n> follow the spec's order.
    let script = r#"
        mount -t virtiofs bulkhead /data || exit 3
        try() { if echo x > "$1" 2>/dev/null; then echo "WROTE $1"; else echo "refused $1"; fi; }
        for p in /data/evil /data/mounts/evil /data/rootfs/evil /data/mounts/2/evil \
                 /data/mounts/2/sub/evil /data/mounts/3/evil /data/mounts/3/sub/evil \
                 /ro1/evil /ro2/sub/evil; do try "$p"; done
        echo x > /vol/suid && chmod 4755 /vol/suid && echo "WROTE suid"
        echo x > /vol/sgid && chmod 2755 /vol/sgid && echo "WROTE sgid"
        echo x > /data/mounts/1/raw && chmod 4755 /data/mounts/1/raw && echo "WROTE raw suid"
        mknod /vol/null c 1 3 && echo "WROTE device"
        mkdir /vol/dir && chmod 2775 /vol/dir && echo "setgid dir ok"
        chmod 0750 /vol/suid && echo "plain chmod ok"
        echo done
        sleep 100000
    "#;
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        script,
        json!({
            "root": {"path": rootfs, "readonly": true},
            "mounts": [
                {"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
                {"destination": "/ro1", "type": "bind", "source": tree, "options": ["rbind", "ro"]},
                {"destination": "/ro2", "type": "bind", "source": tree, "options": ["rbind", "rro"]}
            ]
        }),
    );
    let out = d.join("share.out");
    rt.create("walls", &bundle, &out).unwrap();
    assert_eq!(rt.run(&["start", "walls"]).0, Some(0));
    let text = wait_for_text(&out, "done");
    assert!(!text.contains("WROTE"), "the guest got through: {text}");
    for refused in ["/data/evil", "/data/mounts/evil", "/data/mounts/2/sub/evil"] {
        assert!(text.contains(&format!("refused {refused}")), "{text}");
    }
    assert!(text.contains("setgid dir ok"), "{text}");
    assert!(text.contains("plain chmod ok"), "{text}");

    // What the host sees, while the VM still runs.
    let state_dir = rt.dir().join("root/walls");
    let share = state_dir.join("share");
    assert!(share.is_dir(), "the share is where the test looks");
    for p in ["evil", "mounts/evil"] {
        assert!(!share.join(p).exists(), "{p} in the share");
    }
    for p in ["evil", "sub/evil"] {
        assert!(!tree.join(p).exists(), "{p} in the read-only tree");
    }
    assert!(!inner.join("evil").exists(), "the submount held");
    assert!(!rootfs.join("evil").exists(), "the read-only root held");
    for f in ["suid", "sgid", "raw"] {
        let mode = fs::metadata(vol.join(f)).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o6000,
            0,
            "{f} has set-ID bits on the host: {mode:o}"
        );
    }
    assert!(!vol.join("null").exists(), "device node in the volume");

    assert_eq!(rt.run(&["delete", "--force", "walls"]).0, Some(0));
    rt.assert_gone("walls");
}

#[test]
fn a_guest_that_opens_files_without_end_stops_at_the_share_cap() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    const CAP: usize = 300;
    let rt = Cli::with_config(&format!("share_max_open_files = {CAP}\n"));
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let vol = d.join("vol");
    fs::create_dir_all(&vol).unwrap();
    // Every file the guest creates stays known to it (its inode cache), so each holds a host fd.
    let script = "i=0; while echo x > /vol/f$i; do i=$((i+1)); done; echo \"made $i\"; \
        sleep 100000";
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        script,
        json!({"mounts": [{"destination": "/vol", "type": "bind", "source": vol,
                            "options": ["rbind", "rw"]}]}),
    );
    let out = d.join("fds.out");
    let pid = rt.create("fds", &bundle, &out).unwrap();
    assert_eq!(rt.run(&["start", "fds"]).0, Some(0));
    let text = wait_for_text(&out, "made ");
    let made: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("made "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        (CAP / 2..CAP).contains(&made),
        "stopped after {made} files: {text}"
    );
    assert!(text.contains("Too many open files in system"), "{text}");
    // The host side: the share's fds are its server's, bounded by the cap and the server's
    // reserve, and the monitor's fd table holds none of them…
    let server = fs_server_of(pid);
    let fds = fs::read_dir(format!("/proc/{server}/fd")).unwrap().count();
    let reserve = bulkhead_vmm::devices::virtio::fs::server::FD_RESERVE as usize;
    assert!(
        (CAP / 2..CAP + reserve).contains(&fds),
        "{fds} fds in the server"
    );
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(fds < 100, "{fds} fds in the monitor");
    // …and it is still in control of its container.
    let (code, pids) = rt.run(&["ps", "--format", "json", "fds"]);
    assert_eq!(code, Some(0), "{pids}");
    assert_eq!(rt.run(&["kill", "fds", "KILL"]).0, Some(0));
    assert_eq!(exit_status(pid), 137);
    assert_eq!(rt.run(&["delete", "fds"]).0, Some(0));
    rt.assert_gone("fds");
}

/// Lazily unmounts a test's own host mount when the test ends, passed or failed.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

/// The value of `key` (`CapEff:`, …) in a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or("", str::trim)
}

/// Soft and hard value of one `/proc/<pid>/limits` line (`Max open files`, …).
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {limits}"));
    let mut v = line[name.len()..].split_whitespace();
    (v.next().unwrap().into(), v.next().unwrap().into())
}

/// Waits until the console log's previous part (`<log>.1`) holds `what`: the log was rotated
/// after `what` was written. (Not the log's inode: ext4 gives a freed inode number to the next
/// file, so after an even number of rotations the log can have its old inode again.)
fn rotated_after(path: &Path, what: &str) {
    let old = PathBuf::from(format!("{}.1", path.display()));
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(&old).unwrap_or_default();
        if text.contains(what) {
            return;
        }
        assert!(
            t.elapsed() < PATIENCE,
            "console log never rotated after {what:?}; {}: {text:?}",
            old.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_monitor_runs_the_workload_from_its_jail() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    const SHARE_FDS: u64 = 3000;
    let parent = format!("bulkhead-jail-{}", std::process::id());
    // Declared before the runtime: dropped after it has deleted the container.
    let _parent = bulkhead_tests::CgroupDirs(parent.clone());
    let rt = Cli::with_config(&format!(
        "keep_logs = true\nconsole_log_max_kib = 1\nshare_max_open_files = {SHARE_FDS}\n"
    ));
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let cgroup = format!("{parent}/jailed");
    // Console output once the workload runs (after the lock-down), more than the 1 KiB cap:
    // each drop_caches write prints a kernel line, shown with the console log level raised.
    let script = "echo 8 > /proc/sys/kernel/printk || exit 3; i=0; while [ $i -lt 40 ]; do \
        echo 3 > /proc/sys/vm/drop_caches; i=$((i+1)); done; echo ready; sleep 100000";
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        script,
        json!({"linux": {"cgroupsPath": format!("/{cgroup}"),
                         "resources": {"pids": {"limit": 50}}}}),
    );
    let (log, out) = (d.join("jail.log"), d.join("jail.out"));
    let pid = create_logged(&rt, "jailed", &bundle, &log, &out, true);
    let console = rt.console_path("jailed");
    let host_root = fs::read_dir(format!("/proc/{pid}/root")).unwrap().count();
    assert!(host_root > 3, "not locked down before start");
    assert_eq!(rt.run(&["start", "jailed"]).0, Some(0));
    wait_for_text(&out, "ready");

    // The monitor's root: the first component of each kept directory (this test's directory,
    // /sys for the cgroup) and /proc with only its own /proc/<pid> as /proc/self.
    let names = |p: &str| -> std::collections::BTreeSet<String> {
        fs::read_dir(format!("/proc/{pid}/root{p}"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let top = d
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let expected: std::collections::BTreeSet<String> =
        [top, "sys".into(), "proc".into()].into_iter().collect();
    assert_eq!(names(""), expected, "the jail's root");
    assert_eq!(names("/proc"), ["self".to_string()].into_iter().collect());
    for gone in ["/etc", "/usr", "/home", "/bin"] {
        assert!(
            !Path::new(&format!("/proc/{pid}/root{gone}")).exists(),
            "{gone}"
        );
    }
    let state_dir = format!("/proc/{pid}/root{}/root/jailed", d.display());
    assert!(Path::new(&state_dir).join("state.json").exists());
    assert!(
        !d.join("root/jailed/jail").exists(),
        "the jail's mount point is left"
    );
    // The virtio-fs server's /proc/self/fd is its own process's now (its own PID namespace's
    // procfs): the monitor holds no such directory, neither the jail's nor the host's.
    let links: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(!links.iter().any(|l| l == "/proc/self/fd"), "{links:?}");
    assert!(!links.contains(&format!("/proc/{pid}/fd")), "{links:?}");

    // What the host acts on later with root's powers is in view but read-only: the state
    // `delete` takes the bundle (its poststop hooks) and the pid to kill from, the host
    // cgroup's limits. Only the state's live part (the status) is the monitor's to write.
    let jailed = |p: &Path| PathBuf::from(format!("/proc/{pid}/root{}", p.display()));
    let pids_max = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|h| Path::new(h).join(&cgroup).join("pids.max"))
        .find(|p| p.exists())
        .expect("the container's host pids cgroup");
    for wall in [
        jailed(&d.join("root/jailed/state.json")),
        jailed(&d.join("root/jailed/planted.json")),
        jailed(&pids_max),
    ] {
        let err = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wall)
            .map(drop)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}", wall.display());
    }
    assert!(jailed(&d.join("root/jailed/live/status.json")).exists());

    // The main thread: no capability (bounding set included), no_new_privs, rlimits for one VM.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_field(&status, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    // Every thread that handles what the guest writes runs under its seccomp list (mode 2):
    // the control thread (this one), the vCPUs, the device loop, the virtio-fs queue thread;
    // the VM's own threads hold no capability, nor does the thread that waits on them (the
    // capabilities the share needs are in its server process, checked in
    // `the_fs_server_is_a_process_that_reaches_only_the_share`).
    assert_eq!(status_field(&status, "Seccomp:"), "2", "the control thread");
    let mut roles = std::collections::BTreeSet::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = fs::read_to_string(task.join("comm"))
            .unwrap()
            .trim()
            .to_string();
        let st = fs::read_to_string(task.join("status")).unwrap();
        let role = match comm.as_str() {
            c if c.starts_with("vcpu") => "vcpu",
            "events" => "events",
            c if c.starts_with("fs-") => "fs",
            "vm" => "vm",
            _ => continue,
        };
        roles.insert(role);
        if role != "vm" {
            assert_eq!(status_field(&st, "Seccomp:"), "2", "thread {comm}");
        }
        assert_eq!(
            status_field(&st, "CapEff:"),
            "0000000000000000",
            "thread {comm}"
        );
        assert_eq!(
            status_field(&st, "CapPrm:"),
            "0000000000000000",
            "thread {comm}"
        );
    }
    assert_eq!(roles.len(), 4, "threads seen: {roles:?}");
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let nofile = hard
        .min(SHARE_FDS + bulkhead_shim::config::MONITOR_FD_RESERVE)
        .to_string();
    assert_eq!(limit(&limits, "Max open files"), (nofile.clone(), nofile));
    assert_eq!(
        limit(&limits, "Max core file size"),
        ("0".into(), "0".into())
    );
    // Everything still works from the jail. The console (written and rotated by path on the
    // vCPU threads) was rotated after the start, in the workload's flood:
    rotated_after(&console, "drop_caches");
    // The guest's console flood (40 kernel lines, ~4 KiB) stays within the cap on the host:
    // each of the two files holds at most 1 KiB.
    for f in [
        console.clone(),
        PathBuf::from(format!("{}.1", console.display())),
    ] {
        let len = fs::metadata(&f).unwrap().len();
        assert!(len <= 1024, "{} holds {len} bytes", f.display());
    }
    // exec (its stdio reopened by the CLI), ps, stats from the host cgroup, update of the
    // host cgroup (by the CLI: the monitor's view of it is read-only), pause and resume.
    assert_eq!(
        rt.run(&["exec", "jailed", "echo", "from-exec"]),
        (Some(0), "from-exec\n".into())
    );
    assert_eq!(rt.run(&["ps", "jailed"]).0, Some(0));
    let (code, text) = rt.run(&["events", "--stats", "jailed"]);
    assert_eq!(code, Some(0), "{text}");
    let ev: Value = serde_json::from_str(text.trim()).unwrap();
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert_eq!(fs::read_to_string(&pids_max).unwrap().trim(), "114");
    let (code, text) = rt.run(&["update", "--pids-limit", "20", "jailed"]);
    assert_eq!(code, Some(0), "update: {text}");
    assert_eq!(fs::read_to_string(&pids_max).unwrap().trim(), "84");
    assert_eq!(rt.run(&["pause", "jailed"]).0, Some(0));
    assert!(rt.run(&["state", "jailed"]).1.contains("\"paused\""));
    assert_eq!(rt.run(&["resume", "jailed"]).0, Some(0));
    assert!(rt.run(&["state", "jailed"]).1.contains("\"running\""));

    // kill, the exit written to the state, the log lines of the end, timings, delete.
    assert_eq!(rt.run(&["kill", "jailed", "KILL"]).0, Some(0));
    assert_eq!(exit_status(pid), 137);
    assert!(rt.run(&["state", "jailed"]).1.contains("\"stopped\""));
    let text = fs::read_to_string(&log).unwrap();
    let locked = text.find("monitor locked down").expect("lock-down logged");
    let ended = text.rfind("vm ended").expect("the vm's end logged");
    assert!(
        ended > locked,
        "a line after the lock-down reached --log: {text}"
    );
    assert!(rt.timings("jailed").contains("torn_down"), "timings.json");
    assert_eq!(rt.run(&["delete", "jailed"]).0, Some(0));
    rt.assert_gone("jailed");
}

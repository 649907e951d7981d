//! The process model of the `bulkhead` CLI, without a VM: `bulkhead-test-runtime` is the real
//! CLI, monitor and exec proxy with the container's process run on the host (see
//! `shim_test_runtime.rs`). This test process makes itself a child subreaper, as containerd's
//! shim and conmon are, so it can `waitpid` the monitor and exec proxies whose pids `create` and
//! `exec --detach` write to their pid files.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bulkhead_tests::cli::{become_subreaper, output_via_files, wait_status};
use bulkhead_tests::{require, Need};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-test-runtime");

/// One runtime root, config and bundle directory per test.
struct Rt {
    tmp: tempfile::TempDir,
}

impl Rt {
    fn new() -> Option<Rt> {
        // The runtime needs root: mount namespaces, bind mounts, cgroups.
        if !require(&[Need::Root]) {
            return None;
        }
        become_subreaper();
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        fs::write(
            tmp.path().join("config.toml"),
            format!(
                "log_dir = {:?}\nkeep_logs = true\n",
                logs.display().to_string()
            ),
        )
        .unwrap();
        Some(Rt { tmp })
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes a bundle whose process is `args`; returns its directory.
    fn bundle(&self, name: &str, args: &[&str], extra: impl FnOnce(&mut Value)) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}],
                "cgroupsPath": format!("/bulkhead-test/{name}-{}", std::process::id())
            }
        });
        extra(&mut spec);
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        dir
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("BULKHEAD_CONFIG", self.path("config.toml"))
            .arg("--root")
            .arg(self.root())
            .args(args);
        c
    }

    /// Runs a command with its output in files: processes it leaves behind (the monitor, an
    /// exec'd process) inherit them, so waiting for EOF on pipes would wait for those.
    fn run(&self, args: &[&str]) -> Output {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        output_via_files(self.cmd(args), &self.path(&format!("run-{n}")), None)
    }

    /// `create` with the container's stdout/stderr going to `out` (create's own stderr is the
    /// container's stderr, as with runc); returns (output, monitor pid).
    fn create(&self, id: &str, bundle: &Path, out: &Path) -> (Output, Option<i32>) {
        let pid_file = self.path(&format!("{id}.pid"));
        let cmd = self.cmd(&[
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            id,
        ]);
        let o = output_via_files(cmd, out, Some(out));
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        (o, pid)
    }

    fn state(&self, id: &str) -> Value {
        let o = self.run(&["state", id]);
        assert!(
            o.status.success(),
            "state: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Nothing of container `id` is left: state dir, share mounts, cgroup dirs.
    fn assert_clean(&self, id: &str, bundle: &Path) {
        assert!(
            !self.root().join(id).exists(),
            "state dir of {id} left behind"
        );
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.root().to_str().unwrap()),
            "mounts left under the root:\n{mounts}"
        );
        let name = bundle.file_name().unwrap().to_str().unwrap();
        let leaf = format!("bulkhead-test/{name}-{}", std::process::id());
        let mut hierarchies: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
        for h in hierarchies {
            let d = h.join(&leaf);
            assert!(!d.exists(), "cgroup {} left behind", d.display());
            // The shared parent goes once the last test is done with it (busy until then).
            let _ = fs::remove_dir(d.parent().unwrap());
        }
    }
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        // Only turns a hang into a failure: host processes, no VM.
        assert!(t.elapsed() < Duration::from_secs(120), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn create_start_exit_status_and_delete() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b1", &["sh", "-c", "echo hi; echo err >&2; exit 3"], |_| {});
    let out = rt.path("out");
    let (o, pid) = rt.create("c1", &bundle, &out);
    assert!(o.status.success(), "create: {}", stderr(&o));
    let pid = pid.expect("pid file");
    // The monitor outlived `create` and was re-parented to us, the subreaper.
    let ppid = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: i32 = ppid[ppid.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, std::process::id() as i32);
    let st = rt.state("c1");
    assert_eq!(
        (st["status"].as_str(), st["pid"].as_i64()),
        (Some("created"), Some(pid as i64))
    );
    assert_eq!(st["bundle"], bundle.to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.clone()).unwrap(),
        "",
        "nothing runs before start"
    );

    let o = rt.run(&["start", "c1"]);
    assert!(o.status.success(), "start: {}", stderr(&o));
    assert_eq!(wait_status(pid), 3);
    assert_eq!(fs::read_to_string(&out).unwrap(), "hi\nerr\n");
    // The monitor recorded when each phase ended (bench/ reads this).
    let t: Value =
        serde_json::from_str(&fs::read_to_string(rt.path("logs/c1.timings.json")).unwrap())
            .unwrap();
    let phases = [
        "host_ready",
        "agent_ready",
        "created",
        "started",
        "exited",
        "torn_down",
    ];
    let at: Vec<f64> = phases
        .iter()
        .map(|p| t[p].as_f64().unwrap_or_else(|| panic!("{p} in {t}")))
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{t}");
    assert_eq!(rt.state("c1")["status"], "stopped");

    let o = rt.run(&["start", "c1"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o).trim(),
        "bulkhead: cannot start a container that has stopped"
    );
    let o = rt.run(&["kill", "c1", "KILL"]);
    assert_eq!(stderr(&o).trim(), "bulkhead: container not running");
    let o = rt.run(&["delete", "c1"]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    rt.assert_clean("c1", &bundle);
    let o = rt.run(&["state", "c1"]);
    assert_eq!(
        stderr(&o).trim(),
        "bulkhead: container \"c1\" does not exist"
    );
}

#[test]
fn kill_gives_128_plus_signal_and_delete_needs_force() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b2", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create("c2", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    let pid = pid.unwrap();
    assert!(rt.run(&["start", "c2"]).status.success());
    assert_eq!(rt.state("c2")["status"], "running");
    let o = rt.run(&["start", "c2"]);
    assert_eq!(
        stderr(&o).trim(),
        "bulkhead: cannot start an already running container"
    );
    let o = rt.run(&["delete", "c2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("that is not stopped: running"),
        "{}",
        stderr(&o)
    );

    let o = rt.run(&["kill", "c2", "9"]);
    assert!(o.status.success(), "kill: {}", stderr(&o));
    assert_eq!(wait_status(pid), 137);
    assert!(rt.run(&["delete", "c2"]).status.success());
    rt.assert_clean("c2", &bundle);
}

#[test]
fn delete_force_stops_a_running_container() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b3", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create("c3", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    assert!(rt.run(&["start", "c3"]).status.success());
    // Flag after the id, as containerd passes it.
    let o = rt.run(&["delete", "c3", "--force"]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    assert_eq!(wait_status(pid.unwrap()), 137);
    rt.assert_clean("c3", &bundle);
}

#[test]
fn failed_create_leaves_nothing_and_logs_json() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b4", &["no-such-command-xyz"], |_| {});
    let log = rt.path("log.json");
    let (o, pid) = {
        let mut c = rt.cmd(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "--bundle",
        ]);
        c.arg(&bundle)
            .args(["--pid-file", rt.path("p").to_str().unwrap(), "c4"]);
        (
            output_via_files(c, &rt.path("c4"), None),
            fs::read_to_string(rt.path("p")).ok(),
        )
    };
    assert_eq!(o.status.code(), Some(1));
    assert!(pid.is_none(), "no pid file on failure");
    // The wording is the host test sandbox's (shim_agent.rs checks the real agent's): what is
    // checked here is that the one error line on stderr is also the last JSON line of the log,
    // which containerd reads.
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    let last: Value =
        serde_json::from_str(fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(
        Some(err.trim()),
        last["msg"]
            .as_str()
            .map(|m| format!("bulkhead: {m}"))
            .as_deref()
    );
    rt.assert_clean("c4", &bundle);

    // A boot failure, and an invalid bundle, leave nothing either.
    let bundle = rt.bundle("b4b", &["true"], |_| {});
    let mut c = rt.cmd(&["create", "--bundle", bundle.to_str().unwrap(), "c4b"]);
    c.env("BULKHEAD_TEST_FAIL_BOOT", "1");
    let o = output_via_files(c, &rt.path("c4b"), None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).starts_with("bulkhead: "), "{}", stderr(&o));
    rt.assert_clean("c4b", &bundle);
    let bad = rt.bundle("b4c", &["true"], |s| {
        s["linux"]["namespaces"] = json!([{"type": "bogus"}])
    });
    let o = rt.run(&["create", "--bundle", bad.to_str().unwrap(), "c4c"]);
    assert_eq!(
        stderr(&o).trim(),
        "bulkhead: config.json: unknown namespace type \"bogus\""
    );
    rt.assert_clean("c4c", &bad);
}

#[test]
fn duplicate_ids_are_refused() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b5", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create("c5", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    let (o, _) = rt.create("c5", &bundle, &rt.path("out2"));
    assert_eq!(stderr(&o).trim(), "bulkhead: container with id exists: c5");
    // Deleting a created container needs no --force (runc kills it).
    assert!(rt.run(&["delete", "c5"]).status.success());
    assert_eq!(wait_status(pid.unwrap()), 137);
    rt.assert_clean("c5", &bundle);
}

#[test]
fn exec_foreground_and_detached() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b6", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create("c6", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    assert!(rt.run(&["start", "c6"]).status.success());

    let o = rt.run(&["exec", "-e", "X=42", "c6", "sh", "-c", "echo x=$X; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "x=42\n");

    // A failed exec is one error line (its wording is the host test sandbox's; shim_agent.rs
    // checks the real agent's) and leaves the container running.
    let o = rt.run(&["exec", "c6", "no-such-command-xyz"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert_eq!(rt.state("c6")["status"], "running");

    // Detached: the proxy is left behind, its pid in the file, and exits with the status.
    let proc_file = rt.path("process.json");
    fs::write(
        &proc_file,
        json!({"args": ["sh", "-c", "sleep 0.3; exit 7"], "cwd": "/"}).to_string(),
    )
    .unwrap();
    let pid_file = rt.path("exec.pid");
    let o = rt.run(&[
        "exec",
        "--process",
        proc_file.to_str().unwrap(),
        "--detach",
        "c6",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "exec -d: {}", stderr(&o));
    let proxy: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_status(proxy), 7);

    // Killing the proxy forwards the signal to the exec'd process.
    fs::write(
        &proc_file,
        json!({"args": ["sleep", "100"], "cwd": "/"}).to_string(),
    )
    .unwrap();
    let o = rt.run(&[
        "exec",
        "--process",
        proc_file.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c6",
    ]);
    assert!(o.status.success());
    let proxy: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on a process we reap.
    unsafe { libc::kill(proxy, libc::SIGTERM) };
    assert_eq!(wait_status(proxy), 128 + libc::SIGTERM);

    let ps = rt.run(&["ps", "--format", "json", "c6"]);
    let pids: Vec<i32> = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(!pids.is_empty());

    assert!(rt.run(&["kill", "c6"]).status.success(), "default SIGTERM");
    assert_eq!(wait_status(pid.unwrap()), 128 + libc::SIGTERM);
    let o = rt.run(&["exec", "c6", "true"]);
    assert_eq!(
        stderr(&o).trim(),
        "bulkhead: cannot exec in a stopped container"
    );
    assert!(rt.run(&["delete", "c6"]).status.success());
    rt.assert_clean("c6", &bundle);
}

#[test]
fn console_socket_receives_the_pty_master() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b7", &["sh", "-c", "tty; read line; echo got $line"], |s| {
        s["process"]["terminal"] = json!(true)
    });
    let sock = rt.path("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let o = rt.run(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        "--pid-file",
        rt.path("p7").to_str().unwrap(),
        "c7",
    ]);
    assert!(o.status.success(), "create: {}", stderr(&o));
    let (conn, _) = listener.accept().unwrap();
    let (name, fds) = bulkhead_shim::console::recv_fds(&conn, 1).unwrap();
    assert!(String::from_utf8(name).unwrap().starts_with("/dev/pts/"));
    let master = fs::File::from(fds.into_iter().next().unwrap());
    assert!(rt.run(&["start", "c7"]).status.success());
    use std::io::{Read, Write};
    (&master).write_all(b"ping\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let t = Instant::now();
    while !seen.contains("got ping") && t.elapsed() < Duration::from_secs(120) {
        match (&master).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    assert!(seen.contains("/dev/pts/"), "{seen}");
    assert!(seen.contains("got ping"), "{seen}");
    let pid: i32 = fs::read_to_string(rt.path("p7"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait_status(pid), 0);
    assert!(rt.run(&["delete", "c7"]).status.success());
    rt.assert_clean("c7", &bundle);

    // A terminal without a console socket cannot be detached.
    let o = rt.run(&["create", "--bundle", bundle.to_str().unwrap(), "c7b"]);
    assert!(stderr(&o).contains("cannot allocate tty"), "{}", stderr(&o));
    rt.assert_clean("c7b", &bundle);
}

#[test]
fn hooks_run_with_state_on_stdin() {
    let Some(rt) = Rt::new() else { return };
    let log = rt.path("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat) >> {}", log.display())]});
    let bundle = rt.bundle("b8", &["true"], |s| {
        s["hooks"] = json!({
            "createRuntime": [hook("createRuntime")], "prestart": [hook("prestart")],
            "createContainer": [hook("createContainer")], "startContainer": [hook("startContainer")],
            "poststart": [hook("poststart")], "poststop": [hook("poststop")]
        })
    });
    let (o, pid) = rt.create("c8", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    assert!(rt.run(&["start", "c8"]).status.success());
    assert_eq!(wait_status(pid.unwrap()), 0);
    assert!(rt.run(&["delete", "c8"]).status.success());
    let text = fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        [
            "createRuntime",
            "prestart",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    for line in text.lines() {
        let state: Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(state["id"], "c8");
    }
    rt.assert_clean("c8", &bundle);

    // A failing createRuntime hook fails create and leaves nothing.
    let bundle = rt.bundle("b8b", &["true"], |s| {
        s["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]})
    });
    let (o, _) = rt.create("c8b", &bundle, &rt.path("out"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("createRuntime hook #0"),
        "{}",
        stderr(&o)
    );
    rt.assert_clean("c8b", &bundle);
}

#[test]
fn list_pause_resume_and_events() {
    let Some(rt) = Rt::new() else { return };
    let bundle = rt.bundle("b9", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create("c9", &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    assert!(rt.run(&["start", "c9"]).status.success());
    let o = rt.run(&["list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["id"], "c9");
    assert_eq!(
        String::from_utf8_lossy(&rt.run(&["list", "-q"]).stdout),
        "c9\n"
    );
    assert!(rt.run(&["pause", "c9"]).status.success());
    assert_eq!(rt.state("c9")["status"], "paused");
    assert!(rt.run(&["resume", "c9"]).status.success());
    assert_eq!(rt.state("c9")["status"], "running");
    let o = rt.run(&["events", "--stats", "c9"]);
    let ev: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["id"].as_str()),
        (Some("stats"), Some("c9"))
    );
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    // A monitor that dies (VM crash) means stopped, and delete cleans up after it.
    let pid = pid.unwrap();
    // SAFETY: kill(2) on a process we reap.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(wait_status(pid), 137);
    wait_for(|| rt.state("c9")["status"] == "stopped");
    // A VM dies with its monitor; the host test sandbox's process does not, so end it here.
    // Its cgroup: the pids hierarchy of a cgroup v1 host, or the one of a v2 host.
    let leaf = format!("bulkhead-test/b9-{}/cgroup.procs", std::process::id());
    let procs = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .map(|h| Path::new(h).join(&leaf))
        .find(|p| p.exists())
        .expect("the container's pids cgroup");
    let orphans = fs::read_to_string(procs).unwrap();
    assert_eq!(orphans.lines().count(), 1, "{orphans:?}");
    for p in orphans.lines() {
        let p: i32 = p.parse().unwrap();
        // SAFETY: kill(2) on the orphaned test process, re-parented to us.
        unsafe { libc::kill(p, libc::SIGKILL) };
        wait_status(p);
    }
    let o = rt.run(&["delete", "c9"]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    rt.assert_clean("c9", &bundle);
}

#[test]
fn long_ids_and_roots_fit_the_socket_path_limit() {
    let Some(rt) = Rt::new() else { return };
    // Like containerd's /run/containerd/runc/<namespace>/<64 hex>: past sun_path's 108 bytes.
    let id = format!("{}{}", "a".repeat(64), "b".repeat(40));
    assert!(rt.root().join(&id).join("control.sock").as_os_str().len() > 108);
    let bundle = rt.bundle("b10", &["sleep", "100"], |_| {});
    let (o, pid) = rt.create(&id, &bundle, &rt.path("out"));
    assert!(o.status.success(), "create: {}", stderr(&o));
    assert!(rt.run(&["start", &id]).status.success());
    assert_eq!(rt.state(&id)["status"], "running");
    let o = rt.run(&["exec", &id, "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(rt.run(&["kill", &id, "KILL"]).status.success());
    assert_eq!(wait_status(pid.unwrap()), 137);
    assert!(rt.run(&["delete", &id]).status.success());
    rt.assert_clean(&id, &bundle);
}

//! Lifecycle rules through the real CLI and monitor, without a VM (`bulkhead-test-runtime`, see
//! `shim_test_runtime.rs`): callers written against runc, whose `create` takes milliseconds,
//! `start` a container that is still being created — the start waits for the creation instead
//! of failing — and ids are checked by the one rule before anything is created.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::cli::{become_subreaper, output_via_files};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead-test-runtime");

struct Rt {
    tmp: tempfile::TempDir,
}

impl Rt {
    fn new() -> Rt {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the runtime needs root (mount namespaces, bind mounts, cgroups)"
        );
        become_subreaper();
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        fs::write(
            tmp.path().join("config.toml"),
            format!("log_dir = {:?}\n", logs.display().to_string()),
        )
        .unwrap();
        Rt { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn bundle(&self, args: &[&str]) -> PathBuf {
        let dir = self.path("bundle");
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "mount"}]}
        });
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        dir
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("BULKHEAD_CONFIG", self.path("config.toml"))
            .arg("--root")
            .arg(self.path("root"))
            .args(args);
        c
    }

    fn run(&self, name: &str, args: &[&str]) -> std::process::Output {
        output_via_files(self.cmd(args), &self.path(name), None)
    }

    fn create_args<'a>(&self, bundle: &'a Path, id: &'a str) -> Vec<&'a str> {
        vec!["create", "--bundle", bundle.to_str().unwrap(), id]
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn start_waits_for_a_container_still_being_created() {
    let rt = Rt::new();
    let out = rt.path("init.out");
    let bundle = rt.bundle(&["sh", "-c", "echo started-after-create"]);
    // The test sandbox's boot takes 2 s here, as a VM's does.
    let mut create = rt
        .cmd(&rt.create_args(&bundle, "slow"))
        .env("BULKHEAD_TEST_BOOT_DELAY_MS", "2000")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Wait until the container exists and is still being created, then start it.
    let t = Instant::now();
    loop {
        let o = rt.run("state", &["state", "slow"]);
        if text(&o.stdout).contains("\"creating\"") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "never saw it creating: {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = rt.run("start", &["start", "slow"]);
    assert!(o.status.success(), "start: {}", text(&o.stderr));
    assert!(create.wait().unwrap().success());
    let t = Instant::now();
    while !fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("started-after-create")
    {
        assert!(t.elapsed() < Duration::from_secs(60), "the init never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And start's rules still apply once it has been created: a second start is refused.
    let o = rt.run("start2", &["start", "slow"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot start"),
        "{}",
        text(&o.stderr)
    );
    assert!(rt
        .run("delete", &["delete", "--force", "slow"])
        .status
        .success());
}

#[test]
fn ids_of_up_to_1024_characters_work_and_longer_ones_fail_first() {
    let rt = Rt::new();
    let bundle = rt.bundle(&["sh", "-c", "exit 0"]);
    for len in [255, 256, 1024] {
        let id = "i".repeat(len);
        let o = rt.run("create", &rt.create_args(&bundle, &id));
        assert!(o.status.success(), "create {len}: {}", text(&o.stderr));
        let o = rt.run("state", &["state", &id]);
        assert!(
            text(&o.stdout).contains(&id),
            "state of a {len}-character id"
        );
        let o = rt.run("list", &["list", "-q"]);
        assert!(
            text(&o.stdout).lines().any(|l| l == id),
            "list shows the id"
        );
        assert!(rt
            .run("delete", &["delete", "--force", &id])
            .status
            .success());
    }
    // Past the rule: one line, nothing created, no sandbox booted (no console log).
    let id = "i".repeat(1025);
    let o = rt.run("create", &rt.create_args(&bundle, &id));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("invalid container id"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(text(&o.stderr).lines().count(), 1);
    let root = rt.path("root");
    assert!(fs::read_dir(&root).map_or(true, |mut d| d.next().is_none()));
    assert!(fs::read_dir(rt.path("logs")).map_or(true, |mut d| d.next().is_none()));
}

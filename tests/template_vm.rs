//! Template start through the shipped `bulkhead` CLI with real micro-VMs: containers restored
//! from one template are each their own (random bytes, UUIDs, wall clock), a template of
//! another kernel or agent is not used, a corrupted template costs a warning and never a
//! container, `bulkhead template ls|rm|build` manage them. Each case has its own template
//! directory, so it makes its templates itself. Gated by `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bulkhead_tests::cli::{agent_initramfs, busybox_rootfs, Cli};
use bulkhead_tests::{require, vm_needs};
use serde_json::json;

/// A CLI whose containers start from templates (or not) in its own template directory.
fn cli(templates: bool) -> Cli {
    let rt = Cli::with_config(&format!("templates = {templates}\n"));
    let dir = rt.dir().join("templates");
    let config = rt.dir().join("config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!("template_dir = {:?}\n", dir.display().to_string()));
    fs::write(&config, text).unwrap();
    rt
}

fn bundle(rt: &Cli, name: &str, script: &str) -> PathBuf {
    let dir = rt.dir().join(name);
    let rootfs = busybox_rootfs(&dir.join("rootfs"));
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": rootfs},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}
    });
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir
}

/// `bulkhead --log L run` of `bundle` as `id`: exit code, output, log.
fn run(rt: &Cli, bundle: &Path, id: &str) -> (Option<i32>, String, String) {
    let log = rt.dir().join(format!("{id}.log"));
    let (code, out) = rt.run(&[
        "--log",
        log.to_str().unwrap(),
        "run",
        "--bundle",
        bundle.to_str().unwrap(),
        id,
    ]);
    (code, out, fs::read_to_string(&log).unwrap_or_default())
}

fn templates(rt: &Cli) -> Vec<String> {
    let (code, out) = rt.run(&["template", "ls", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap().to_string())
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn clones_of_one_template_are_each_their_own() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = cli(true);
    // `template build` makes it before any container; a second build finds it.
    let (code, built) = rt.run(&["template", "build"]);
    assert_eq!(code, Some(0), "{built}");
    let made_at = now();
    assert_eq!(templates(&rt).len(), 1);
    assert_eq!(rt.run(&["template", "build"]).1, built, "built once");

    // Time must pass for a stale clock to show: the template's clock stood still since.
    let wait = 10.0 - (now() - made_at);
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let script = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  cat /proc/sys/kernel/random/uuid; date +%s";
    let b = bundle(&rt, "b", script);
    let mut seen = Vec::new();
    for id in ["clone1", "clone2"] {
        let before = now();
        let (code, out, log) = run(&rt, &b, id);
        let after = now();
        assert_eq!(code, Some(0), "{out}\n{log}");
        assert!(!log.contains("template start failed"), "{log}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let guest_time: f64 = lines[2].parse().unwrap();
        // `date +%s` truncates: the guest's second lies within the run, give or take one.
        assert!(
            guest_time >= before.floor() - 1.0 && guest_time <= after + 1.0,
            "guest clock {guest_time} outside [{before}, {after}]"
        );
        seen.push((lines[0].to_string(), lines[1].to_string()));
    }
    assert_eq!(templates(&rt).len(), 1, "both restored from one template");
    assert_ne!(seen[0].0, seen[1].0, "same random bytes in two clones");
    assert_ne!(seen[0].1, seen[1].1, "same UUID in two clones");
    assert_eq!(seen[0].0.len(), 32);

    // rm removes it. (That a container makes a missing template is the next case's first
    // container: a boot here would show it again for ~35 s on PVM hosts.)
    assert_eq!(rt.run(&["template", "rm", "--all"]).0, Some(0));
    assert!(templates(&rt).is_empty());
}

#[test]
fn other_agents_get_other_templates_and_broken_ones_cost_a_warning() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = cli(true);
    let b = bundle(&rt, "b", "echo ran");
    // The first container in an empty template directory makes its template.
    let (code, out, log) = run(&rt, &b, "first");
    assert_eq!((code, out.as_str()), (Some(0), "ran\n"), "{log}");
    let first = templates(&rt);
    assert_eq!(first.len(), 1);

    // Another agent image (the same one with padding after the cpio trailer, which the kernel
    // ignores): its own template, the first one untouched.
    let other = rt.dir().join("other-agent.cpio");
    let mut bytes = fs::read(agent_initramfs()).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    fs::write(&other, bytes).unwrap();
    let other_rt = rt.dir().join("other.toml");
    let text = fs::read_to_string(rt.dir().join("config.toml")).unwrap();
    let ours = format!(
        "initramfs = {:?}\n",
        agent_initramfs().display().to_string()
    );
    let theirs = format!("initramfs = {:?}\n", other.display().to_string());
    assert!(text.contains(&ours));
    fs::write(&other_rt, text.replace(&ours, &theirs)).unwrap();
    let o = rt
        .cmd(&["run", "--bundle", b.to_str().unwrap(), "other"])
        .env("BULKHEAD_CONFIG", &other_rt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let both = templates(&rt);
    assert_eq!(both.len(), 2, "another agent, another template");
    assert!(both.contains(&first[0]));

    // A truncated template: one warning line, and the container runs all the same.
    let state = rt.dir().join("templates").join(&first[0]).join("state");
    let len = fs::metadata(&state).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, out, log) = run(&rt, &b, "after-damage");
    assert_eq!((code, out.as_str()), (Some(0), "ran\n"), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(&first[0]), "{log}");
    // And it was made again: the next container starts from it without a word.
    let (code, _, log) = run(&rt, &b, "after-remake");
    assert_eq!(code, Some(0));
    assert!(!log.contains("level=warning"), "{log}");
}

#[test]
fn templates_off_boots_every_container() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = cli(false);
    let b = bundle(&rt, "b", "echo cold");
    let (code, out, log) = run(&rt, &b, "cold");
    assert_eq!((code, out.as_str()), (Some(0), "cold\n"), "{log}");
    assert!(templates(&rt).is_empty(), "no template made");
}

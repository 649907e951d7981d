//! Template start through the shipped `bulkhead` CLI with real micro-VMs: containers restored
//! from one template are each their own (random bytes, UUIDs, wall clock), a template of
//! another kernel or agent is not used, a corrupted template costs a warning and never a
//! container, `bulkhead template ls|rm|build` manage them, and with templates off every
//! container boots. Each case has its own template directory, so it makes its templates
//! itself. Gated by `BULKHEAD_E2E=1`.

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

/// `template ls --format json`: each template's key, directory and meta (made when, in how
/// long: a template made again differs).
fn listed(rt: &Cli) -> Vec<serde_json::Value> {
    let (code, out) = rt.run(&["template", "ls", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_array().unwrap().clone()
}

fn templates(rt: &Cli) -> Vec<String> {
    listed(rt)
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

/// One template directory through its life, three boots in all (each ~35 s on PVM hosts), one
/// script (random bytes, a UUID, the guest's wall clock) in every container:
/// - the first container in the empty directory makes its template T1, and is its first clone;
/// - `template build` with another agent image makes that agent's template T2, T1 untouched, and
///   a second build finds T2 (not made again);
/// - a second clone of T1, made over 10 s later (T2's boot is that gap): the two clones read
///   other random bytes and UUIDs, and each guest's wall clock is the host's, not T1's;
/// - T1 truncated: the next container logs one warning naming it and runs all the same, T1 is
///   made again, and the container after starts from it without a word;
/// - `template ls` lists them, `template rm KEY` and `rm --all` remove them.
#[test]
fn a_template_directory_from_first_container_to_rm() {
    if !require(&vm_needs()) {
        return;
    }
    let rt = cli(true);
    let script = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                  cat /proc/sys/kernel/random/uuid; date +%s";
    let b = bundle(&rt, "b", script);
    // A restored clone: random bytes and UUID; its guest clock within the run.
    let clone = |id: &str| {
        let before = now();
        let (code, out, log) = run(&rt, &b, id);
        let after = now();
        assert_eq!(code, Some(0), "{out}\n{log}");
        assert!(
            !log.contains("level=warning"),
            "restored, not booted: {log}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0].len(), 32, "{out}");
        let guest_time: f64 = lines[2].parse().unwrap();
        // `date +%s` truncates: the guest's second lies within the run, give or take one.
        assert!(
            guest_time >= before.floor() - 1.0 && guest_time <= after + 1.0,
            "guest clock {guest_time} outside [{before}, {after}]"
        );
        ((lines[0].to_string(), lines[1].to_string()), after)
    };

    // The first container in an empty template directory makes its template (and is its clone).
    let (first, made_at) = clone("clone1");
    let t1 = listed(&rt);
    assert_eq!(t1.len(), 1);
    let t1 = t1[0].clone();
    let key1 = t1["key"].as_str().unwrap().to_string();

    // Another agent image (the same one with padding after the cpio trailer, which the kernel
    // ignores): `template build` makes its own template before any container of it, T1
    // untouched; a second build finds it.
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
    let build_other = || {
        let o = rt
            .cmd(&["template", "build"])
            .env("BULKHEAD_CONFIG", &other_rt)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let built = build_other();
    let both = listed(&rt);
    assert_eq!(both.len(), 2, "another agent, another template");
    assert!(both.contains(&t1), "T1 untouched");
    let t2 = both.into_iter().find(|t| t["key"] != t1["key"]).unwrap();
    let key2 = t2["key"].as_str().unwrap().to_string();
    assert!(built.starts_with(&key2), "{built}");
    assert_eq!(build_other(), built);
    assert!(
        listed(&rt).contains(&t2),
        "built once, found the second time"
    );

    // Time must pass for a stale clock to show (T1's clock stood still since it was made):
    // T2's boot took that long here; a faster host waits for the rest.
    let wait = 10.0 - (now() - made_at);
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let (second, _) = clone("clone2");
    let still = listed(&rt);
    assert_eq!(still.len(), 2);
    assert!(still.contains(&t1), "both clones of one T1, not made again");
    assert!(still.contains(&t2), "T2 untouched");
    assert_ne!(first.0, second.0, "same random bytes in two clones");
    assert_ne!(first.1, second.1, "same UUID in two clones");

    // A truncated template: one warning line, and the container runs all the same.
    let state = rt.dir().join("templates").join(&key1).join("state");
    let len = fs::metadata(&state).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, out, log) = run(&rt, &b, "after-damage");
    assert_eq!(code, Some(0), "{out}\n{log}");
    assert_eq!(out.lines().count(), 3, "{out}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains(&key1), "{log}");
    // And it was made again: the next container starts from it without a word.
    let remade = listed(&rt);
    assert_eq!(remade.len(), 2, "T1 made again");
    assert!(remade.contains(&t2), "T2 untouched");
    assert!(!remade.contains(&t1), "T1 made again");
    clone("after-remake");

    // rm removes one by its key, or all.
    assert_eq!(
        rt.run(&["template", "rm", &key2]),
        (Some(0), format!("{key2}\n"))
    );
    assert_eq!(templates(&rt), [key1]);
    assert_eq!(rt.run(&["template", "rm", "--all"]).0, Some(0));
    assert!(templates(&rt).is_empty());
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

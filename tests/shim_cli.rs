//! The shipped `bulkhead` binary runs a container in a real micro-VM (issue 5): `create`
//! (pid file, stdout relayed), `state`, `start`, `exec` (reading and writing a bind-mounted
//! volume through the virtio-fs share; `/dev/null` and friends work on a `/dev` that is the
//! share itself), `kill` (the monitor exits 137), `delete`, and nothing left behind, not even
//! the console log. One guest boot (~20 s on PVM-backed KVM). Gated by `BULKHEAD_E2E=1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::process::Command;

use bulkhead_tests::cli::{become_subreaper, wait_status, Cli};
use bulkhead_tests::{require, vm_needs};
use serde_json::json;

#[test]
fn bulkhead_runs_a_container_in_a_micro_vm() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();

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
            {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}]}
    });
    fs::write(d.join("bundle/config.json"), spec.to_string()).unwrap();

    let out = d.join("init.out");
    let pid = rt.create("c", &d.join("bundle"), &out).unwrap();
    let (code, state) = rt.run(&["state", "c"]);
    assert_eq!(code, Some(0));
    assert!(state.contains("\"created\""), "{state}");
    assert_eq!(rt.run(&["start", "c"]).0, Some(0));

    let diag = || {
        format!(
            "init output: {:?}\nstate: {}\nconsole tail: {}",
            fs::read_to_string(&out).unwrap_or_default(),
            rt.run(&["state", "c"]).1,
            rt.console("c")
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
    // No tmpfs on /dev: the share refuses device nodes, so they are the guest's, bound.
    let (code, devs) = rt.run(&[
        "exec",
        "c",
        "sh",
        "-c",
        "echo x > /dev/null && busybox head -c 3 /dev/zero | busybox wc -c; \
         busybox stat -c %F /dev/null /dev/urandom",
    ]);
    assert_eq!(
        (code, devs.as_str()),
        (
            Some(0),
            "3\ncharacter special file\ncharacter special file\n"
        ),
        "{}",
        diag()
    );
    let host = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .into_owned();
    let (code, release) = rt.run(&["exec", "c", "uname", "-r"]);
    assert_eq!(code, Some(0), "{release}");
    assert!(
        !release.trim().is_empty() && release != host,
        "guest kernel {release:?}"
    );

    // The guest's console is in its log while the container runs (a booted agent says it is
    // ready, one restored from a template that it was restored)…
    let console = rt.console("c");
    assert!(
        console.contains("bulkhead-agent: ready") || console.contains("bulkhead-agent: restored"),
        "no console log at {}: {:?}",
        rt.console_path("c").display(),
        rt.log_files()
    );
    assert_eq!(rt.run(&["kill", "c", "KILL"]).0, Some(0));
    assert_eq!(wait_status(pid), 137);
    let init = fs::read_to_string(&out).unwrap();
    assert!(init.ends_with("init 1\n"), "init said {init:?}");
    assert_eq!(rt.run(&["delete", "c"]).0, Some(0));
    rt.assert_gone("c");
    // …and the default config keeps no log of a container that ended normally.
    assert_eq!(
        rt.log_files(),
        Vec::<std::path::PathBuf>::new(),
        "logs left"
    );
}

/// `bulkhead spec` (no VM): writes runc's default config.json, refuses to overwrite it, and
/// takes `--rootless` after the command as runc does.
#[test]
fn spec_writes_a_default_bundle() {
    let rt = Cli::new();
    for (dir, rootless) in [("plain", false), ("rootless", true)] {
        let bundle = rt.dir().join(dir);
        fs::create_dir_all(&bundle).unwrap();
        let b = bundle.to_str().unwrap();
        let args: &[&str] = if rootless {
            &["spec", "--rootless", "--bundle", b]
        } else {
            &["spec", "--bundle", b]
        };
        let (code, out) = rt.run(args);
        assert_eq!(code, Some(0), "{out}");
        let spec: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["process"]["args"][0], "sh");
        let user_ns = spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user");
        assert_eq!(user_ns, rootless, "{spec}");
        let (code, out) = rt.run(args);
        assert_eq!(code, Some(1));
        assert!(out.contains("exists"), "{out}");
    }
}

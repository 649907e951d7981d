//! A monitor that gives up root (`monitor_uid`/`monitor_gid`), seen from the host (part of the
//! `hostile_vm` suite; see its module docs).

use super::*;

/// A user and group that own nothing on the host.
const MONITOR_ID: u32 = 4242;

#[test]
fn the_monitor_gives_up_root_for_the_configured_user() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let rt = Cli::with_config(&format!(
        "monitor_uid = {MONITOR_ID}\nmonitor_gid = {MONITOR_ID}\nkeep_logs = true\n"
    ));
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let bundle = write_bundle(&d.join("b"), &rootfs, "echo ready; sleep 100000", json!({}));
    let (log, out) = (d.join("user.log"), d.join("user.out"));
    let pid = create_logged(&rt, "user", &bundle, &log, &out, true);
    let ids = |status: &str, key: &str| -> Vec<u32> {
        status_field(status, key)
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    // Root for its set-up (mounts, network, hooks), until the start; the user's ids are its
    // saved ones already (real, effective, saved, file-system).
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(ids(&status, "Uid:"), [0, 0, MONITOR_ID, 0]);
    assert_eq!(ids(&status, "Gid:"), [0, 0, MONITOR_ID, 0]);
    let (code, text) = rt.run(&["start", "user"]);
    assert_eq!(
        code,
        Some(0),
        "start: {text}\nlog: {}",
        fs::read_to_string(&log).unwrap()
    );
    wait_for_text(&out, "ready");

    // Every thread of it (the VM's, the control thread, any left from hooks) is the user, with
    // no supplementary group and no capability. (KVM's own kernel worker of the VM, listed
    // with them as `kvm-nx-lpage-re…`, is the kernel's.)
    let mut threads = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = fs::read_to_string(task.join("comm")).unwrap();
        if comm.starts_with("kvm-") {
            continue;
        }
        let st = fs::read_to_string(task.join("status")).unwrap();
        assert_eq!(ids(&st, "Uid:"), [MONITOR_ID; 4], "{st}");
        assert_eq!(ids(&st, "Gid:"), [MONITOR_ID; 4], "{st}");
        assert_eq!(status_field(&st, "Groups:"), "", "{st}");
        for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(status_field(&st, key), "0000000000000000", "{key}: {st}");
        }
        threads += 1;
    }
    // The control thread's bounding set is empty too (the VM's threads have nothing to bound:
    // no capability, no execve in their lists).
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "CapBnd:"), "0000000000000000");
    assert!(threads >= 4, "{threads} threads");
    // What it was handed, and what stays root's.
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };
    let state_dir = d.join("root/user");
    assert_eq!(owner(&state_dir), (0, MONITOR_ID, 0o710));
    assert_eq!(owner(&state_dir.join("state.json")).0, 0);
    assert_eq!(owner(&state_dir.join("live")).0, MONITOR_ID);
    assert_eq!(owner(&rt.console_path("user")).0, MONITOR_ID);
    let log_dir = rt.console_path("user").parent().unwrap().to_path_buf();
    assert_eq!(owner(&log_dir), (0, MONITOR_ID, 0o1770));

    // Everything still works as that user: exec (stdio reopened by the CLI, streams over the
    // VM's socket), stats, update (the host cgroup by the CLI), pause, resume, the live status.
    assert_eq!(
        rt.run(&["exec", "user", "echo", "from-exec"]),
        (Some(0), "from-exec\n".into())
    );
    let (code, text) = rt.run(&["events", "--stats", "user"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(rt.run(&["update", "--pids-limit", "20", "user"]).0, Some(0));
    assert_eq!(rt.run(&["pause", "user"]).0, Some(0));
    assert!(rt.run(&["state", "user"]).1.contains("\"paused\""));
    assert_eq!(rt.run(&["resume", "user"]).0, Some(0));
    assert!(rt.run(&["state", "user"]).1.contains("\"running\""));

    // The end: 137, the log's last lines (no seccomp stop), timings in the shared log
    // directory, and delete leaves nothing (the virtio-fs server, root, ended with its socket).
    let server = fs_server_of(pid);
    assert_eq!(rt.run(&["kill", "user", "KILL"]).0, Some(0));
    assert_eq!(exit_status(pid), 137);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("monitor locked down"), "{text}");
    assert!(!text.contains("seccomp"), "{text}");
    assert!(text.contains("vm ended"), "{text}");
    assert!(rt.timings("user").contains("torn_down"), "timings.json");
    assert_eq!(owner(&d.join("logs/user.timings.json")).0, MONITOR_ID);
    assert!(
        !Path::new(&format!("/proc/{server}")).exists(),
        "fs server left"
    );
    assert_eq!(rt.run(&["delete", "user"]).0, Some(0));
    rt.assert_gone("user");
}

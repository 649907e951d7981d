//! The virtio-fs server process of a running container, seen from the host (part of the
//! `hostile_vm` suite; see its module docs).

use super::*;

/// The pid of the virtio-fs server process the monitor `monitor` started (a child whose
/// `argv[1]` is the server's hidden subcommand).
pub(super) fn fs_server_of(monitor: i32) -> i32 {
    let sub = bulkhead_vmm::devices::virtio::fs::server::SUBCOMMAND;
    let mut found = Vec::new();
    for task in fs::read_dir(format!("/proc/{monitor}/task")).unwrap() {
        let children =
            fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let cmdline = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if cmdline.split(|&b| b == 0).nth(1) == Some(sub.as_bytes()) {
                found.push(child.parse::<i32>().unwrap());
            }
        }
    }
    assert_eq!(found.len(), 1, "fs servers of monitor {monitor}: {found:?}");
    found[0]
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_ended(pid: i32, what: &str) {
    let t = Instant::now();
    while !ended(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what} {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_fs_server_is_a_process_that_reaches_only_the_share() {
    use std::os::unix::fs::MetadataExt;
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    const SHARE_FDS: u64 = 400;
    let rt = Cli::with_config(&format!("share_max_open_files = {SHARE_FDS}\n"));
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let vol = d.join("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("file"), b"x").unwrap();
    let bundle = write_bundle(
        &d.join("b"),
        &rootfs,
        "cat /vol/file && echo ready; sleep 100000",
        json!({"mounts": [{"destination": "/vol", "type": "bind", "source": vol,
                            "options": ["rbind", "rw"]}]}),
    );
    let out = d.join("srv.out");
    let monitor = rt.create("srv", &bundle, &out).unwrap();
    assert_eq!(rt.run(&["start", "srv"]).0, Some(0));
    wait_for_text(&out, "ready");

    let srv = fs_server_of(monitor);
    assert_ne!(srv, monitor);
    let status = fs::read_to_string(format!("/proc/{srv}/status")).unwrap();
    // CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID.
    for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(status_field(&status, key), "00000000000000df", "{key}");
    }
    for key in ["CapInh:", "CapAmb:"] {
        assert_eq!(status_field(&status, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&status, "Seccomp:"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Threads:"), "1");
    // PID 1 of a PID namespace of its own.
    assert_eq!(
        status_field(&status, "NSpid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [srv.to_string().as_str(), "1"]
    );
    let limits = fs::read_to_string(format!("/proc/{srv}/limits")).unwrap();
    let nofile = (SHARE_FDS + bulkhead_vmm::devices::virtio::fs::server::FD_RESERVE).to_string();
    assert_eq!(limit(&limits, "Max open files"), (nofile.clone(), nofile));
    assert_eq!(
        limit(&limits, "Max core file size"),
        ("0".into(), "0".into())
    );

    // Its root is the share (the container's state directory's `share`).
    let share = d.join("root/srv/share");
    let root = fs::metadata(format!("/proc/{srv}/root")).unwrap();
    let host = fs::metadata(&share).unwrap();
    assert_eq!((root.dev(), root.ino()), (host.dev(), host.ino()));
    let names = |p: &Path| -> std::collections::BTreeSet<String> {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(Path::new(&format!("/proc/{srv}/root"))),
        names(&share)
    );

    // Its fds: stdio (/dev/null, its stderr pipe), its socket, /dev/null for the crate's
    // copies, its own /proc/self/fd (a procfs that is not the host's), and files it reaches
    // from its root — nothing else of the monitor.
    use std::os::unix::fs::FileTypeExt;
    let host_proc = fs::metadata("/proc").unwrap().dev();
    let null = fs::metadata("/dev/null").unwrap().rdev();
    let mut sockets = 0;
    let mut own_proc = 0;
    let mut share_fds = 0;
    for fd in fs::read_dir(format!("/proc/{srv}/fd")).unwrap() {
        let fd = fd.unwrap().path();
        let link = fs::read_link(&fd).unwrap().to_string_lossy().into_owned();
        if link.starts_with("socket:") {
            sockets += 1;
            continue;
        }
        if link.starts_with("pipe:") {
            continue;
        }
        let target = fs::metadata(&fd).unwrap();
        if target.file_type().is_char_device() && target.rdev() == null {
            continue;
        }
        let fs_type = nix::sys::statfs::statfs(&fd).unwrap().filesystem_type();
        if fs_type == nix::sys::statfs::PROC_SUPER_MAGIC {
            assert_ne!(
                target.dev(),
                host_proc,
                "{fd:?} -> {link} is the host's /proc"
            );
            own_proc += 1;
            continue;
        }
        // Reachable from its root at the path the kernel gives: in the share.
        let inside = fs::symlink_metadata(format!("/proc/{srv}/root{link}"))
            .unwrap_or_else(|e| panic!("{fd:?} -> {link}: not in the share: {e}"));
        assert_eq!(
            (inside.dev(), inside.ino()),
            (target.dev(), target.ino()),
            "{link}"
        );
        share_fds += 1;
    }
    assert_eq!(sockets, 1, "its socket only");
    // `/proc/self/fd` (and the crate's `/proc/self/mountinfo`): its own procfs.
    assert!(own_proc >= 1, "its /proc/self/fd");
    assert!(share_fds > 0, "the share's fds");
    // Its /proc shows itself alone.
    let proc_fd = fs::read_dir(format!("/proc/{srv}/fd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            nix::sys::statfs::statfs(p).unwrap().filesystem_type()
                == nix::sys::statfs::PROC_SUPER_MAGIC
                && p.is_dir()
        })
        .unwrap();
    assert_eq!(
        names(&proc_fd.join("../..")),
        ["1", "self", "thread-self"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // What the process costs (reported, not checked: the host's page cache decides).
    let rollup = fs::read_to_string(format!("/proc/{srv}/smaps_rollup")).unwrap_or_default();
    for key in ["Rss:", "Pss:", "Private_Dirty:"] {
        eprintln!("fs server {key} {}", status_field(&rollup, key));
    }

    // It dies with the monitor, however the monitor ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(exit_status(monitor), 137);
    wait_ended(srv, "fs server");
    assert_eq!(rt.run(&["delete", "--force", "srv"]).0, Some(0));
    rt.assert_gone("srv");
}

#[test]
fn a_dead_fs_server_ends_its_container_with_one_line() {
    if !require(&vm_needs()) {
        return;
    }
    become_subreaper();
    let rt = Cli::new();
    let d = rt.dir().to_path_buf();
    let rootfs = busybox_rootfs(&d.join("rootfs"));
    let bundle = write_bundle(&d.join("b"), &rootfs, "echo ready; sleep 100000", json!({}));
    let (log, out) = (d.join("dead.log"), d.join("dead.out"));
    let monitor = create_logged(&rt, "dead", &bundle, &log, &out, false);
    assert_eq!(rt.run(&["start", "dead"]).0, Some(0));
    wait_for_text(&out, "ready");

    let srv = fs_server_of(monitor);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(srv), nix::sys::signal::SIGKILL).unwrap();
    // The monitor stops the VM and ends as a failure.
    let status = exit_status(monitor);
    assert_ne!(status, 0);
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("virtio-fs server of share"))
        .collect();
    // The monitor reports it as the container's error and as the VM's end: one line each,
    // with the share, the server's pid and how it ended.
    assert!(!lines.is_empty(), "{text}");
    for line in lines {
        assert!(
            line.contains(&format!(
                "failed (the peer closed the connection): pid {srv} killed by SIGKILL"
            )),
            "{line}"
        );
    }
    let (code, state) = rt.run(&["state", "dead"]);
    assert_eq!(code, Some(0), "{state}");
    assert!(state.contains("\"stopped\""), "{state}");
    assert_eq!(rt.run(&["delete", "dead"]).0, Some(0));
    rt.assert_gone("dead");
    assert!(ended(srv));
}

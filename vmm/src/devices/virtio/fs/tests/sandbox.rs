//! The server's confinement as the kernel reports it (here on a thread of the test process,
//! named "fss-<tag>"; the process the VMM starts is checked end to end in
//! `tests/hostile_vm.rs`), the queue thread's ("fs-<tag>"), and the seccomp filters' verdicts.

use std::path::Path;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::client::*;
use super::harness::*;
use crate::devices::virtio::fs::sandbox::KEPT_CAPABILITIES;
use crate::devices::virtio::fs::seccomp;

/// The thread id of the thread named `<prefix><tag>` (cut to 15 bytes): "fss-" for the
/// server, "fs-" for the queue thread.
fn thread_tid(prefix: &str, tag: &str) -> String {
    let comm = format!("{prefix}{tag}");
    let comm = &comm[..comm.len().min(15)];
    let tids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let tid = e.unwrap().file_name().into_string().unwrap();
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            (name.trim_end() == comm).then_some(tid)
        })
        .collect();
    assert_eq!(tids.len(), 1, "worker threads named {comm:?}: {tids:?}");
    tids[0].clone()
}

fn status_field(tid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in status"))
        .trim()
        .to_owned()
}

#[test]
fn worker_is_confined_and_the_rest_of_the_process_is_not() {
    if !can_confine("worker_is_confined_and_the_rest_of_the_process_is_not") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| std::fs::write(t.join("share/f"), b"x").unwrap(),
        |c| c.tag = "sbx-rw".into(),
    );
    let tid = thread_tid("fss-", "sbx-rw");
    // The queue thread (guest memory, the queues): no capability at all, its own list.
    let queue = thread_tid("fs-", "sbx-rw");
    assert_eq!(status_field(&queue, "Seccomp"), "2");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(status_field(&queue, set), "0000000000000000", "queue {set}");
    }

    assert_eq!(status_field(&tid, "Seccomp"), "2", "seccomp filter mode");
    assert_eq!(status_field(&tid, "NoNewPrivs"), "1");
    let kept: u64 = KEPT_CAPABILITIES.iter().map(|c| 1u64 << c.index()).sum();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let v = u64::from_str_radix(&status_field(&tid, set), 16).unwrap();
        assert_eq!(v, kept, "{set}: {v:#x}");
    }
    assert_eq!(status_field(&tid, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&tid, "CapAmb"), "0000000000000000");
    // Process-directed signals are blocked on the worker (they go to other threads).
    let blocked = u64::from_str_radix(&status_field(&tid, "SigBlk"), 16).unwrap();
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGCHLD,
        libc::SIGUSR1,
    ] {
        assert_ne!(
            blocked & (1 << (sig - 1)),
            0,
            "signal {sig} not blocked: {blocked:#x}"
        );
    }

    // Its own mount namespace with one mount: the share at /, with the hardening options.
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    assert_ne!(
        ns(&format!("/proc/self/task/{tid}/ns/mnt")),
        ns("/proc/self/ns/mnt")
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/self/task/{tid}/mountinfo")).unwrap();
    let mounts: Vec<&str> = mountinfo.lines().collect();
    assert_eq!(mounts.len(), 1, "{mountinfo}");
    let fields: Vec<&str> = mounts[0].split(' ').collect();
    assert_eq!(fields[4], "/", "mount point: {mountinfo}");
    for opt in ["rw", "nosuid", "nodev", "noexec", "nosymfollow"] {
        assert!(
            fields[5].split(',').any(|o| o == opt),
            "{opt} in {}",
            fields[5]
        );
    }
    // Its root directory is the share.
    assert_eq!(
        std::fs::read_dir(format!("/proc/self/task/{tid}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        ["f"]
    );

    // Meanwhile this thread (like the VMM's others) still sees the host.
    assert!(Path::new("/proc/self/exe").exists());
    assert!(h.outside.join("secret").exists());
    let f = h.lookup(ROOT, "f").unwrap().nodeid;
    assert_eq!(h.read(f, 0, 0, 10).unwrap(), b"x");
}

#[test]
fn read_only_share_is_mounted_read_only_for_the_worker() {
    if !can_confine("read_only_share_is_mounted_read_only_for_the_worker") {
        return;
    }
    let mem = test_mem();
    let _h = Harness::with(
        &mem,
        |t| {
            // A volume mounted inside the share: it must come along, read-only too.
            std::fs::create_dir(t.join("share/vol")).unwrap();
            nix::mount::mount(
                Some(&t.join("outside")),
                &t.join("share/vol"),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        },
        |c| {
            c.tag = "sbx-ro".into();
            c.read_only = true;
        },
    );
    let tid = thread_tid("fss-", "sbx-ro");
    let mountinfo = std::fs::read_to_string(format!("/proc/self/task/{tid}/mountinfo")).unwrap();
    let mounts: Vec<Vec<&str>> = mountinfo.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(mounts.len(), 2, "{mountinfo}");
    assert_eq!((mounts[0][4], mounts[1][4]), ("/", "/vol"));
    for m in &mounts {
        assert!(m[5].split(',').any(|o| o == "ro"), "{}", m[5]);
        assert!(m[5].split(',').any(|o| o == "nosymfollow"), "{}", m[5]);
    }
    // The host's own mount is untouched (still read-write, still there).
    let vol = _h.tmp.path().join("share/vol");
    std::fs::write(vol.join("host-write"), b"ok").unwrap();
    std::fs::remove_file(vol.join("host-write")).unwrap();
    nix::mount::umount2(&vol, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// Runs `syscall(nr, args)` in a forked child under the server's filter; returns how it ended.
fn run_filtered(nr: libc::c_long, args: [libc::c_long; 3]) -> WaitStatus {
    run_under(seccomp::server_filter().unwrap(), nr, args)
}

fn run_under(
    filter: crate::seccomp::BpfProgram,
    nr: libc::c_long,
    args: [libc::c_long; 3],
) -> WaitStatus {
    // SAFETY: the child only makes raw system calls (prctl, seccomp, the probe, exit) before it
    // exits, all async-signal-safe; it touches no lock another thread may hold.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = if seccomp::install(&filter).is_ok() {
                0
            } else {
                3
            };
            // SAFETY: raw syscalls with plain integer arguments.
            unsafe {
                libc::syscall(nr, args[0], args[1], args[2], 0, 0, 0);
                libc::syscall(libc::SYS_exit, code);
            }
            unreachable!("exit returned")
        }
        ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

#[test]
fn seccomp_filter_allows_file_work_and_kills_the_rest() {
    // A forbidden call ends the process through the SIGSYS report (see crate::seccomp).
    let killed = |s: WaitStatus| matches!(s, WaitStatus::Exited(_, c) if c == crate::seccomp::report::FORBIDDEN_SYSCALL_EXIT);
    let fine = |s: WaitStatus| matches!(s, WaitStatus::Exited(_, 0));
    for nr in [libc::SYS_getpid, libc::SYS_fsync, libc::SYS_close] {
        let s = run_filtered(nr, [-1, 0, 0]);
        assert!(fine(s), "syscall {nr}: {s:?}");
    }
    for nr in [
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_execve,
        libc::SYS_socket,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_chroot,
        libc::SYS_pivot_root,
        libc::SYS_ptrace,
        libc::SYS_clone,
        libc::SYS_ioctl,
        libc::SYS_open,
        libc::SYS_process_vm_writev,
        libc::SYS_capset,
        libc::SYS_kill,
        libc::SYS_connect,
        libc::SYS_socketpair,
        libc::SYS_epoll_wait,
    ] {
        let s = run_filtered(nr, [-1, 0, 0]);
        assert!(killed(s), "syscall {nr} must kill: {s:?}");
    }
    // Its socket: messages only.
    for nr in [libc::SYS_sendmsg, libc::SYS_recvmsg] {
        let s = run_filtered(nr, [-1, 0, 0]);
        assert!(fine(s), "syscall {nr}: {s:?}");
    }
    // Memory: never executable.
    let rw = i64::from(libc::PROT_READ | libc::PROT_WRITE);
    let rwx = rw | i64::from(libc::PROT_EXEC);
    assert!(fine(run_filtered(libc::SYS_mprotect, [0, 0, rw])));
    assert!(killed(run_filtered(libc::SYS_mprotect, [0, 0, rwx])));
    assert!(killed(run_filtered(libc::SYS_mmap, [0, 4096, rwx])));
}

#[test]
fn the_queue_thread_filter_allows_messages_and_kill_of_its_server_only() {
    let killed = |s: WaitStatus| matches!(s, WaitStatus::Exited(_, c) if c == crate::seccomp::report::FORBIDDEN_SYSCALL_EXIT);
    let fine = |s: WaitStatus| matches!(s, WaitStatus::Exited(_, 0));
    // The server it may kill: a pid that does not exist (the probe must not kill anything).
    let server = i32::MAX;
    let q = || seccomp::queue_filter(Some(server)).unwrap();
    for nr in [
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_epoll_pwait,
        libc::SYS_wait4,
    ] {
        let s = run_under(q(), nr, [-1, 0, 0]);
        assert!(fine(s), "syscall {nr}: {s:?}");
    }
    // SIGKILL to its server only: not another signal, not another process (probed with a pid
    // that does not exist either: never -1, which a broken list would let kill every process),
    // and nothing at all for a server on a thread.
    assert!(fine(run_under(
        q(),
        libc::SYS_kill,
        [i64::from(server), 9, 0]
    )));
    assert!(killed(run_under(
        q(),
        libc::SYS_kill,
        [i64::from(server), 15, 0]
    )));
    assert!(killed(run_under(
        q(),
        libc::SYS_kill,
        [i64::from(server - 1), 9, 0]
    )));
    let threaded = seccomp::queue_filter(None).unwrap();
    assert!(killed(run_under(
        threaded,
        libc::SYS_kill,
        [i64::from(server), 9, 0]
    )));
    // A kick to another process (one that does not exist) is refused.
    let kick = i64::from(crate::kvm::kick::kick_signal());
    let other = i64::from(server - 1);
    assert!(killed(run_under(
        q(),
        libc::SYS_tgkill,
        [other, other, kick]
    )));
    for nr in [
        libc::SYS_openat,
        libc::SYS_socket,
        libc::SYS_execve,
        libc::SYS_clone,
        libc::SYS_ptrace,
        libc::SYS_ioctl,
    ] {
        let s = run_under(q(), nr, [-1, 0, 0]);
        assert!(killed(s), "syscall {nr} must kill: {s:?}");
    }
}

#[test]
fn a_device_raises_the_open_file_limit() {
    if !can_confine("a_device_raises_the_open_file_limit") {
        return;
    }
    let mem = test_mem();
    let _h = Harness::with(&mem, |_| {}, |c| c.tag = "rlim".into());
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!(soft, hard);
}

//! The lists in a forked child: what a thread does passes, what it never does ends the
//! process with the report line.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};
use seccompiler::BpfProgram;

use super::lists::numbers;
use super::report::{self, FORBIDDEN_SYSCALL_EXIT};
use super::{events_filter, install, vcpu_filter};

/// How a child that made one syscall under a filter ended, and what it reported.
struct Outcome {
    status: WaitStatus,
    report: String,
}

/// Forks; the child installs `filter` as thread `name`, reports to a pipe, makes
/// `syscall(nr, args)` and exits 0.
fn run_filtered(
    filter: &BpfProgram,
    name: &'static str,
    nr: libc::c_long,
    args: [u64; 3],
) -> Outcome {
    let (r, w) = pipe().unwrap();
    // SAFETY: the child makes raw system calls and formats into a stack buffer before it
    // exits; it touches no lock another thread of the test process may hold.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(r);
            let w: &'static OwnedFd = Box::leak(Box::new(w));
            report::report_to(w.as_fd(), None);
            let code = if install(filter, name).is_ok() { 0 } else { 3 };
            // SAFETY: raw syscalls with plain integer arguments.
            unsafe {
                libc::syscall(nr, args[0], args[1], args[2], 0, 0, 0);
                libc::syscall(libc::SYS_exit_group, code);
            }
            unreachable!("exit returned")
        }
        ForkResult::Parent { child } => {
            drop(w);
            let status = waitpid(child, None).unwrap();
            let mut report = String::new();
            // SAFETY: `r` is ours; the File takes it over.
            let mut f = unsafe { std::fs::File::from_raw_fd(r.as_raw_fd()) };
            std::mem::forget(r);
            f.read_to_string(&mut report).unwrap();
            Outcome { status, report }
        }
    }
}

fn allowed(o: &Outcome) -> bool {
    matches!(o.status, WaitStatus::Exited(_, 0)) && o.report.is_empty()
}

fn stopped(o: &Outcome, name: &str, nr: libc::c_long) -> bool {
    matches!(o.status, WaitStatus::Exited(_, c) if c == FORBIDDEN_SYSCALL_EXIT)
        && o.report
            .contains(&format!("the {name} thread made system call {nr} "))
        && o.report.ends_with('\n')
}

#[test]
fn a_vcpu_thread_runs_kvm_and_nothing_else() {
    let f = vcpu_filter(libc::SIGRTMIN() + 1).unwrap();
    // Allowed calls on a bad fd fail with EBADF and the child goes on.
    for (nr, args) in [
        (libc::SYS_ioctl, [u64::MAX, numbers::KVM_RUN, 0]),
        (libc::SYS_ioctl, [u64::MAX, numbers::KVM_GET_REGS, 0]),
        (libc::SYS_write, [u64::MAX, 0, 0]),
        (libc::SYS_close, [u64::MAX, 0, 0]),
        (libc::SYS_getpid, [0; 3]),
    ] {
        let o = run_filtered(&f, "vcpu", nr, args);
        assert!(
            allowed(&o),
            "syscall {nr} {args:?}: {:?} {}",
            o.status,
            o.report
        );
    }
    let create_new = (libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY) as u64;
    let o = run_filtered(&f, "vcpu", libc::SYS_openat, [u64::MAX, 0, create_new]);
    assert!(allowed(&o), "{:?}", o.status);
    // 0x4008AE89 is KVM_SET_MSRS; 0xAE01 KVM_CREATE_VM.
    for (nr, args) in [
        (libc::SYS_ioctl, [u64::MAX, 0x4008_AE89, 0]),
        (libc::SYS_ioctl, [u64::MAX, 0xAE01, 0]),
        (libc::SYS_ioctl, [u64::MAX, libc::TIOCSTI, 0]),
        (libc::SYS_openat, [u64::MAX, 0, libc::O_RDWR as u64]),
        (
            libc::SYS_openat,
            [u64::MAX, 0, (libc::O_CREAT | libc::O_WRONLY) as u64],
        ),
        (libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0]),
        (libc::SYS_execve, [0; 3]),
        (libc::SYS_clone, [0; 3]),
        (libc::SYS_ptrace, [0; 3]),
        (libc::SYS_tgkill, [0, 0, libc::SIGKILL as u64]),
        // The kick signal, but to another process (one that does not exist).
        (
            libc::SYS_tgkill,
            [
                i32::MAX as u64,
                i32::MAX as u64,
                (libc::SIGRTMIN() + 1) as u64,
            ],
        ),
        (libc::SYS_unlink, [0; 3]),
        (libc::SYS_fcntl, [u64::MAX, libc::F_SETOWN as u64, 1]),
        (
            libc::SYS_mprotect,
            [0, 0, (libc::PROT_READ | libc::PROT_EXEC) as u64],
        ),
    ] {
        let o = run_filtered(&f, "vcpu", nr, args);
        assert!(
            stopped(&o, "vcpu", nr),
            "syscall {nr} {args:?} must stop: {:?} {}",
            o.status,
            o.report
        );
    }
}

#[test]
fn the_event_loop_has_unix_sockets_and_no_files() {
    let f = events_filter().unwrap();
    for (nr, args) in [
        (libc::SYS_epoll_wait, [u64::MAX, 0, 0]),
        (libc::SYS_accept4, [u64::MAX, 0, 0]),
        (libc::SYS_ioctl, [u64::MAX, libc::FIONBIO, 0]),
        (libc::SYS_ioctl, [u64::MAX, numbers::TUNSETOFFLOAD, 0]),
        // A unix socket (then closed by the exit).
        (
            libc::SYS_socket,
            [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0],
        ),
    ] {
        let o = run_filtered(&f, "device event loop", nr, args);
        assert!(
            allowed(&o),
            "syscall {nr} {args:?}: {:?} {}",
            o.status,
            o.report
        );
    }
    for (nr, args) in [
        (
            libc::SYS_socket,
            [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0],
        ),
        (libc::SYS_openat, [u64::MAX, 0, 0]),
        (libc::SYS_ioctl, [u64::MAX, numbers::KVM_RUN, 0]),
        // TUNSETIFF: taps are created by the caller of attach_net, never on the loop.
        (libc::SYS_ioctl, [u64::MAX, 0x4004_54ca, 0]),
        (libc::SYS_execve, [0; 3]),
        (libc::SYS_unlink, [0; 3]),
        (libc::SYS_fcntl, [u64::MAX, libc::F_SETOWN as u64, 1]),
        (libc::SYS_fcntl, [u64::MAX, 10 /* F_SETSIG */, 9]),
    ] {
        let o = run_filtered(&f, "device event loop", nr, args);
        assert!(
            stopped(&o, "device event loop", nr),
            "syscall {nr} {args:?} must stop: {:?} {}",
            o.status,
            o.report
        );
    }
}

#[test]
fn kvm_request_numbers_are_the_kernels() {
    // From <linux/kvm.h> as strace decodes them.
    assert_eq!(numbers::KVM_RUN, 0xAE80);
    assert_eq!(numbers::KVM_GET_REGS, 0x8090_AE81);
    assert_eq!(numbers::KVM_GET_XSAVE, 0x9000_AEA4);
}

#[test]
fn a_report_line_is_cut_but_always_ends_the_line() {
    fn long(out: &mut dyn std::fmt::Write, _: &str, _: i64) -> std::fmt::Result {
        for _ in 0..100 {
            out.write_str("0123456789")?;
        }
        Ok(())
    }
    let line = report::line_of(long, "vcpu", 1);
    assert_eq!(line.len(), 512);
    assert_eq!(line.last(), Some(&b'\n'));
    let line = report::line_of(report::default_format, "vcpu", 41);
    let text = String::from_utf8(line).unwrap();
    assert!(
        text.starts_with("seccomp: the vcpu thread made system call 41 ("),
        "{text}"
    );
}

#[test]
fn a_confined_vm_thread_has_no_capabilities_and_its_list() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("BULKHEAD_E2E").is_none(), "needs root");
        return;
    }
    let filter = vcpu_filter(libc::SIGRTMIN() + 1).unwrap();
    let (hold_r, hold_w) = pipe().unwrap();
    let (ready_r, ready_w) = pipe().unwrap();
    // SAFETY: the child confines itself and then only makes raw reads, writes and exit.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(hold_w);
            let code = if super::confine_thread(&filter, "vcpu").is_ok() {
                0
            } else {
                3
            };
            let mut b = [0u8; 1];
            // SAFETY: raw syscalls on our own fds and buffer.
            unsafe {
                libc::write(ready_w.as_raw_fd(), b"r".as_ptr().cast(), 1);
                libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                libc::syscall(libc::SYS_exit_group, code);
            }
            unreachable!("exit returned")
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(ready_r.as_raw_fd(), &mut b);
            let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
            drop(hold_w);
            let end = waitpid(child, None).unwrap();
            assert_eq!(end, WaitStatus::Exited(child, 0));
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string()
            };
            for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
                assert_eq!(field(set), "0000000000000000", "{set}");
            }
            assert_eq!(field("Seccomp:"), "2");
            assert_eq!(field("NoNewPrivs:"), "1");
        }
    }
}

/// Forks; the child (root, with 1234 as its saved user and group ids and no supplementary
/// group, as the monitor prepares itself) starts a thread confined as a vCPU (no capability,
/// its list built after `expect_identity(1234, 1234)` when `expected`), then makes the whole
/// process user 1234 with glibc's calls (their setxid broadcast has every thread make the same
/// syscall). Returns how the child ended: 0 when both threads then are user and group 1234.
fn change_user_under_the_vcpu_list(expected: bool) -> WaitStatus {
    const ID: u32 = 1234;
    // SAFETY: the child is a copy of this test's thread only; glibc's fork leaves malloc usable
    // in it, which thread creation and filter building need; it ends with exit_group.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let (hold_r, hold_w) = pipe().unwrap();
            let (u, g) = (
                nix::unistd::Uid::from_raw(ID),
                nix::unistd::Gid::from_raw(ID),
            );
            let (root_u, root_g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
            nix::unistd::setgroups(&[]).unwrap();
            nix::unistd::setresgid(root_g, root_g, g).unwrap();
            nix::unistd::setresuid(root_u, root_u, u).unwrap();
            if expected {
                super::expect_identity(ID, ID);
            }
            let filter = vcpu_filter(libc::SIGRTMIN() + 1).unwrap();
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                super::confine_thread(&filter, "vcpu").unwrap();
                tid_tx.send(nix::unistd::gettid()).unwrap();
                let mut b = [0u8; 1];
                // SAFETY: a raw read of our own pipe into our own buffer.
                unsafe { libc::read(hold_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
            });
            let tid = tid_rx.recv().unwrap();
            nix::unistd::setresgid(g, g, g).unwrap();
            nix::unistd::setresuid(u, u, u).unwrap();
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            let ours = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let ids = |s: &str, key: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let want = vec![ID.to_string(); 4];
            let ok = [&status, &ours]
                .iter()
                .all(|s| ids(s, "Uid:") == want && ids(s, "Gid:") == want);
            drop(hold_w);
            thread.join().unwrap();
            // SAFETY: exit_group with an integer status.
            unsafe { libc::syscall(libc::SYS_exit_group, if ok { 0 } else { 4 }) };
            unreachable!("exit returned")
        }
        ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

#[test]
fn a_change_of_user_reaches_a_confined_thread_only_when_expected() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("BULKHEAD_E2E").is_none(), "needs root");
        return;
    }
    assert!(
        matches!(
            change_user_under_the_vcpu_list(true),
            WaitStatus::Exited(_, 0)
        ),
        "every thread is the new user"
    );
    // Without the allowance the confined thread's share of the broadcast is a forbidden
    // syscall: the process ends with the report, not half changed.
    assert!(
        matches!(
            change_user_under_the_vcpu_list(false),
            WaitStatus::Exited(_, c) if c == FORBIDDEN_SYSCALL_EXIT
        ),
        "no thread may change its user unannounced"
    );
}

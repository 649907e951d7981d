//! The allow-list of the monitor's own thread (its control server, the agent's connection,
//! the stdio relays), installed when the container's init is released.
//!
//! Until `start` the thread still sets up (namespaces, mounts, hooks, the VM); after it, it
//! only serves: control requests over unix sockets (with fd passing), ttrpc and stdio streams
//! over the VM's vsock socket, the state file, host cgroup files, ptys for `exec -t`, and at
//! the end the share's unmount and the timings file. Not in the list: `clone` (no thread or
//! process is started after `start`), `execve`, `kill` (a vCPU kick only), `ptrace`,
//! `mount`, `setns`, `unshare`, sockets other than unix ones, KVM ioctls and terminal ioctls
//! other than those that size and set up a pty (no `TIOCSTI`). The VM's threads have lists
//! of their own (`bulkhead_vmm::seccomp`), installed by each of them.

use bulkhead_vmm::seccomp::{BpfProgram, Rules, SeccompError};

/// Terminal ioctls a pty for `exec -t`, the caller's terminal and non-blocking fds need.
const TTY_IOCTLS: &[u64] = &[
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::FIONREAD,
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
    libc::TIOCSWINSZ,
    libc::TIOCGPTN,
    libc::TIOCSPTLCK,
    libc::TIOCGPTPEER,
    libc::TIOCSCTTY,
    libc::TIOCGPGRP,
];

/// The monitor thread's list; `kick_signal` is the one signal it may send (to stop vCPUs).
pub fn control_filter(kick_signal: i32) -> Result<BpfProgram, SeccompError> {
    Rules::default()
        .thread_basics()?
        .allow(&[
            // The runtime and its fds.
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_pipe2,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_lseek,
            libc::SYS_close,
            libc::SYS_dup,
            libc::SYS_dup3,
            // Unix sockets: the control socket, the VM's vsock socket, fd passing.
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_shutdown,
            libc::SYS_socketpair,
            // Files: state, host cgroups, logs, /proc/self, the share's teardown.
            libc::SYS_openat,
            libc::SYS_newfstatat,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_getdents64,
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_ftruncate,
            libc::SYS_fchmod,
            libc::SYS_rename,
            libc::SYS_renameat2,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_rmdir,
            libc::SYS_umount2,
        ])
        .allow_if_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?
        .allow_if_arg(libc::SYS_ioctl, 1, TTY_IOCTLS)?
        .allow_kick(kick_signal)?
        .allow_fd_flags()?
        // Reading a limit, never setting one (the new limit's pointer is NULL, all 64 bits).
        .allow_if_arg64(libc::SYS_prlimit64, 2, 0)?
        .compile()
}

/// Installs the list on the calling thread (the monitor's runtime thread).
pub fn install() -> Result<(), SeccompError> {
    let filter = control_filter(bulkhead_vmm::kvm::kick::kick_signal())?;
    bulkhead_vmm::seccomp::install(&filter, "monitor control")
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    /// Forks; the child installs the list, makes `syscall(nr, args)` and exits 0. Reports
    /// go to the child's stderr.
    fn ends(nr: libc::c_long, args: [u64; 3]) -> WaitStatus {
        let filter = control_filter(libc::SIGRTMIN() + 1).unwrap();
        // SAFETY: the child makes raw system calls before it exits; it takes no lock another
        // thread of the test process may hold.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = match bulkhead_vmm::seccomp::install(&filter, "monitor control") {
                    Ok(()) => 0,
                    Err(_) => 3,
                };
                // SAFETY: raw syscalls with plain integer arguments.
                unsafe {
                    libc::syscall(nr, args[0], args[1], args[2], 0, 0, 0);
                    libc::syscall(libc::SYS_exit_group, code);
                }
                unreachable!("exit returned")
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    #[test]
    fn the_monitor_serves_but_starts_nothing_and_reaches_no_network() {
        let forbidden = bulkhead_vmm::seccomp::report::FORBIDDEN_SYSCALL_EXIT;
        let unix = libc::AF_UNIX as u64;
        for (nr, args) in [
            (libc::SYS_openat, [u64::MAX, 0, 0]),
            (libc::SYS_socket, [unix, libc::SOCK_STREAM as u64, 0]),
            (libc::SYS_ioctl, [u64::MAX, libc::TIOCSWINSZ, 0]),
            (libc::SYS_umount2, [0, 0, 0]),
        ] {
            let s = ends(nr, args);
            assert_eq!(s, WaitStatus::Exited(s.pid().unwrap(), 0), "syscall {nr}");
        }
        for (nr, args) in [
            (libc::SYS_execve, [0, 0, 0]),
            (libc::SYS_clone, [0, 0, 0]),
            (libc::SYS_clone3, [0, 0, 0]),
            (libc::SYS_kill, [1, 0, 0]),
            (libc::SYS_ptrace, [0, 0, 0]),
            (libc::SYS_mount, [0, 0, 0]),
            (libc::SYS_setns, [u64::MAX, 0, 0]),
            (
                libc::SYS_socket,
                [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0],
            ),
            (libc::SYS_ioctl, [u64::MAX, libc::TIOCSTI, 0]),
            (libc::SYS_ioctl, [u64::MAX, 0xAE80, 0]),
            (libc::SYS_prlimit64, [0, libc::RLIMIT_NOFILE as u64, 1]),
            // A pointer whose low 32 bits are 0 is still a pointer.
            (
                libc::SYS_prlimit64,
                [0, libc::RLIMIT_NOFILE as u64, 1 << 32],
            ),
            (libc::SYS_fcntl, [u64::MAX, libc::F_SETOWN as u64, 1]),
            (
                libc::SYS_tgkill,
                [
                    i32::MAX as u64,
                    i32::MAX as u64,
                    (libc::SIGRTMIN() + 1) as u64,
                ],
            ),
        ] {
            let s = ends(nr, args);
            assert_eq!(
                s,
                WaitStatus::Exited(s.pid().unwrap(), forbidden),
                "syscall {nr} {args:?} must stop the monitor"
            );
        }
    }
}

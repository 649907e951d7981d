//! The syscall allow-lists of a share's two sides.
//!
//! - The server ([`server_filter`]), installed by the server process (or test thread) on
//!   itself after it has confined itself and opened everything it needs, so the list holds
//!   only what serving requests takes: file operations relative to fds (never `open`/`stat`
//!   of a path: everything is `*at`), the messages on its socket, per-request credentials,
//!   memory management without `PROT_EXEC`. No `execve`, `clone`, `socket`, `connect`,
//!   `ioctl`, `mount`, `unshare`, `ptrace`, `kill`, `open_by_handle_at` or
//!   `name_to_handle_at`. Anything else ends the server: one doing something unexpected is
//!   one being exploited (its SIGSYS report goes to its stderr, which the monitor reads).
//! - The monitor's queue thread ([`queue_filter`]), which walks the virtqueues, copies
//!   requests and replies between guest memory and the server's socket, and watches the
//!   server: epoll, eventfds, `sendmsg`/`recvmsg`, `kill` with SIGKILL and `wait4` for its
//!   server process, and the vCPU kick (`tgkill`) with which it stops the VM when the server
//!   dies. No `open`, no sockets of its own, no `clone` or `execve` (the server is
//!   started before the list goes on).

use seccompiler::BpfProgram;

use crate::seccomp::Rules;
pub use crate::seccomp::SeccompError;

/// Syscalls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // Requests and replies on the socket; file data; the SIGSYS report on stderr.
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_fcntl,
    // File operations, all relative to directory fds.
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    // READLINK, and the set-ID rule's look-up of an inode's path (`/proc/self/fd/<fd>`).
    libc::SYS_readlinkat,
    libc::SYS_mknodat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_ftruncate,
    libc::SYS_utimensat,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fstatfs,
    libc::SYS_umask,
    // Acting as the guest user for creations.
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    // Synchronisation (the crate's locks).
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_getrandom,
    // Memory (mmap/mprotect below, without PROT_EXEC).
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Thread plumbing and exit.
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
];

/// Builds the server's filter (memory without `PROT_EXEC`, as every thread's list).
pub fn server_filter() -> Result<BpfProgram, SeccompError> {
    Rules::default().thread_basics()?.allow(ALLOWED).compile()
}

/// Installs `filter` on the calling thread (and sets its `no_new_privs`).
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    crate::seccomp::install(filter, "virtio-fs server")
}

/// Builds the monitor's queue-thread filter; `server` is the server process it may kill (none
/// for a server on a thread).
pub fn queue_filter(server: Option<libc::pid_t>) -> Result<BpfProgram, SeccompError> {
    let rules = match server {
        Some(pid) => Rules::default().allow_if_all(
            libc::SYS_kill,
            &[(0, pid as u64), (1, libc::SIGKILL as u64)],
        )?,
        None => Rules::default(),
    };
    rules
        .thread_basics()?
        .allow(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            // Ending the link: the server sees its end even while the device holds a second fd.
            libc::SYS_shutdown,
            libc::SYS_close,
            libc::SYS_wait4,
        ])
        // Stopping the VM when the server dies kicks the vCPUs out of the guest.
        .allow_kick(crate::kvm::kick::kick_signal())?
        .compile()
}

/// Drops every capability of the calling queue thread and installs `filter` on it.
pub fn confine_queue_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
    crate::seccomp::confine_thread(filter, "virtio-fs queue")
}

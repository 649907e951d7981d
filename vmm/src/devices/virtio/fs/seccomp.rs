//! The syscall allowlist of a virtio-fs worker thread.
//!
//! Installed on the worker alone (no TSYNC) after it has confined itself and opened everything
//! it needs, so the list holds only what serving requests takes: file operations relative to
//! fds (never `open`/`stat` of a path: everything is `*at`), reading/writing guest memory and
//! eventfds, per-request credentials, memory management without `PROT_EXEC`, and waiting. No
//! `execve`, `clone`, `socket`, `ioctl`, `mount`, `unshare`, `ptrace`, `open_by_handle_at` or
//! `name_to_handle_at`. Anything else ends the process: a worker doing something unexpected
//! is a worker being exploited, and a dead VM is the safe outcome (see `crate::seccomp::report`).

use seccompiler::BpfProgram;

use crate::seccomp::Rules;
pub use crate::seccomp::SeccompError;

/// Syscalls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // Guest memory <-> files, eventfds, logging.
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
    // Waiting and synchronisation.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
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

/// Builds the worker's filter (memory without `PROT_EXEC`, as every thread's list).
pub fn worker_filter() -> Result<BpfProgram, SeccompError> {
    Rules::default().thread_basics()?.allow(ALLOWED).compile()
}

/// Installs `filter` on the calling thread (and sets its `no_new_privs`).
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    crate::seccomp::install(filter, "virtio-fs worker")
}

//! Per-thread syscall allow-lists (`seccompiler`), and what happens when one is broken.
//!
//! Every thread that handles what the guest writes gets its own list, installed by the thread
//! itself (no TSYNC) once it has everything it needs: the vCPU threads (port and MMIO exits,
//! the serial console), the device event loop (virtqueues, vsock packets) and the virtio-fs
//! worker (FUSE requests, its list is in `devices::virtio::fs::seccomp`). The process that
//! embeds the VMM may add one for its own threads with [`Rules`] and [`install`].
//!
//! A syscall outside a thread's list is a thread doing what its code never does: a thread
//! being exploited. It does not run; the thread traps into [`report`]'s handler, which writes
//! one line naming the thread and the syscall (to stderr, or where the embedding process
//! said with [`report::report_to`]) and ends the whole process with
//! [`report::FORBIDDEN_SYSCALL_EXIT`]. A dead VM is the safe outcome.

mod lists;
pub mod report;

use std::collections::BTreeMap;

pub use seccompiler::BpfProgram;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

pub use lists::{events_filter, vcpu_filter};

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules or the architecture.
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    /// The SIGSYS handler that reports a forbidden syscall could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The thread's capabilities could not be dropped.
    #[error("cannot drop the thread's capabilities")]
    Capabilities(#[source] caps::errors::CapsError),
}

/// The user and group the embedding process will switch all its threads to, once (see
/// [`expect_identity`]).
static IDENTITY: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();

/// Says that the embedding process will later give up root for `uid`/`gid` process-wide
/// (`setresgid(gid, gid, gid)`, then `setresuid(uid, uid, uid)`): glibc carries such a change
/// to every thread by signalling each to make the same syscall (nptl's setxid broadcast), so
/// every list built from now on allows exactly those two calls with exactly these ids, and
/// nothing else of the kind. Call it before the VM's threads build their lists; the first
/// call wins. The VM's threads hold no capability, so the ids must already be the process's
/// saved ids then (an unprivileged thread may only take ids it has), and its supplementary
/// groups already empty.
pub fn expect_identity(uid: u32, gid: u32) {
    let _ = IDENTITY.set((uid, gid));
}

/// An allow-list being put together: syscalls allowed with any arguments, and syscalls
/// allowed only with given arguments (any one rule of a syscall may match).
#[derive(Default)]
pub struct Rules {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
}

impl Rules {
    /// Allows each of `syscalls` with any arguments.
    pub fn allow(mut self, syscalls: &[libc::c_long]) -> Self {
        for &nr in syscalls {
            self.rules.insert(nr, Vec::new());
        }
        self
    }

    /// Allows `syscall` when its argument `arg` (32 bits wide) equals one of `values`.
    pub fn allow_if_arg(
        mut self,
        syscall: libc::c_long,
        arg: u8,
        values: &[u64],
    ) -> Result<Self, SeccompError> {
        let rules = self.rules.entry(syscall).or_default();
        for &v in values {
            let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
                .map_err(SeccompError::Build)?;
            rules.push(SeccompRule::new(vec![cond]).map_err(SeccompError::Build)?);
        }
        Ok(self)
    }

    /// Allows `syscall` when every `(arg, value)` holds (each argument's low 32 bits: pids,
    /// signals, flags).
    pub fn allow_if_all(
        mut self,
        syscall: libc::c_long,
        conds: &[(u8, u64)],
    ) -> Result<Self, SeccompError> {
        let conds = conds
            .iter()
            .map(|&(arg, v)| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(SeccompError::Build)?;
        let rule = SeccompRule::new(conds).map_err(SeccompError::Build)?;
        self.rules.entry(syscall).or_default().push(rule);
        Ok(self)
    }

    /// Allows `syscall` when its 64-bit argument `arg` (a pointer) equals `value`.
    pub fn allow_if_arg64(
        mut self,
        syscall: libc::c_long,
        arg: u8,
        value: u64,
    ) -> Result<Self, SeccompError> {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
            .map_err(SeccompError::Build)?;
        let rule = SeccompRule::new(vec![cond]).map_err(SeccompError::Build)?;
        self.rules.entry(syscall).or_default().push(rule);
        Ok(self)
    }

    /// Allows `tgkill` of this process's own threads with `signal` only (a vCPU kick): never
    /// a signal to another process.
    pub fn allow_kick(self, signal: i32) -> Result<Self, SeccompError> {
        let pid = u64::from(std::process::id());
        self.allow_if_all(libc::SYS_tgkill, &[(0, pid), (2, signal as u64)])
    }

    /// Allows the `fcntl` commands that read and set an fd's own flags, and duplicating it;
    /// not `F_SETOWN`/`F_SETSIG` (signals to any process) nor locks.
    pub fn allow_fd_flags(self) -> Result<Self, SeccompError> {
        self.allow_if_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        )
    }

    /// Allows `syscall` when the bits `mask` of argument `arg` are `value`.
    pub fn allow_if_masked(
        mut self,
        syscall: libc::c_long,
        arg: u8,
        mask: u64,
        value: u64,
    ) -> Result<Self, SeccompError> {
        let cond = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            value,
        )
        .map_err(SeccompError::Build)?;
        let rule = SeccompRule::new(vec![cond]).map_err(SeccompError::Build)?;
        self.rules.entry(syscall).or_default().push(rule);
        Ok(self)
    }

    /// Allows `mmap` and `mprotect`, but never of executable memory: a thread that is being
    /// exploited cannot make the code it wrote runnable.
    pub fn allow_memory_without_exec(self) -> Result<Self, SeccompError> {
        let prot_exec = libc::PROT_EXEC as u64;
        self.allow_if_masked(libc::SYS_mmap, 2, prot_exec, 0)?
            .allow_if_masked(libc::SYS_mprotect, 2, prot_exec, 0)
    }

    /// What every thread needs whatever its job: memory without `PROT_EXEC`, futexes, its
    /// signal plumbing, clocks, its own end, and what the SIGSYS report takes (`write`,
    /// `exit_group`).
    pub fn thread_basics(self) -> Result<Self, SeccompError> {
        self.allow(&[
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_write,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ])
        // `fcntl(fd, F_GETFD)`: what the standard library's debug builds run on every `OwnedFd`
        // they close, to check it was open (a thread that closes anything traps without it).
        .allow_if_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?
        .allow_memory_without_exec()?
        .allow_identity_change()
    }

    /// The process-wide switch to the [`expect_identity`] ids, if one is expected: each
    /// thread's share of it (the handler of glibc's setxid signal runs the same call).
    fn allow_identity_change(self) -> Result<Self, SeccompError> {
        let Some(&(uid, gid)) = IDENTITY.get() else {
            return Ok(self);
        };
        let (uid, gid) = (u64::from(uid), u64::from(gid));
        self.allow_if_all(libc::SYS_setresgid, &[(0, gid), (1, gid), (2, gid)])?
            .allow_if_all(libc::SYS_setresuid, &[(0, uid), (1, uid), (2, uid)])
    }

    /// Compiles the list for the architecture we run on: anything else traps (see [`report`]).
    pub fn compile(self) -> Result<BpfProgram, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(SeccompError::Build)?;
        let filter =
            SeccompFilter::new(self.rules, SeccompAction::Trap, SeccompAction::Allow, arch)
                .map_err(SeccompError::Build)?;
        BpfProgram::try_from(filter).map_err(SeccompError::Build)
    }
}

/// Installs `filter` on the calling thread, which [`report`] will call `thread` (and sets the
/// thread's `no_new_privs`). The SIGSYS handler is installed first: a trap without it would
/// kill the process without a word.
pub fn install(filter: &BpfProgram, thread: &'static str) -> Result<(), SeccompError> {
    report::install_handler().map_err(SeccompError::Handler)?;
    keep_malloc_from_trimming();
    report::name_this_thread(thread);
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

/// Keeps glibc's malloc from trimming thread arenas, once per process: the first trim of a
/// thread arena's heap reads `/proc/sys/vm/overcommit_memory`, an `open` no list allows, so
/// whichever confined thread freed enough memory first would stop the process. With the trim
/// threshold at a thread heap's largest size (64 MiB) that trim never happens; freed memory
/// stays with its arena (large blocks are `mmap`ed and unmapped as before).
fn keep_malloc_from_trimming() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only sets a malloc parameter; any thread may call it at any time.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    });
}

/// Confines the calling thread, one of the VM's own: first no capability in any set (a vCPU
/// or the device loop uses none; capabilities are per thread, so the others keep theirs),
/// then `filter` (see [`install`]).
pub fn confine_thread(filter: &BpfProgram, thread: &'static str) -> Result<(), SeccompError> {
    drop_capabilities()?;
    install(filter, thread)
}

/// Empties every capability set of the calling thread (the bounding set too, where it may):
/// for a thread of the embedding process that only waits on the VM (the one that calls
/// [`crate::Vm::run`]).
pub fn drop_capabilities() -> Result<(), SeccompError> {
    drop_all().map_err(SeccompError::Capabilities)
}

fn drop_all() -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    // The bounding set needs CAP_SETPCAP (an unprivileged VMM has an empty effective set and
    // no way to gain one: `no_new_privs` comes with the filter).
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)? {
        for cap in caps::all() {
            if caps::has_cap(None, CapSet::Bounding, cap)? {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

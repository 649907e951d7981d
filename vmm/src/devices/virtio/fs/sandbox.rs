//! Confinement of the server that serves a share (its own process, see [`super::server`];
//! a thread of the caller in tests).
//!
//! `PassthroughFs` resolves guest names relative to directory fds, one component at a time and
//! without following symlinks, but a few things it does still depend on the thread's view of
//! the file system (`..` from the root, its `import` of `/`). Like virtiofsd, we give it a view
//! in which the share *is* the whole file system, so even a resolution bug cannot name a host
//! file. The steps are per thread (namespaces, root, capabilities), so the same code confines the
//! server process (one thread) and, in tests, a server thread.
//!
//! They run once, before any guest request ([`enter_namespace`], [`mount_private_proc`],
//! [`pivot_into`]):
//! 1. `unshare(CLONE_FS | CLONE_NEWNS)`: the thread gets its own root/cwd/umask and its own copy
//!    of the mount table (allowed in a multi-threaded process; only this thread moves);
//! 2. every mount becomes a slave: host unmounts (the shim tearing down volumes) still reach us,
//!    nothing we do reaches the host;
//! 3. the share is bind-mounted onto itself (recursively, so volumes under it come along) and
//!    marked `nosuid,nodev,noexec,nosymfollow` (+ `ro` for a read-only share) on every mount of
//!    the tree: the kernel itself then refuses to follow any symlink inside the share during
//!    path resolution, and to write to a read-only one;
//! 4. `pivot_root(share, share)` and a lazy unmount of the old root: `/` is the share, `..` at
//!    `/` is `/`, and the host's tree is gone from this thread's namespace;
//! 5. capabilities: the thread keeps only what a file server needs to act for any guest user
//!    (`CHOWN`, `DAC_OVERRIDE`, `DAC_READ_SEARCH` for `linkat(AT_EMPTY_PATH)`, `FOWNER`,
//!    `FSETID`, `SETUID`/`SETGID` for per-request credentials), in every set including the
//!    bounding set. No `SYS_ADMIN` (mounts, namespaces), no `MKNOD` (device nodes).
//!
//! The seccomp filter ([`super::seccomp`]) comes last, after the worker has opened what it needs.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{fstat, stat};
use nix::unistd::{chdir, pivot_root};

/// Capabilities the worker keeps.
pub const KEPT_CAPABILITIES: [Capability; 7] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// Why the thread could not be confined. Every step is fatal: we never serve unconfined.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The share is not an absolute path to a directory.
    #[error("share {0} is not an absolute directory path")]
    NotADirectory(PathBuf),
    /// A namespace, mount or pivot step failed.
    #[error("cannot {step} (the vmm needs CAP_SYS_ADMIN to confine a share)")]
    Mount {
        /// What we were doing.
        step: &'static str,
        /// The system error.
        #[source]
        source: nix::Error,
    },
    /// After the pivot, `/` is not the share.
    #[error("the new root is not the share")]
    RootMismatch,
    /// Dropping capabilities failed.
    #[error("cannot drop capabilities")]
    Caps(#[source] caps::errors::CapsError),
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> SandboxError {
    move |source| SandboxError::Mount { step, source }
}

/// Confines the calling thread to `share` (see the module docs), without a `/proc` of its
/// own: [`enter_namespace`] then [`pivot_into`]. On error the thread is in an unknown state
/// and must not serve requests.
pub fn confine(share: &Path, read_only: bool) -> Result<(), SandboxError> {
    enter_namespace()?;
    pivot_into(share, read_only, None)
}

/// Steps 1-2: a mount namespace (and root, cwd, umask) of the caller's own, every mount a
/// slave of the host's.
pub fn enter_namespace() -> Result<(), SandboxError> {
    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)
        .map_err(step("create a mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("make mounts private"))
}

/// Mounts a procfs of the caller's PID namespace on `/proc` of its own mount namespace, with
/// only the per-process directories (`subset=pid`: no `/proc/sys`, `/proc/sysrq-trigger`,
/// `/proc/kcore`…), read-only, `nosuid,nodev,noexec`. The server process is PID 1 of a PID
/// namespace of its own, so this `/proc` shows that one process and nothing else: the
/// `/proc/self/fd` the passthrough crate re-opens inodes through (and walks `..` from, if it
/// were exploited) leads to no other process's `root`, `fd`, `mem` or `environ`. After
/// [`pivot_into`] it is detached with the old root, alive only through that fd.
pub fn mount_private_proc() -> Result<(), SandboxError> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("subset=pid"),
    )
    .map_err(step("mount a private /proc"))
}

/// Steps 3-5: the share bound onto itself with the hardening attributes, `pivot_root` into
/// it, the host's tree detached, and the capabilities cut to [`KEPT_CAPABILITIES`]. With
/// `expected` (`st_dev`, `st_ino` of a directory fd the monitor opened), the new root must be
/// that directory.
pub fn pivot_into(
    share: &Path,
    read_only: bool,
    expected: Option<(u64, u64)>,
) -> Result<(), SandboxError> {
    if !share.is_absolute() || !share.is_dir() {
        return Err(SandboxError::NotADirectory(share.to_owned()));
    }
    let before = stat(share).map_err(step("stat the share"))?;
    if expected.is_some_and(|id| id != (before.st_dev, before.st_ino)) {
        return Err(SandboxError::RootMismatch);
    }
    mount(
        Some(share),
        share,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step("bind-mount the share"))?;
    let mut attrs = libc::MOUNT_ATTR_NOSUID
        | libc::MOUNT_ATTR_NODEV
        | libc::MOUNT_ATTR_NOEXEC
        | libc::MOUNT_ATTR_NOSYMFOLLOW;
    if read_only {
        attrs |= libc::MOUNT_ATTR_RDONLY;
    }
    set_mount_attrs(share, attrs, true).map_err(step("set mount attributes"))?;

    chdir(share).map_err(step("enter the share"))?;
    pivot_root(".", ".").map_err(step("pivot into the share"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step("detach the host root"))?;
    chdir("/").map_err(step("enter the new root"))?;

    let root = std::fs::File::open("/").map_err(|e| SandboxError::Mount {
        step: "open the new root",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let after = fstat(root.as_raw_fd()).map_err(step("stat the new root"))?;
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) {
        return Err(SandboxError::RootMismatch);
    }

    drop_capabilities()
}

/// `mount_setattr(2)`: sets `attrs` (`MOUNT_ATTR_*`) on the mount at `path` and, when
/// `recursive`, on every mount below it (volumes bind-mounted into the share included); other
/// attributes of those mounts stay as they are (a bind remount would reset them).
pub fn set_mount_attrs(path: &Path, attrs: u64, recursive: bool) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        // An interior NUL cannot come from a real path.
        nix::Error::EINVAL
    })?;
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c_path` is a valid NUL-terminated string and `attr` a properly sized, initialized
    // struct that outlives the call; the kernel only reads both.
    let res = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            (if recursive { libc::AT_RECURSIVE } else { 0 } | libc::AT_SYMLINK_NOFOLLOW)
                as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    nix::errno::Errno::result(res).map(drop)
}

/// Reduces every capability set of this thread to [`KEPT_CAPABILITIES`].
fn drop_capabilities() -> Result<(), SandboxError> {
    let keep: CapsHashSet = KEPT_CAPABILITIES.into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).map_err(SandboxError::Caps)?
        {
            caps::drop(None, CapSet::Bounding, cap).map_err(SandboxError::Caps)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(SandboxError::Caps)?;
    caps::clear(None, CapSet::Inheritable).map_err(SandboxError::Caps)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(SandboxError::Caps)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(SandboxError::Caps)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(SandboxError::Caps)?;
    Ok(())
}

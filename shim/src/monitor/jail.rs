//! The monitor's jail: what it does to itself once its set-up is over, before the container's
//! workload runs (Firecracker's jailer is the model; see "The monitor's jail" in
//! docs/DESIGN-NOTES.md).
//!
//! [`enter`] runs on the monitor's main thread (the tokio runtime's: control server, agent
//! connection), in order:
//! 1. rlimits, process-wide: open files sized for one VM ([`Jail::nofile`]), no core files (a
//!    core of the monitor would hold guest memory);
//! 2. `no_new_privs` on this thread (and the threads it starts from now on);
//! 3. a new root: a small read-only tmpfs over [`Jail::dir`] holding only bind mounts of the host
//!    directories still used, at the same absolute paths (so every path the monitor and the VM's
//!    threads hold keeps working unchanged), writable ([`Jail::keep`]) or read-only
//!    ([`Jail::read_only`]: what the host acts on later, such as the state file and the cgroup
//!    limits, is in view but not the monitor's to change), and this process's own
//!    `/proc/<pid>` as `/proc/self`; then `pivot_root` and a lazy unmount of the old root. The VM's threads share
//!    the main thread's root, so they move with it; the virtio-fs worker has its own namespace
//!    and root (the share) and does not;
//! 4. directory fds of the old tree (they would lead back to the host's root through `..`) are
//!    replaced by the same directories opened in the jail; one that is not in the jail fails the
//!    lock-down;
//! 5. capabilities of this thread: every set, the bounding set included, down to
//!    [`KEPT_CAPABILITIES`] (none); with [`Jail::identity`], first the whole process's user and
//!    groups (glibc carries the change to every thread), which empties every thread's
//!    capabilities for good.
//!
//! Every step is fatal: the caller must not let the workload run when [`enter`] fails.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{fstat, FileStat, SFlag};
use nix::unistd::{chdir, pivot_root};

/// Capabilities the monitor's main thread keeps, as a bit mask of capability numbers: none.
///
/// Everything the thread touches after the lock-down is its user's own (state, logs, sockets)
/// or already open; an `exec`'s terminal or pipes, which belong to the caller's user, come
/// already reopened by the `exec` CLI (`vm::hostio`). The last one it kept, `DAC_OVERRIDE`,
/// was for reopening them itself. Gone are in particular `SYS_ADMIN` (mounts: the way out of a
/// jail), `DAC_READ_SEARCH` (`open_by_handle_at`: the other way out), `DAC_OVERRIDE` (files of
/// other users in the jail's binds), `SYS_PTRACE`, `SETUID`/`SETGID`, `NET_ADMIN`, `MKNOD`,
/// `SYS_MODULE`.
pub const KEPT_CAPABILITIES: u64 = 0;

/// Size of the jail's tmpfs: it only holds the directories the binds are mounted on. Its root
/// may be passed through (0711) so that a monitor that is no longer root reaches its binds;
/// no one else sees this tmpfs (it is in the monitor's own mount namespace).
const TMPFS_OPTIONS: &str = "mode=0711,size=64k,nr_inodes=4096";

/// Why the monitor could not lock itself down. Every variant means: do not run the workload.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("set {what} limit")]
    Rlimit {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("cannot {step} {}", .path.display())]
    Mount {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{}", .0.display())]
    Path(PathBuf, #[source] std::io::Error),
    #[error("list open fds")]
    Fds(#[source] std::io::Error),
    /// A directory fd of the host's tree that is not in the jail: through `..` it would lead
    /// back to the host's root.
    #[error("fd {fd} is the directory {} outside the jail", .path.display())]
    StrayDirectory { fd: RawFd, path: PathBuf },
    #[error("reopen {} in the jail", .path.display())]
    Reopen {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("drop capability {cap} from the bounding set")]
    Bounding {
        cap: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("drop capabilities")]
    Capset(#[source] std::io::Error),
    #[error("become user {uid} group {gid}")]
    Identity {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
}

/// What the jail holds and how much the monitor may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// An empty host directory the new root is mounted over (in the monitor's own mount
    /// namespace: the host never sees the tmpfs).
    pub dir: PathBuf,
    /// Host directories kept, writable, at their own absolute paths.
    pub keep: Vec<PathBuf>,
    /// Host directories kept read-only (a [`Jail::keep`] directory below one stays writable).
    pub read_only: Vec<PathBuf>,
    /// The open-file limit (soft and hard) from now on.
    pub nofile: u64,
    /// The user and group the whole process becomes, with no supplementary groups
    /// (`Config::monitor_identity`); `None` stays root.
    pub identity: Option<(u32, u32)>,
}

/// One bind mount of the jail: `source` on the host (symlinks resolved, as the kernel names
/// open directories), `target` as the monitor names it and the jail shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    source: PathBuf,
    target: PathBuf,
    writable: bool,
}

impl Jail {
    /// The binds, parents before children (a child path is mounted inside its parent's bind),
    /// each path once; this process's `/proc/<pid>` becomes `/proc/self`. A path with a name
    /// longer than the jail's tmpfs takes (cgroupfs takes a 300-character container id) is
    /// kept by its longest ancestor that fits.
    fn binds(&self, pid: u32) -> Result<Vec<Bind>, JailError> {
        let mut binds: Vec<Bind> = Vec::new();
        let kept = self.keep.iter().map(|p| (p, true));
        for (p, writable) in kept.chain(self.read_only.iter().map(|p| (p, false))) {
            let target = std::path::absolute(p).map_err(|e| JailError::Path(p.clone(), e))?;
            let target = fitting(&target);
            // A path that does not resolve fails at its mount, with its name.
            let source = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
            match binds.iter_mut().find(|b| b.target == target) {
                Some(b) => b.writable |= writable,
                None => binds.push(Bind {
                    source,
                    target,
                    writable,
                }),
            }
        }
        binds.push(Bind {
            source: PathBuf::from(format!("/proc/{pid}")),
            target: PathBuf::from("/proc/self"),
            writable: true,
        });
        binds.sort_by_key(|b| b.target.components().count());
        Ok(binds)
    }
}

/// Longest file name a tmpfs directory takes.
const NAME_MAX: usize = 255;

/// `path` up to its first component longer than [`NAME_MAX`].
fn fitting(path: &Path) -> PathBuf {
    path.components()
        .take_while(|c| c.as_os_str().len() <= NAME_MAX)
        .collect()
}

/// Locks the calling thread (the monitor's main thread) and the process down; see the module
/// docs. The process must already be in a mount namespace of its own whose mounts are not
/// shared with the host's (`setup::enter_namespaces`).
pub fn enter(jail: &Jail) -> Result<(), JailError> {
    set_rlimits(jail.nofile)?;
    set_no_new_privs()?;
    let binds = jail.binds(std::process::id())?;
    new_root(&jail.dir, &binds)?;
    drop_capabilities(KEPT_CAPABILITIES, jail.identity)
}

/// Open files for one VM, no core files. Process-wide: the VM's threads share them (the
/// virtio-fs server, its own process started before, has its own). No file-size limit: the
/// monitor writes the container's output into the caller's stdout when that is a regular file
/// (`bulkhead run c > out`), which may rightly be any size, as with runc.
fn set_rlimits(nofile: u64) -> Result<(), JailError> {
    let err = |what| move |source| JailError::Rlimit { what, source };
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(err("open-file"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(err("core-file"))
}

fn set_no_new_privs() -> Result<(), JailError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(JailError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn mount_err(step: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> JailError {
    let path = path.to_path_buf();
    move |source| JailError::Mount { step, path, source }
}

/// `binds` on a tmpfs over `dir`, made the root (steps 3 and 4 of the module docs).
fn new_root(dir: &Path, binds: &[Bind]) -> Result<(), JailError> {
    std::fs::create_dir_all(dir).map_err(|e| JailError::Mount {
        step: "create the jail directory",
        path: dir.to_path_buf(),
        source: io_errno(&e),
    })?;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(TMPFS_OPTIONS),
    )
    .map_err(mount_err("mount the jail's tmpfs on", dir))?;
    let mut mounted: Vec<PathBuf> = Vec::new();
    for b in binds {
        let target = under(dir, &b.target);
        std::fs::create_dir_all(&target).map_err(|e| JailError::Mount {
            step: "create the mount point",
            path: target.clone(),
            source: io_errno(&e),
        })?;
        // The tmpfs directories on the way may be passed through whatever the umask, so that a
        // monitor that is no longer root reaches its binds (before the bind covers the last);
        // a directory in a bind made before is the host's and keeps its mode.
        let in_tmpfs = |a: &&Path| !mounted.iter().any(|m: &PathBuf| a.starts_with(m));
        for tmpfs_dir in target
            .ancestors()
            .take_while(|a| *a != dir)
            .filter(in_tmpfs)
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmpfs_dir, std::fs::Permissions::from_mode(0o711)).map_err(
                |e| JailError::Mount {
                    step: "open the way to",
                    path: tmpfs_dir.to_path_buf(),
                    source: io_errno(&e),
                },
            )?;
        }
        mount(
            Some(&b.source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(mount_err("bind-mount", &b.source))?;
        mounted.push(target.clone());
        let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
        bulkhead_vmm::devices::virtio::fs::sandbox::set_mount_attrs(&target, attrs, false)
            .map_err(mount_err("restrict the bind of", &b.source))?;
    }
    // Nothing can be added to the jail's root; the binds below it stay writable.
    bulkhead_vmm::devices::virtio::fs::sandbox::set_mount_attrs(
        dir,
        libc::MOUNT_ATTR_RDONLY,
        false,
    )
    .map_err(mount_err("make read-only", dir))?;
    // Host mount events stop at the jail (and none of ours could leave it anyway).
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err("make private", dir))?;

    let reopen = old_tree_directories(binds)?;
    chdir(dir).map_err(mount_err("enter", dir))?;
    pivot_root(".", ".").map_err(mount_err("pivot_root into", dir))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(mount_err("detach the host root from", dir))?;
    chdir("/").map_err(mount_err("enter the new root", dir))?;
    for r in reopen {
        r.replace()?;
    }
    // The host directory the tmpfs was mounted on is no mount point in the jail's view: remove
    // it (best effort: `delete` removes the state directory anyway)...
    let _ = std::fs::remove_dir(dir);
    // ...before the binds that are only to be read become read-only (it is in one of them).
    for b in binds.iter().filter(|b| !b.writable) {
        bulkhead_vmm::devices::virtio::fs::sandbox::set_mount_attrs(
            &b.target,
            libc::MOUNT_ATTR_RDONLY,
            false,
        )
        .map_err(mount_err("make read-only", &b.target))?;
    }
    Ok(())
}

/// `path` (absolute) below `dir`.
fn under(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.strip_prefix("/").unwrap_or(path))
}

fn io_errno(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A directory fd of the old tree, to be replaced by the same directory in the jail.
#[derive(Debug)]
struct Reopen {
    fd: RawFd,
    /// Where the jail shows it.
    path: PathBuf,
    id: (u64, u64),
}

impl Reopen {
    /// Opens the directory in the jail and puts it in place of the old fd (atomically: a
    /// thread using the fd meanwhile sees the one or the other, both the same directory).
    fn replace(&self) -> Result<(), JailError> {
        let err = |source| JailError::Reopen {
            path: self.path.clone(),
            source,
        };
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_DIRECTORY
            | nix::fcntl::OFlag::O_CLOEXEC;
        let new =
            nix::fcntl::open(&self.path, flags, nix::sys::stat::Mode::empty()).map_err(err)?;
        // SAFETY: `new` was just opened and is owned here; it is closed once duplicated.
        let new = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) };
        let st = fstat(new.as_raw_fd()).map_err(err)?;
        if file_id(&st) != self.id {
            return Err(err(nix::Error::ESTALE));
        }
        // SAFETY: dup3 onto a descriptor number this process has open (its owner keeps using
        // the number; only what it refers to changes, to the same directory).
        let rc = unsafe { libc::dup3(new.as_raw_fd(), self.fd, libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(err(nix::Error::last()));
        }
        Ok(())
    }
}

fn file_id(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Every directory fd of the process, mapped to where the jail will show it; one outside every
/// bind is an error. Whatever mount namespace an fd was opened in (the state directory's fd of a
/// long socket path is opened before the monitor's own namespace exists), its `..` leads to
/// that namespace's root, so none is left as it is.
fn old_tree_directories(binds: &[Bind]) -> Result<Vec<Reopen>, JailError> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/thread-self/fd")
        .map_err(JailError::Fds)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut out = Vec::new();
    for fd in fds {
        // The listing's own fd is closed by now, and so may be others: they need nothing.
        let Ok(st) = fstat(fd) else { continue };
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
            continue;
        }
        let path = std::fs::read_link(format!("/proc/thread-self/fd/{fd}")).unwrap_or_default();
        let Some(jailed) = jail_path(binds, &path) else {
            return Err(JailError::StrayDirectory { fd, path });
        };
        out.push(Reopen {
            fd,
            path: jailed,
            id: file_id(&st),
        });
    }
    Ok(out)
}

/// Where the jail shows the host path `path`, if it does.
fn jail_path(binds: &[Bind], path: &Path) -> Option<PathBuf> {
    binds.iter().rev().find_map(|b| {
        let rest = path.strip_prefix(&b.source).ok()?;
        Some(if rest.as_os_str().is_empty() {
            b.target.clone()
        } else {
            b.target.join(rest)
        })
    })
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Highest capability number any kernel may know (the bounding-set loop stops at the first
/// the running kernel does not).
const CAP_MAX: u32 = 63;

/// Reduces this thread's capabilities to `keep`: bounding set first (dropping from it needs
/// `CAP_SETPCAP`, which goes next), ambient cleared, then with `identity` the whole process's
/// user and groups ([`become_identity`]), then effective and permitted = `keep` (of what is
/// still permitted: nothing after a change of user), inheritable empty.
fn drop_capabilities(keep: u64, identity: Option<(u32, u32)>) -> Result<(), JailError> {
    for cap in 0..=CAP_MAX {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: no such capability in this kernel, nor any above it.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::Bounding { cap, source: e });
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(JailError::Capset(std::io::Error::last_os_error()));
    }
    if let Some((uid, gid)) = identity {
        become_identity(uid, gid)?;
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the v3 layout capget expects (a header and two data
    // structs), valid for writes for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(JailError::Capset(std::io::Error::last_os_error()));
    }
    let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    let kept = permitted & keep;
    for (i, half) in data.iter_mut().enumerate() {
        // Truncation intended: each half holds 32 capability bits.
        let bits = (kept >> (32 * i)) as u32;
        *half = CapData {
            effective: bits,
            permitted: bits,
            inheritable: 0,
        };
    }
    // SAFETY: as above; capset only reads `header` and `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(JailError::Capset(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Readies the process, still root and single-threaded, to become `uid`/`gid` at its lock-down
/// ([`become_identity`]): no supplementary groups from now on (root needs none: it passes every
/// permission check by its capabilities), and `uid`/`gid` as its saved ids. The threads it
/// starts later inherit both; the VM's threads drop every capability, and an unprivileged
/// thread may still take an id it has as its saved one, which is how they follow the switch.
/// A saved id changes nothing else while the real and effective ones are 0 (capabilities stay;
/// signals from the monitor user could reach the process, but every monitor's seccomp lists
/// keep it from signalling other processes).
pub fn prepare_identity(uid: u32, gid: u32) -> Result<(), JailError> {
    let err = |source| JailError::Identity { uid, gid, source };
    let root = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
    nix::unistd::setgroups(&[]).map_err(err)?;
    nix::unistd::setresgid(root.1, root.1, nix::unistd::Gid::from_raw(gid)).map_err(err)?;
    nix::unistd::setresuid(root.0, root.0, nix::unistd::Uid::from_raw(uid)).map_err(err)
}

/// Makes the whole process `uid`/`gid` (real, effective and saved ids), for good. glibc's
/// `setresgid`/`setresuid` signal every other thread to make the same call (its setxid
/// broadcast; the VM's threads' seccomp lists allow exactly these ids:
/// `bulkhead_vmm::seccomp::expect_identity`, and they may take them without a capability:
/// [`prepare_identity`]), so no thread stays root; leaving uid 0 this way empties every
/// thread's permitted and effective capabilities. A process that changes its user is made
/// non-dumpable, which would make its own `/proc/<pid>` root's and so out of its reach (a long
/// socket path is reached through `/proc/self/fd`); it is made dumpable again: no core is
/// written (`RLIMIT_CORE` 0), and the processes that could trace it — the other monitors, the
/// same user — hold seccomp lists without `ptrace` and see no other `/proc/<pid>`.
fn become_identity(uid: u32, gid: u32) -> Result<(), JailError> {
    let err = |source| JailError::Identity { uid, gid, source };
    let (u, g) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::setresgid(g, g, g).map_err(err)?;
    nix::unistd::setresuid(u, u, u).map_err(err)?;
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        return Err(err(nix::Error::last()));
    }
    Ok(())
}

/// Taken by the tests that enter a jail or hold directory fds while doing so: a lock-down
/// refuses any directory fd outside its jail, and the test threads share one fd table.
#[cfg(test)]
pub(super) fn one_jail_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_test_support::{require, Need};
    use std::os::fd::OwnedFd;

    fn jail(keep: &[&str]) -> Jail {
        Jail {
            dir: "/run/x/jail".into(),
            keep: keep.iter().map(PathBuf::from).collect(),
            read_only: Vec::new(),
            nofile: 4096,
            identity: None,
        }
    }

    #[test]
    fn binds_are_parents_first_once_each_with_our_proc_as_proc_self() {
        let binds = jail(&["/var/log/b", "/nonexistent/b/c1", "/var/log/b", "/proc"])
            .binds(42)
            .unwrap();
        let targets: Vec<_> = binds.iter().map(|b| b.target.clone()).collect();
        assert_eq!(
            targets,
            ["/proc", "/proc/self", "/var/log/b", "/nonexistent/b/c1"].map(PathBuf::from)
        );
        assert_eq!(binds[1].source, Path::new("/proc/42"));
        let long = format!("/nonexistent/cg/{}/x", "x".repeat(300));
        assert_eq!(
            jail(&[&long]).binds(1).unwrap()[0].target,
            Path::new("/nonexistent/cg"),
            "a name too long for the jail is kept by its parent"
        );
        let cwd = std::env::current_dir().unwrap();
        let rel = jail(&["relative/dir"]).binds(1).unwrap();
        assert!(
            rel.iter().any(|b| b.target == cwd.join("relative/dir")),
            "made absolute"
        );
        // A symlinked path is bound from where it leads, shown where the monitor names it.
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        let linked = Jail {
            keep: vec![tmp.path().join("link")],
            ..jail(&[])
        }
        .binds(1)
        .unwrap();
        let link = linked
            .iter()
            .find(|b| b.target == tmp.path().join("link"))
            .unwrap();
        assert_eq!(
            link.source,
            std::fs::canonicalize(tmp.path().join("real")).unwrap()
        );
    }

    #[test]
    fn a_directory_kept_writable_stays_writable_when_also_named_read_only() {
        let binds = Jail {
            read_only: ["/a/b", "/a"].map(PathBuf::from).to_vec(),
            ..jail(&["/a", "/a/b/c"])
        }
        .binds(7)
        .unwrap();
        let flags: Vec<(PathBuf, bool)> = binds
            .iter()
            .map(|b| (b.target.clone(), b.writable))
            .collect();
        assert_eq!(
            flags,
            [
                ("/a", true),
                ("/a/b", false),
                ("/proc/self", true),
                ("/a/b/c", true)
            ]
            .map(|(p, w)| (PathBuf::from(p), w))
        );
    }

    #[test]
    fn host_paths_map_to_the_innermost_bind() {
        let binds = jail(&["/nonexistent/b/c1"]).binds(42).unwrap();
        assert_eq!(
            jail_path(&binds, Path::new("/proc/42/fd")),
            Some(PathBuf::from("/proc/self/fd"))
        );
        assert_eq!(
            jail_path(&binds, Path::new("/nonexistent/b/c1")),
            Some(PathBuf::from("/nonexistent/b/c1"))
        );
        assert_eq!(jail_path(&binds, Path::new("/nonexistent/b")), None);
        assert_eq!(jail_path(&binds, Path::new("/proc/420")), None);
        assert_eq!(
            under(Path::new("/j"), Path::new("/a/b")),
            Path::new("/j/a/b")
        );
    }

    #[test]
    fn no_capability_is_kept() {
        assert_eq!(KEPT_CAPABILITIES, 0);
    }

    /// One capability line of `/proc/<pid>/task/<tid>/status` as a mask.
    fn status_mask(status: &str, key: &str) -> u64 {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {status}"));
        u64::from_str_radix(v.trim(), 16).unwrap()
    }

    /// Walks `..` from `fd` until it stops moving: the root that fd leads to.
    fn root_reached(fd: &OwnedFd) -> (u64, u64) {
        let mut cur = nix::unistd::dup(fd.as_raw_fd()).unwrap();
        loop {
            let up = nix::fcntl::openat(
                Some(cur),
                "..",
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            let (a, b) = (file_id(&fstat(cur).unwrap()), file_id(&fstat(up).unwrap()));
            nix::unistd::close(cur).unwrap();
            cur = up;
            if a == b {
                nix::unistd::close(cur).unwrap();
                return a;
            }
        }
    }

    fn open_dir(p: &Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(p).unwrap())
    }

    /// Runs `f` on a thread of its own mount namespace (`/` a slave of ours), as the monitor's
    /// set-up leaves its main thread; the rest of the test process keeps its root.
    fn in_own_namespace<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(
                nix::sched::CloneFlags::CLONE_FS | nix::sched::CloneFlags::CLONE_NEWNS,
            )
            .unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_jail_holds_only_its_binds_and_the_thread_keeps_only_its_capabilities() {
        if !require(&[Need::Root]) {
            return;
        }
        let _one = one_jail_at_a_time();
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let kept = base.join("state/c1");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::create_dir_all(base.join("other")).unwrap();
        std::fs::write(base.join("other/secret"), "x").unwrap();
        std::fs::write(base.join("state/top"), "x").unwrap();
        let spec = Jail {
            dir: kept.join("jail"),
            keep: vec![kept.clone()],
            // The kept directory's parent, read-only: the kept one below it stays writable.
            read_only: vec![base.join("state")],
            nofile: 0,
            identity: None,
        };
        let (host_root, outside) = (
            file_id(&fstat(open_dir(Path::new("/")).as_raw_fd()).unwrap()),
            base.clone(),
        );
        // A directory fd opened before the monitor's own mount namespace exists (as `SockPath`
        // opens the state directory of a long socket path): its `..` leads to the host's root.
        let held_early = open_dir(&kept);
        let report = in_own_namespace(move || {
            // A directory fd of the old tree inside the jail (as `SockPath` holds one).
            let held = open_dir(&kept);
            let binds = spec.binds(std::process::id()).unwrap();
            new_root(&spec.dir, &binds).unwrap();
            set_no_new_privs().unwrap();
            drop_capabilities(KEPT_CAPABILITIES, None).unwrap();
            std::fs::write(kept.join("state.json"), "{}").unwrap();
            let read_only = std::fs::write(outside.join("state/top"), "y")
                .err()
                .and_then(|e| e.raw_os_error());
            let tid = nix::unistd::gettid();
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            (
                ["/etc", "/usr", "/home"].map(|p| Path::new(p).exists()),
                outside.join("other/secret").exists(),
                spec.dir.exists(),
                (root_reached(&held), root_reached(&held_early)),
                file_id(&nix::sys::stat::stat("/").unwrap()),
                (std::fs::create_dir("/new").is_err(), read_only),
                status,
            )
        });
        let (host_dirs, secret, stub, reached, jail_root, (ro, read_only), status) = report;
        assert_eq!(
            read_only,
            Some(libc::EROFS),
            "a read-only bind is read-only"
        );
        assert_eq!(
            host_dirs, [false; 3],
            "the host's directories are out of sight"
        );
        assert!(!secret, "a sibling of a kept directory is out of sight");
        assert!(!stub, "the jail's mount point is removed");
        let (reached, reached_early) = reached;
        assert_eq!(
            reached, jail_root,
            "a held fd leads to the jail's root, not the host's"
        );
        assert_ne!(reached, host_root);
        assert_eq!(
            reached_early, jail_root,
            "an fd opened in the host's namespace leads to the jail's root too"
        );
        assert!(ro, "the jail's root is read-only");
        assert_eq!(status_mask(&status, "CapEff:"), KEPT_CAPABILITIES);
        assert_eq!(status_mask(&status, "CapPrm:"), KEPT_CAPABILITIES);
        assert_eq!(status_mask(&status, "CapBnd:"), KEPT_CAPABILITIES);
        assert_eq!(status_mask(&status, "CapInh:"), 0);
        assert_eq!(status_mask(&status, "CapAmb:"), 0);
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert_eq!(
            std::fs::read_to_string(base.join("state/c1/state.json")).unwrap(),
            "{}",
            "a kept directory is the host's, writable"
        );
    }

    #[test]
    fn a_directory_fd_outside_the_jail_fails_the_lock_down() {
        if !require(&[Need::Root]) {
            return;
        }
        let _one = one_jail_at_a_time();
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("c1");
        std::fs::create_dir_all(&kept).unwrap();
        let spec = Jail {
            dir: kept.join("jail"),
            keep: vec![kept.clone()],
            read_only: Vec::new(),
            nofile: 0,
            identity: None,
        };
        let err = in_own_namespace(move || {
            let _held = open_dir(Path::new("/etc"));
            let binds = spec.binds(std::process::id()).unwrap();
            new_root(&spec.dir, &binds).unwrap_err().to_string()
        });
        assert!(err.contains("/etc outside the jail"), "{err}");
    }
}

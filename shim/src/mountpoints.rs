//! Mount points for a container whose root is read-only, created on the host as runc does.
//!
//! runc creates every missing mount destination (and the working directory) in the rootfs
//! before it makes the root read-only, so `docker run --read-only -v DIR:/new` works although
//! the image has no `/new`. Bulkhead exports a read-only root to the guest read-only, so the
//! guest cannot create them: the monitor does it here before binding the rootfs into the share.
//!
//! The rootfs is untrusted (an image may hold `evil -> /etc`): every path is resolved with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` below the rootfs, and each new entry is
//! made with `mkdirat`/`openat(O_CREAT | O_EXCL)` in a directory resolved that way, so nothing
//! is ever created outside it. Destinations below an earlier mount (e.g. `/dev/shm` below a
//! `/dev` tmpfs) are left to the guest, where that mount provides them.
//!
//! Without a mount on `/dev`, the guest's `/dev` is the read-only export itself: what the agent
//! puts there (device nodes, which it binds over empty files on a share, `pts`, `shm`, the
//! standard symlinks, `console`) must exist beforehand, so they are made here too, as empty
//! files, directories and links.

use std::ffi::{CStr, OsStr};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use bulkhead_protocol::dev::{DEFAULT_NODES, DIRS, LINKS};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum MountPointError {
    #[error("open rootfs {path}")]
    Root { path: PathBuf, source: Errno },
    #[error("create mount point {path} in the rootfs")]
    Create { path: String, source: Errno },
}

/// What a missing destination is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// The destination of a bind mount of a file (device nodes and the console included).
    File,
    /// A symlink with this target, kept as it is when something is there already.
    Link(&'static CStr),
}

/// Creates the missing mount destinations of `spec` and its `process.cwd` in `rootfs`.
/// `bundle_dir` resolves relative bind sources (to tell file binds from directory binds).
pub fn ensure(rootfs: &Path, bundle_dir: &Path, spec: &Value) -> Result<(), MountPointError> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| MountPointError::Root {
        path: rootfs.into(),
        source,
    })?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(root) };
    for (path, kind) in targets(bundle_dir, spec) {
        create(&root, &path, kind).map_err(|source| MountPointError::Create {
            path: format!("/{}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// The destinations (relative to the root, `.`/`..` kept for the kernel to resolve in-root)
/// that lie in the rootfs itself, in spec order, then the working directory.
fn targets(bundle_dir: &Path, spec: &Value) -> Vec<(PathBuf, Kind)> {
    let mut covered: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    let under = |covered: &[PathBuf], p: &Path| covered.iter().any(|c| p.starts_with(c) && p != c);
    for m in spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dest) = m.get("destination").and_then(Value::as_str) else {
            continue;
        };
        let rel = relative(dest);
        if rel.as_os_str().is_empty() || under(&covered, &rel) {
            continue;
        }
        let kind = if crate::share::is_bind(m) && source_is_file(bundle_dir, m) {
            Kind::File
        } else {
            Kind::Dir
        };
        out.push((rel.clone(), kind));
        covered.push(rel);
    }
    if let Some(cwd) = spec.pointer("/process/cwd").and_then(Value::as_str) {
        let rel = relative(cwd);
        if !rel.as_os_str().is_empty() && !under(&covered, &rel) && !covered.contains(&rel) {
            out.push((rel, Kind::Dir));
        }
    }
    let dev = Path::new("dev");
    if !covered.iter().any(|c| dev.starts_with(c)) {
        let mut add = |rel: PathBuf, kind| {
            if !under(&covered, &rel) && !covered.contains(&rel) {
                out.push((rel, kind));
            }
        };
        let devices = spec
            .pointer("/linux/devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("path").and_then(Value::as_str));
        for path in devices {
            add(relative(path), Kind::File);
        }
        let in_dev = |name: &CStr| dev.join(OsStr::from_bytes(name.to_bytes()));
        for (name, _, _) in DEFAULT_NODES {
            add(in_dev(name), Kind::File);
        }
        for name in DIRS {
            add(in_dev(name), Kind::Dir);
        }
        for (name, target) in LINKS {
            add(in_dev(name), Kind::Link(target));
        }
        if spec.pointer("/process/terminal").and_then(Value::as_bool) == Some(true) {
            add(dev.join("console"), Kind::File);
        }
    }
    out
}

fn relative(dest: impl AsRef<Path>) -> PathBuf {
    dest.as_ref()
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

fn source_is_file(bundle_dir: &Path, m: &Value) -> bool {
    fs::metadata(crate::share::bind_source(bundle_dir, m)).is_ok_and(|meta| !meta.is_dir())
}

fn resolve(root: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let at = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let fd = openat2(root.as_raw_fd(), at, how)?;
    // SAFETY: `openat2` returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Symlinks followed while creating one path (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// Makes `path` exist below the root, creating each missing component in a parent that was
/// itself resolved in-root. A dangling symlink on the way is followed (inside the root) and
/// its target created, as runc does.
fn create(root: &OwnedFd, path: &Path, kind: Kind) -> nix::Result<()> {
    create_following(root, path, kind, 0)
}

fn create_following(root: &OwnedFd, path: &Path, kind: Kind, links: usize) -> nix::Result<()> {
    let parts: Vec<_> = path.components().collect();
    for i in 1..=parts.len() {
        let prefix: PathBuf = parts[..i].iter().collect();
        match resolve(root, &prefix, OFlag::empty()) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent: PathBuf = parts[..i - 1].iter().collect();
        let dir = resolve(root, &parent, OFlag::O_DIRECTORY)?;
        let name = parts[i - 1].as_os_str();
        let last = i == parts.len();
        let made = if let (true, Kind::Link(target)) = (last, kind) {
            match nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name) {
                // Whatever is there (a dangling link to /proc/self/fd is normal) stays.
                Ok(()) | Err(Errno::EEXIST) => continue,
                Err(e) => Err(e),
            }
        } else if last && kind == Kind::File {
            openat(
                Some(dir.as_raw_fd()),
                name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY,
                Mode::from_bits_truncate(0o644),
            )
            .map(|fd| {
                let _ = nix::unistd::close(fd);
            })
        } else {
            mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                if resolve(root, &prefix, OFlag::empty()).is_ok() {
                    continue; // a racing creator
                }
                // A dangling symlink: create its target (read as the root would) instead.
                let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name)
                    .map_err(|_| Errno::EEXIST)?;
                if links >= MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                let target = Path::new(&target);
                let mut next = if target.is_absolute() {
                    relative(target)
                } else {
                    parent.join(target)
                };
                next.extend(&parts[i..]);
                return create_following(root, &next, kind, links + 1);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_destinations_and_cwd_are_created_inside_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // Hostile image: symlinks that point out of the rootfs.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/rel")).unwrap();
        fs::write(tmp.path().join("hosts"), "h").unwrap();
        let spec = json!({
            "process": {"cwd": "/work/dir"},
            "mounts": [
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/data/vol", "type": "bind", "source": tmp.path(), "options": ["rbind"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["bind"]},
                {"destination": "/abs/x", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/etc/rel/y", "type": "tmpfs", "source": "tmpfs"}
            ]
        });
        ensure(&root, tmp.path(), &spec).unwrap();
        assert!(root.join("dev").is_dir());
        assert!(!root.join("dev/shm").exists(), "left to the /dev mount");
        assert!(root.join("data/vol").is_dir());
        assert!(root.join("etc/hosts").is_file());
        assert!(root.join("work/dir").is_dir());
        // The symlinks resolved inside the rootfs: `/abs` → `<rootfs><outside>`, `/etc/rel` →
        // `<rootfs>/outside`; nothing appeared in the real outside directory.
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("x")
            .is_dir());
        assert!(root.join("outside/y").is_dir());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        // Idempotent.
        ensure(&root, tmp.path(), &spec).unwrap();
    }

    #[test]
    fn without_a_dev_mount_what_the_agent_puts_in_dev_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        fs::create_dir_all(root.join("dev")).unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", root.join("dev/fd")).unwrap();
        let spec = json!({
            "process": {"terminal": true},
            "mounts": [{"destination": "/dev/pts", "type": "devpts", "source": "devpts"}],
            "linux": {"devices": [{"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200}]}
        });
        ensure(&root, tmp.path(), &spec).unwrap();
        for file in [
            "null", "zero", "full", "random", "urandom", "tty", "console", "net/tun",
        ] {
            let meta = fs::symlink_metadata(root.join("dev").join(file)).unwrap();
            assert!(meta.is_file() && meta.len() == 0, "{file}");
        }
        assert!(root.join("dev/pts").is_dir() && root.join("dev/shm").is_dir());
        let link = |name: &str| fs::read_link(root.join("dev").join(name)).unwrap();
        assert_eq!(link("stderr"), Path::new("/proc/self/fd/2"));
        assert_eq!(link("ptmx"), Path::new("pts/ptmx"));
        // The dangling link already there was kept, not followed and created.
        assert_eq!(link("fd"), Path::new("/proc/self/fd"));
        assert!(!root.join("proc").exists());
        ensure(&root, tmp.path(), &spec).unwrap();

        // With a tmpfs on /dev, nothing of it is made.
        let other = tmp.path().join("other");
        fs::create_dir_all(&other).unwrap();
        let spec = json!({"mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}]});
        ensure(&other, tmp.path(), &spec).unwrap();
        assert_eq!(fs::read_dir(other.join("dev")).unwrap().count(), 0);
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("data"), "x").unwrap();
        let spec = json!({"mounts": [{"destination": "/data/vol", "type": "tmpfs"}]});
        let err = ensure(tmp.path(), tmp.path(), &spec)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "create mount point /data/vol in the rootfs");
    }
}

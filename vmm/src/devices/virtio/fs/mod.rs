//! virtio-fs (device id 26): one host directory shared with the guest over FUSE, served by
//! `fuse-backend-rs`'s passthrough file system in a confined process of its own. One device
//! per tag; a VM may have several.
//!
//! The monitor keeps the virtqueues (and guest memory); the server process gets each request
//! as a copy and answers with the reply's bytes, over a socket. Two sides:
//! - monitor: [`device`] (configuration space, activation, reset), [`worker`] (the queue
//!   thread: owns the queues, watches the server, stops the VM if it dies), [`request`] (one
//!   chain → one message: header checks, copies both ways, error replies), [`link`] (the
//!   server's socket and process), [`spawn`] (starting the process);
//! - server: [`server`] (the process's entry point and request loop), confined by [`sandbox`]
//!   (own mount and PID namespaces, rooted at the share, capabilities) and [`seccomp`] (its
//!   syscall allow-list; the queue thread's too);
//! - between them, [`wire`]: the messages and their bounds;
//! - [`filesystem`]: the guest-facing policy around `PassthroughFs` (names, open flags, device
//!   nodes, read-only shares, set-ID files, FUSE options and cache timeouts);
//! - [`guards`]: the name and open-flag checks every request passes first;
//! - [`setid`]: where a share lets the guest make set-user-ID and set-group-ID files;
//! - [`open_files`]: the cap on host fds a share holds for its guest;
//! - [`metrics`]: requests per opcode, notifications, interrupts, errors.

pub mod device;
pub mod filesystem;
mod guards;
pub mod link;
pub mod metrics;
pub mod open_files;
pub mod request;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod setid;
pub mod spawn;
pub mod wire;
mod worker;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

pub use device::FsDevice;
pub use metrics::{FsMetrics, FsMetricsSnapshot};

/// The tag field of the configuration space is 36 bytes (not NUL-terminated when full).
pub const TAG_MAX_LEN: usize = 36;
/// Queues: hiprio (FORGET, INTERRUPT) and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue. Large because without indirect descriptors a 1 MiB request (256 pages,
/// the `max_pages` we grant) takes ~260 descriptors.
pub const QUEUE_SIZE: u16 = 1024;

/// How the guest may cache a share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsCache {
    /// Only this guest changes the share while it runs (a container's rootfs): the guest keeps
    /// entries, attributes, negative lookups and file data for a day, writes back through its
    /// page cache, and skips OPEN/RELEASE round trips. Host-side changes are not seen.
    #[default]
    Exclusive,
    /// The host may change files too (a volume edited on the host): one-second timeouts,
    /// file data dropped when the host changed a file, write-through.
    Shared,
}

/// Where the guest may make set-user-ID and set-group-ID files (`chmod 4755`, or CREATE/MKNOD
/// with those bits). The guest is root in its VM, so such a file in the share is a set-ID file
/// owned by whichever host uid the guest chose — root included — that any host user who can
/// reach the directory may run. A refused request fails with `EPERM` (see [`setid`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SetIdFiles {
    /// Anywhere, like any local file system: for shares only trusted host users can reach.
    #[default]
    Allowed,
    /// Nowhere in the share.
    Refused,
    /// Only in this directory of the share and below it (relative to the share, e.g. `rootfs`);
    /// refused everywhere else. Checked when the bits are set: a set-ID file made in a directory
    /// that is not a mount of its own can later be renamed or linked elsewhere in the same mount.
    AllowedUnder(PathBuf),
}

/// How a share's server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsServer {
    /// A process of its own: `program args…`, which must be a binary that embeds this crate
    /// and calls [`server::main_if_requested`] first thing in `main`. The default is this very
    /// program (`/proc/self/exe`) with [`server::SUBCOMMAND`]: `bulkhead` and `bulkhead-vmm`
    /// both do. Started when the device is created, before the embedder may forbid `execve`.
    Exec {
        /// The program.
        program: PathBuf,
        /// Its arguments (not `argv[0]`).
        args: Vec<OsString>,
    },
    /// A thread of this process, confined per thread (same code, same namespaces and seccomp
    /// list, but no process boundary: a compromised server would share the VMM's memory and
    /// fds). For tests and fuzzing only.
    InProcess,
}

impl Default for FsServer {
    fn default() -> Self {
        let (program, args) = link::default_program();
        FsServer::Exec { program, args }
    }
}

/// One shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts (`mount -t virtiofs <tag> <dir>`): 1-36 bytes, no NUL.
    pub tag: String,
    /// The host directory to share.
    pub host_dir: PathBuf,
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// The caching contract.
    pub cache: FsCache,
    /// Where the guest may make set-ID files.
    pub set_id: SetIdFiles,
    /// Most host fds the share holds for the guest: inodes it knows plus open handles
    /// ([`open_files`]); `usize::MAX` leaves only the process's fd limit.
    pub max_open_files: usize,
    /// How its server is started.
    pub server: FsServer,
}

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or contains a NUL.
    #[error("invalid virtio-fs tag {0:?} (1-{TAG_MAX_LEN} bytes, no NUL)")]
    InvalidTag(String),
    /// Two shares with the same tag.
    #[error("duplicate virtio-fs tag {0:?}")]
    DuplicateTag(String),
    /// A `--fs` argument that does not parse.
    #[error("invalid share {0:?} (expected TAG=DIR[:ro][:shared][:nosetid])")]
    InvalidSpec(String),
    /// [`SetIdFiles::AllowedUnder`] names no directory of the share: empty, absolute, or with
    /// `.`/`..` components.
    #[error("set-ID directory {0:?} must be a relative path inside the share, without . or ..")]
    InvalidSetIdDir(PathBuf),
    /// The shared directory does not exist or is not a directory.
    #[error("cannot share {path}")]
    ShareDir {
        /// The configured path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The queue thread could not be started.
    #[error("cannot start the virtio-fs queue thread")]
    Spawn(#[source] std::io::Error),
    /// The queue thread ended before saying whether it is ready.
    #[error("the virtio-fs queue thread died while starting")]
    WorkerGone,
    /// The share's server could not be started or confined.
    #[error("cannot start the virtio-fs server")]
    Server(#[source] link::LinkError),
    /// The queue thread's seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The queue thread's epoll set.
    #[error("cannot set up the virtio-fs queue thread's epoll")]
    Epoll(#[source] std::io::Error),
}

impl FsConfig {
    /// A read-write, exclusive share where set-ID files are allowed.
    pub fn new(tag: impl Into<String>, host_dir: impl Into<PathBuf>) -> Self {
        Self {
            tag: tag.into(),
            host_dir: host_dir.into(),
            read_only: false,
            cache: FsCache::Exclusive,
            set_id: SetIdFiles::Allowed,
            max_open_files: usize::MAX,
            server: FsServer::default(),
        }
    }

    /// Checks the tag and the set-ID directory.
    pub fn validate(&self) -> Result<(), FsError> {
        let len = self.tag.len();
        if len == 0 || len > TAG_MAX_LEN || self.tag.contains('\0') {
            return Err(FsError::InvalidTag(self.tag.clone()));
        }
        if let SetIdFiles::AllowedUnder(dir) = &self.set_id {
            if !is_plain_relative(dir) {
                return Err(FsError::InvalidSetIdDir(dir.clone()));
            }
        }
        Ok(())
    }

    /// Checks a VM's shares together: each valid, tags unique.
    pub fn validate_all(shares: &[FsConfig]) -> Result<(), FsError> {
        for (i, share) in shares.iter().enumerate() {
            share.validate()?;
            if shares[..i].iter().any(|s| s.tag == share.tag) {
                return Err(FsError::DuplicateTag(share.tag.clone()));
            }
        }
        Ok(())
    }

    /// The share as an absolute path without symlinks (resolved once, on the host's terms),
    /// checked to be a directory.
    pub fn canonical_dir(&self) -> Result<PathBuf, FsError> {
        let err = |source| FsError::ShareDir {
            path: self.host_dir.clone(),
            source,
        };
        let dir = std::fs::canonicalize(&self.host_dir).map_err(err)?;
        if !dir.is_dir() {
            return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(dir)
    }
}

impl FromStr for FsConfig {
    type Err = FsError;

    /// `TAG=DIR[:ro][:shared][:nosetid]` (the suffixes in any order; `:nosetid` is
    /// [`SetIdFiles::Refused`]).
    fn from_str(spec: &str) -> Result<Self, FsError> {
        let bad = || FsError::InvalidSpec(spec.to_owned());
        let (tag, mut dir) = spec.split_once('=').ok_or_else(bad)?;
        let mut config = FsConfig::new(tag, "");
        loop {
            if let Some(rest) = dir.strip_suffix(":ro") {
                config.read_only = true;
                dir = rest;
            } else if let Some(rest) = dir.strip_suffix(":shared") {
                config.cache = FsCache::Shared;
                dir = rest;
            } else if let Some(rest) = dir.strip_suffix(":nosetid") {
                config.set_id = SetIdFiles::Refused;
                dir = rest;
            } else {
                break;
            }
        }
        if dir.is_empty() {
            return Err(bad());
        }
        config.host_dir = PathBuf::from(dir);
        config.validate()?;
        Ok(config)
    }
}

/// A non-empty relative path of plain names only, so that it names the same directory however
/// it is joined to the share's root (and can be compared with the kernel's paths, which never
/// hold `.` or `..`).
fn is_plain_relative(path: &Path) -> bool {
    let mut components = path.components().peekable();
    components.peek().is_some() && components.all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let c: FsConfig = "rootfs=/srv/a".parse().unwrap();
        assert_eq!(c, FsConfig::new("rootfs", "/srv/a"));
        let c: FsConfig = "v=/srv/b:ro:shared".parse().unwrap();
        assert!(c.read_only && c.cache == FsCache::Shared);
        assert_eq!(c.host_dir, PathBuf::from("/srv/b"));
        let c: FsConfig = "v=/srv/b:shared:ro".parse().unwrap();
        assert!(c.read_only && c.cache == FsCache::Shared);
        assert_eq!(c.set_id, SetIdFiles::Allowed);
        let c: FsConfig = "v=/srv/b:nosetid:ro".parse().unwrap();
        assert!(c.read_only && c.set_id == SetIdFiles::Refused);
        assert_eq!(c.host_dir, PathBuf::from("/srv/b"));
        // Colons inside the directory stay.
        let c: FsConfig = "v=/srv/a:b".parse().unwrap();
        assert_eq!(c.host_dir, PathBuf::from("/srv/a:b"));
        for bad in [
            "",
            "novalue",
            "=/x",
            "t=",
            "t=:ro",
            "t=:nosetid",
            &format!("{}=/x", "t".repeat(37)),
        ] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_are_checked_together() {
        let a = FsConfig::new("a", "/x");
        let max = FsConfig::new("t".repeat(TAG_MAX_LEN), "/x");
        assert!(FsConfig::validate_all(&[a.clone(), max]).is_ok());
        assert!(matches!(
            FsConfig::validate_all(&[a.clone(), a]),
            Err(FsError::DuplicateTag(t)) if t == "a"
        ));
        assert!(FsConfig::new("a\0b", "/x").validate().is_err());
    }

    #[test]
    fn the_set_id_directory_must_be_a_plain_relative_path() {
        let under = |dir: &str| FsConfig {
            set_id: SetIdFiles::AllowedUnder(dir.into()),
            ..FsConfig::new("a", "/x")
        };
        for good in ["rootfs", "a/b", "a/b/"] {
            assert!(under(good).validate().is_ok(), "{good:?}");
        }
        for bad in ["", "/rootfs", "/", ".", "./rootfs", "..", "a/../b", "../a"] {
            assert!(
                matches!(under(bad).validate(), Err(FsError::InvalidSetIdDir(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn share_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(FsConfig::new("a", dir.path()).canonical_dir().is_ok());
        assert!(FsConfig::new("a", &file).canonical_dir().is_err());
        assert!(FsConfig::new("a", dir.path().join("nope"))
            .canonical_dir()
            .is_err());
    }
}

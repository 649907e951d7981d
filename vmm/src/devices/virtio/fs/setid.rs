//! Where a share lets the guest make set-user-ID and set-group-ID files ([`SetIdFiles`]).
//!
//! The guest is root in its VM, and the worker keeps `CAP_FOWNER`/`CAP_FSETID` to act for any
//! guest user, so a guest's `chmod 4755` on a file it `chown`ed to 0 becomes a set-user-ID-root
//! file on the host; the worker's own `nosuid` mounts do not protect the host's view of the
//! directory. [`SetIdRule`] decides, for a request that asks for set-ID bits on a non-directory
//! (SETATTR of the mode, CREATE, MKNOD), whether the place allows them; the server answers
//! `EPERM` otherwise (see [`super::filesystem`]).
//!
//! "The place" is a path: the inode's (or, for a new file, its parent's) path as the confined
//! worker sees it, read back from the kernel through `/proc/self/fd/<the inode's O_PATH fd>`.
//! The worker's root is the share, so those paths start at the share (`/rootfs/usr/bin`). A
//! device or mount id would not do: a volume on the same file system as the rootfs has the same
//! `st_dev`, and a mount id says which bind a file is on, not whether that bind is the allowed
//! directory or below it. The path is then resolved again and must lead to the same inode (see
//! [`SetIdRule::permits`]). Only requests that carry set-ID bits pay for these look-ups (a
//! `stat`, a `readlinkat`, a `stat`).

use std::io;
use std::path::{Path, PathBuf};

use super::SetIdFiles;

/// The bits this module is about.
pub const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;

/// [`SetIdFiles`] made absolute against the server's root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetIdRule {
    /// Set-ID bits are always passed on.
    Allowed,
    /// Set-ID bits on a non-directory are refused.
    Refused,
    /// Set-ID bits on a non-directory are refused unless it is at or below this absolute path
    /// (as the server's thread sees it).
    Under(PathBuf),
}

impl SetIdRule {
    /// The rule for a server whose root is `root_dir` (`/` inside the worker's sandbox).
    pub fn new(root_dir: &Path, files: &SetIdFiles) -> Self {
        match files {
            SetIdFiles::Allowed => Self::Allowed,
            SetIdFiles::Refused => Self::Refused,
            SetIdFiles::AllowedUnder(dir) => Self::Under(root_dir.join(dir)),
        }
    }

    /// Whether a request for `mode` needs [`Self::permits`]: it asks for set-ID bits and the
    /// rule is not "allowed everywhere". Everything else goes through without a look-up.
    pub fn concerns(&self, mode: u32) -> bool {
        mode & SET_ID_BITS != 0 && *self != Self::Allowed
    }

    /// Whether a non-directory at `path` may carry set-ID bits. `path` is the kernel's answer
    /// for the inode concerned, and `names_the_inode` resolves it again: it must be under the
    /// allowed directory *and* still lead to that inode. Anything else is refused: an error, a
    /// relative path, a deleted file (its path ends in ` (deleted)`), a file the host moved out
    /// of the share (it reads `/`), and a file in a volume unmounted under the guest, whose path
    /// is from the root of the detached mount and may well read `/rootfs/…`.
    pub fn permits(
        &self,
        path: io::Result<PathBuf>,
        names_the_inode: impl FnOnce(&Path) -> bool,
    ) -> bool {
        match self {
            Self::Allowed => true,
            Self::Refused => false,
            Self::Under(dir) => path.is_ok_and(|p| is_under(&p, dir) && names_the_inode(&p)),
        }
    }
}

/// `path` is `dir` or below it, compared component by component (`/rootfs-old` is not under
/// `/rootfs`). Only absolute paths are: not `(unreachable)/…`, the form `getcwd` uses for a
/// place outside the root.
fn is_under(path: &Path, dir: &Path) -> bool {
    path.is_absolute() && path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(dir: &str) -> SetIdRule {
        SetIdRule::new(Path::new("/"), &SetIdFiles::AllowedUnder(dir.into()))
    }

    #[test]
    fn paths_are_compared_by_component() {
        let rule = under("rootfs");
        assert_eq!(rule, SetIdRule::Under("/rootfs".into()));
        let ok = |p: &str| rule.permits(Ok(PathBuf::from(p)), |_| true);
        for inside in ["/rootfs", "/rootfs/usr/bin/su", "/rootfs/bin/x (deleted)"] {
            assert!(ok(inside), "{inside:?}");
        }
        for outside in [
            "/",
            "/mounts/0/su",
            "/mounts/0/rootfs/su",
            "/rootfs-old/su",
            "/rootfsx",
            "rootfs/su",
            "(unreachable)/rootfs/su",
            "(unreachable)/su",
            "",
        ] {
            assert!(!ok(outside), "{outside:?}");
        }
        let ebadf = || Err(io::Error::from_raw_os_error(libc::EBADF));
        assert!(!rule.permits(ebadf(), |_| true));
        // A path under the directory that does not lead back to the inode.
        assert!(!rule.permits(Ok("/rootfs/usr/bin/su".into()), |_| false));
        // The second look-up only happens for a path under the directory.
        assert!(!rule.permits(Ok("/mounts/0/su".into()), |_| panic!("looked up")));
    }

    #[test]
    fn a_nested_directory_and_another_root() {
        let rule = SetIdRule::new(
            Path::new("/srv/share"),
            &SetIdFiles::AllowedUnder("a/b".into()),
        );
        let ok = |p: &str| rule.permits(Ok(PathBuf::from(p)), |_| true);
        assert!(ok("/srv/share/a/b/c"));
        assert!(!ok("/srv/share/a/c"));
        assert!(!ok("/a/b/c"));
    }

    #[test]
    fn only_set_id_bits_concern_a_restrictive_rule() {
        let allowed = SetIdRule::new(Path::new("/"), &SetIdFiles::Allowed);
        let refused = SetIdRule::new(Path::new("/"), &SetIdFiles::Refused);
        for mode in [0o4755, 0o2755, 0o6755, libc::S_IFREG | 0o4755] {
            assert!(!allowed.concerns(mode), "{mode:o}");
            assert!(refused.concerns(mode), "{mode:o}");
            assert!(under("rootfs").concerns(mode), "{mode:o}");
        }
        for mode in [0o755, 0o1777, libc::S_IFREG | 0o644] {
            assert!(!refused.concerns(mode), "{mode:o}");
            assert!(!under("rootfs").concerns(mode), "{mode:o}");
        }
        assert!(allowed.permits(Err(io::Error::from_raw_os_error(libc::EBADF)), |_| false));
        assert!(!refused.permits(Ok("/rootfs/su".into()), |_| true));
    }
}

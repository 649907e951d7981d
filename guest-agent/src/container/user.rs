//! `process.user`: numeric ids applied with raw `set*id` calls, plus `HOME` from the rootfs's
//! `/etc/passwd` when the spec's environment has none (runc does the same).
//!
//! The agent is a static binary without NSS, and the names that matter are the container's
//! anyway, so `/etc/passwd` is read from the container rootfs — through `openat2` with
//! `RESOLVE_IN_ROOT`, so a hostile image cannot point it at a file of the guest.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use oci_spec::runtime::User;

use super::error::{AtStep, ChildResult, Step};
use super::rootfs_path::RESOLVE;
use super::sys;

/// Largest `/etc/passwd` we read.
const MAX_PASSWD: u64 = 4 << 20;

/// The identity the process takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub umask: libc::mode_t,
}

impl UserPlan {
    /// From the spec's `process.user`; runc's default umask is 0022.
    pub fn new(user: &User) -> UserPlan {
        UserPlan {
            uid: user.uid(),
            gid: user.gid(),
            groups: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask().unwrap_or(0o022) & 0o777,
        }
    }

    /// Switches ids, keeping the permitted capabilities for the `capset` that follows. The
    /// supplementary groups are always set, so none of the agent's leak in (child side).
    pub fn apply(&self) -> ChildResult<()> {
        if self.uid != 0 {
            sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).step(Step::KeepCaps)?;
        }
        sys::setgroups(&self.groups).step(Step::Groups)?;
        sys::setresgid(self.gid).step(Step::Gid)?;
        sys::setresuid(self.uid).step(Step::Uid)
    }
}

/// The home directory of `uid` in the passwd file below `root` (a directory descriptor of the
/// container's root), or `None` when there is no such file or entry.
pub fn home_dir(root: RawFd, uid: u32) -> Option<String> {
    let fd = sys::openat2(root, c"etc/passwd", libc::O_RDONLY, RESOLVE).ok()?;
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // One read for any ordinary passwd file (the default growth starts at 32 bytes).
    let mut text = Vec::with_capacity(16 << 10);
    file.take(MAX_PASSWD).read_to_end(&mut text).ok()?;
    home_in(&String::from_utf8_lossy(&text), uid)
}

/// Finds `uid`'s home in passwd-format `text`.
fn home_in(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [_, _, id, _, _, home, ..] if id.parse() == Ok(uid) => Some((*home).to_string()),
            _ => None,
        }
    })
}

/// Returns `env` with `HOME` added when it is missing: the passwd entry's, else `/`.
pub fn with_home(mut env: Vec<String>, home: impl FnOnce() -> Option<String>) -> Vec<String> {
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = home()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn home_comes_from_the_containers_passwd() {
        let text =
            "root:x:0:0:root:/root:/bin/sh\n# junk\nbad\nfred:x:1000:1000::/home/fred:/bin/sh\n";
        assert_eq!(home_in(text, 1000).as_deref(), Some("/home/fred"));
        assert_eq!(home_in(text, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(text, 7), None);

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), text).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(
            home_dir(root.as_raw_fd(), 1000).as_deref(),
            Some("/home/fred")
        );

        let env = with_home(vec!["PATH=/bin".into()], || Some("/home/fred".into()));
        assert_eq!(env, ["PATH=/bin", "HOME=/home/fred"]);
        let env = with_home(vec!["HOME=/x".into()], || unreachable!());
        assert_eq!(env, ["HOME=/x"]);
        assert_eq!(with_home(vec![], || None), ["HOME=/"]);
    }

    #[test]
    fn passwd_symlinks_stay_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        // An absolute symlink resolves inside the root, where there is no such file.
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        assert_eq!(home_dir(root.as_raw_fd(), 0), None);
    }
}

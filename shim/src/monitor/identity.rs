//! What a monitor that gives up root (`Config::monitor_identity`) is handed first, while it
//! still is root: the files it goes on using by path once it is the monitor user, and not one
//! more. Everything else it uses is already open (guest memory, KVM, the tap, the `--log`
//! file, the console file's fd) or readable by anyone (its cgroup's statistics).
//!
//! - The state directory: group `gid`, mode 0710 — the monitor may pass through it (to its
//!   live directory and its sockets) but not list or change it; `state.json` stays root's.
//! - The live directory (`state::LIVE_DIR`) and what is in it: the monitor's, 0700.
//! - The sockets in the state directory: the monitor's (each stdio stream of an `exec` is a new
//!   connection to the VM's vsock socket, and `connect` needs write permission on it).
//! - The log directory: group `gid`, mode 1770 (not through a symlink). The sticky bit keeps
//!   root's files there (other containers' logs under a root monitor) from being renamed or
//!   removed; monitors that all run as this user can reach each other's files there, as root
//!   monitors could before.
//! - Its console log (and a rotated part, if there is one): the monitor's. A timings file an
//!   earlier container of the same name left is removed (the monitor could not replace it).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

/// The state directory of a monitor that is not root: its group may pass through it.
const STATE_DIR_MODE: u32 = 0o710;
/// The log directory when monitors are not root: their group writes it, each its own files.
const LOG_DIR_MODE: u32 = 0o1770;

#[derive(Debug, thiserror::Error)]
#[error("{what} {}", .path.display())]
pub struct HandOverError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The paths [`hand_over`] changes.
pub struct Handed {
    pub state_dir: PathBuf,
    pub live_dir: PathBuf,
    pub log_dir: PathBuf,
    pub console_log: PathBuf,
    pub timings: PathBuf,
}

/// Gives `uid`/`gid` what the module docs list. Runs as root, before the lock-down.
pub fn hand_over(h: &Handed, uid: u32, gid: u32) -> Result<(), HandOverError> {
    let (user, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    give(&h.state_dir, None, group)?;
    set_mode(&h.state_dir, STATE_DIR_MODE)?;
    give(&h.live_dir, user, group)?;
    for entry in read_dir(&h.live_dir)? {
        give(&entry, user, group)?;
    }
    for entry in read_dir(&h.state_dir)? {
        let is_socket = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_socket());
        // Not the control socket: the monitor listens on it already, and only root connects.
        if is_socket && entry.file_name() != Some(std::ffi::OsStr::new(crate::control::SOCKET_NAME))
        {
            give(&entry, user, group)?;
        }
    }
    // The log directory's group and mode change; through a symlink they would change the
    // link's group and the target's mode, whatever the target is.
    if std::fs::symlink_metadata(&h.log_dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(HandOverError {
            what: "the log directory is a symlink (name the directory itself in config.toml):",
            path: h.log_dir.clone(),
            source: std::io::Error::from_raw_os_error(libc::ELOOP),
        });
    }
    give(&h.log_dir, None, group)?;
    set_mode(&h.log_dir, LOG_DIR_MODE)?;
    let rotated = bulkhead_vmm::devices::serial::rotated_path(&h.console_log);
    for log in [&h.console_log, &rotated] {
        if log.exists() {
            give(log, user, group)?;
        }
    }
    // Best effort: what is there may be another monitor's doing (the directory is theirs
    // too); the timings are for `bench/`, and their write fails on its own.
    let _ = std::fs::remove_file(&h.timings);
    Ok(())
}

/// `chown` without following a symlink at `path` (the monitor's guest never wrote here, but a
/// chown that follows links is not one to write by habit).
fn give(path: &Path, user: Option<Uid>, group: Option<Gid>) -> Result<(), HandOverError> {
    nix::unistd::fchownat(
        None,
        path,
        user,
        group,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| HandOverError {
        what: "give the monitor user",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), HandOverError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        HandOverError {
            what: "set the mode of",
            path: path.to_path_buf(),
            source,
        }
    })
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, HandOverError> {
    let entries = std::fs::read_dir(dir).map_err(|source| HandOverError {
        what: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries.filter_map(|e| Some(e.ok()?.path())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_test_support::{require, Need};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_monitor_user_gets_its_own_files_and_no_more() {
        if !require(&[Need::Root]) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let h = Handed {
            state_dir: d.join("state"),
            live_dir: d.join("state/live"),
            log_dir: d.join("log"),
            console_log: d.join("log/c.console.log"),
            timings: d.join("log/c.timings.json"),
        };
        for dir in [&h.live_dir, &h.log_dir] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for f in [
            &h.state_dir.join("state.json"),
            &h.live_dir.join("status.json"),
            &h.console_log,
            &h.timings,
            &d.join("log/other.console.log"),
        ] {
            std::fs::write(f, "x").unwrap();
        }
        let sock = std::os::unix::net::UnixListener::bind(h.state_dir.join("vsock.sock")).unwrap();
        let control =
            std::os::unix::net::UnixListener::bind(h.state_dir.join(crate::control::SOCKET_NAME))
                .unwrap();
        hand_over(&h, 4242, 4343).unwrap();
        let owner = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        assert_eq!(owner(&h.state_dir), (0, 4343, 0o710));
        assert_eq!(
            owner(&h.state_dir.join("state.json")).0,
            0,
            "state.json stays root's"
        );
        assert_eq!(owner(&h.live_dir).0, 4242);
        assert_eq!(owner(&h.live_dir.join("status.json")).0, 4242);
        assert_eq!(owner(&h.state_dir.join("vsock.sock")).0, 4242);
        assert_eq!(
            owner(&h.state_dir.join(crate::control::SOCKET_NAME)).0,
            0,
            "the control socket stays root's"
        );
        assert_eq!(owner(&h.log_dir), (0, 4343, 0o1770));
        assert_eq!(owner(&h.console_log).0, 4242);
        assert_eq!(
            owner(&d.join("log/other.console.log")).0,
            0,
            "another container's log stays root's"
        );
        assert!(!h.timings.exists(), "an earlier timings file is removed");
        drop((sock, control));
    }
}

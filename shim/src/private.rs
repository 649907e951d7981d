//! Files and directories only their owner (root) may read: container state, logs, templates.
//!
//! A container's state names its bundle, its pids and its sockets; its logs carry what the guest
//! printed; a template holds a booted guest's memory, and with it what every clone of it shares
//! (the agent's stack canary and address-space layout). None of that is for other host users.
//! Modes are given at creation, so nothing is readable between a create and a chmod; existing
//! directories keep theirs (an engine may have made the root).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Directory mode: the owner only.
pub const DIR_MODE: u32 = 0o700;
/// File mode: the owner reads and writes.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents as owner-only directories.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates the one directory `path` (its parent must exist), owner-only; fails if it exists.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Opens `path` for appending, creating it owner-only.
pub fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Opens `path` for writing from its start, creating it owner-only; never through a symlink.
pub fn create_new_or_truncate(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `data` to `path`, replacing its contents; a new file is owner-only; never through a
/// symlink.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    create_new_or_truncate(path)?.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn what_is_created_is_the_owners_only() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b");
        create_dir_all(&deep).unwrap();
        assert_eq!((mode(&d.path().join("a")), mode(&deep)), (0o700, 0o700));
        let one = deep.join("c");
        create_dir(&one).unwrap();
        assert_eq!(mode(&one), 0o700);
        assert!(
            create_dir(&one).is_err(),
            "an existing directory is an error"
        );
        let log = one.join("log");
        append(&log).unwrap().write_all(b"x").unwrap();
        append(&log).unwrap().write_all(b"y").unwrap();
        assert_eq!(
            (std::fs::read(&log).unwrap(), mode(&log)),
            (b"xy".to_vec(), 0o600)
        );
        let file = one.join("file");
        write(&file, b"long text").unwrap();
        write(&file, b"short").unwrap();
        assert_eq!(
            (std::fs::read(&file).unwrap(), mode(&file)),
            (b"short".to_vec(), 0o600)
        );
    }
}

//! Set-user-ID and set-group-ID files (issue 11) against the real, confined server: where a
//! share's [`SetIdFiles`] refuses them, a hostile guest (root in its VM) can neither `chmod` a
//! file to 4755/2755 nor create one with those bits; everything else still works.
//!
//! The share is laid out like the shim's: `rootfs/` (the container's own files) and
//! `mounts/0/` (a volume), plus a file at the share's root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::client::*;
use super::harness::*;
use crate::devices::virtio::fs::SetIdFiles;

const EPERM: Option<i32> = Some(libc::EPERM);

fn populate(tmp: &Path) {
    let share = tmp.join("share");
    for dir in [
        "rootfs/bin",
        "rootfs/dir",
        "mounts/0/dir",
        "mounts/0/rootfs",
    ] {
        std::fs::create_dir_all(share.join(dir)).unwrap();
    }
    for file in [
        "top",
        "rootfs/bin/tool",
        "mounts/0/tool",
        "mounts/0/rootfs/tool",
    ] {
        std::fs::write(share.join(file), b"#!/bin/sh\n").unwrap();
        set_mode(&share.join(file), 0o755);
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The permission bits of a host file (set-ID bits included).
fn host_mode(h: &Harness<'_>, rel: &str) -> u32 {
    std::fs::symlink_metadata(h.share.join(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The node id of the share-relative path `rel`, looked up one component at a time.
fn node(h: &mut Harness<'_>, rel: &str) -> u64 {
    rel.split('/')
        .fold(ROOT, |parent, name| h.lookup(parent, name).unwrap().nodeid)
}

/// `chmod` as Linux sends it: the file type bits of the inode, then the permissions.
fn chmod(h: &mut Harness<'_>, rel: &str, mode: u32) -> Result<(), i32> {
    let kind = if h.share.join(rel).is_dir() {
        libc::S_IFDIR
    } else {
        libc::S_IFREG
    };
    let n = node(h, rel);
    h.chmod(n, kind | mode).map(drop)
}

fn create(h: &mut Harness<'_>, dir: &str, name: &str, mode: u32) -> Result<(), i32> {
    let parent = if dir.is_empty() { ROOT } else { node(h, dir) };
    h.create(parent, name, libc::O_WRONLY, mode).map(drop)
}

fn mknod(h: &mut Harness<'_>, dir: &str, name: &str, mode: u32) -> Result<(), i32> {
    let parent = if dir.is_empty() { ROOT } else { node(h, dir) };
    h.mknod(parent, name, libc::S_IFREG | mode, 0).map(drop)
}

/// What every rule allows: plain modes on files, set-ID bits on directories.
fn plain_modes_and_directories_still_work(h: &mut Harness<'_>, dirs: &[&str], files: &[&str]) {
    for file in files {
        assert_eq!(chmod(h, file, 0o700), Ok(()), "{file}");
        assert_eq!(host_mode(h, file), 0o700, "{file}");
        assert_eq!(
            chmod(h, file, 0o1755),
            Ok(()),
            "sticky is not set-ID: {file}"
        );
        assert_eq!(chmod(h, file, 0o755), Ok(()), "{file}");
    }
    for dir in dirs {
        // Set-group-ID on a directory: new entries inherit its group.
        assert_eq!(chmod(h, dir, 0o2775), Ok(()), "{dir}");
        assert_eq!(host_mode(h, dir), 0o2775, "{dir}");
        assert_eq!(chmod(h, dir, 0o6755), Ok(()), "{dir}");
        assert_eq!(chmod(h, dir, 0o755), Ok(()), "{dir}");
    }
    assert_eq!(create(h, dirs[0], "plain", 0o755), Ok(()));
    assert_eq!(host_mode(h, &format!("{}/plain", dirs[0])), 0o755);
}

#[test]
fn set_id_files_are_refused_everywhere_under_refused() {
    if !can_confine("set_id_files_are_refused_everywhere_under_refused") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |c| c.set_id = SetIdFiles::Refused);
    for file in ["top", "rootfs/bin/tool", "mounts/0/tool"] {
        for mode in [0o4755, 0o2755, 0o6755, 0o4000] {
            assert_eq!(chmod(&mut h, file, mode).err(), EPERM, "{file} {mode:o}");
        }
        assert_eq!(host_mode(&h, file), 0o755, "{file}");
    }
    // The type bits of a SETATTR are the guest's word: a file called a directory is a file.
    let tool = node(&mut h, "rootfs/bin/tool");
    assert_eq!(h.chmod(tool, libc::S_IFDIR | 0o4755).err(), EPERM);
    assert_eq!(host_mode(&h, "rootfs/bin/tool"), 0o755);

    for dir in ["", "rootfs/bin", "mounts/0"] {
        assert_eq!(create(&mut h, dir, "su", 0o4755).err(), EPERM, "{dir:?}");
        assert_eq!(mknod(&mut h, dir, "sg", 0o2755).err(), EPERM, "{dir:?}");
        let made = h.share.join(dir);
        assert!(!made.join("su").exists() && !made.join("sg").exists());
    }
    let fifo = libc::S_IFIFO | 0o4600;
    assert_eq!(h.mknod(ROOT, "fifo", fifo, 0).err(), EPERM);
    // Device nodes stay refused, with or without set-ID bits.
    let blk = libc::S_IFBLK | 0o600;
    assert_eq!(h.mknod(ROOT, "sda", blk, 0).err(), EPERM);

    plain_modes_and_directories_still_work(
        &mut h,
        &["rootfs/dir", "mounts/0/dir"],
        &["top", "rootfs/bin/tool", "mounts/0/tool"],
    );
}

#[test]
fn set_id_files_stay_allowed_only_under_the_allowed_directory() {
    if !can_confine("set_id_files_stay_allowed_only_under_the_allowed_directory") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |c| {
        c.set_id = SetIdFiles::AllowedUnder("rootfs".into());
    });
    // Inside: package installs keep working.
    assert_eq!(chmod(&mut h, "rootfs/bin/tool", 0o4755), Ok(()));
    assert_eq!(host_mode(&h, "rootfs/bin/tool"), 0o4755);
    assert_eq!(chmod(&mut h, "rootfs/bin/tool", 0o2755), Ok(()));
    assert_eq!(host_mode(&h, "rootfs/bin/tool"), 0o2755);
    assert_eq!(create(&mut h, "rootfs/bin", "su", 0o4755), Ok(()));
    assert_eq!(host_mode(&h, "rootfs/bin/su"), 0o4755);
    assert_eq!(mknod(&mut h, "rootfs/bin", "sg", 0o2755), Ok(()));
    assert_eq!(host_mode(&h, "rootfs/bin/sg"), 0o2755);

    // Outside: the volume, the share's root, and a volume directory that is only called rootfs.
    for file in ["mounts/0/tool", "top", "mounts/0/rootfs/tool"] {
        for mode in [0o4755, 0o2755] {
            assert_eq!(chmod(&mut h, file, mode).err(), EPERM, "{file} {mode:o}");
        }
        assert_eq!(host_mode(&h, file), 0o755, "{file}");
    }
    for dir in ["mounts/0", "", "mounts/0/rootfs"] {
        assert_eq!(create(&mut h, dir, "su", 0o4755).err(), EPERM, "{dir:?}");
        assert_eq!(mknod(&mut h, dir, "sg", 0o2755).err(), EPERM, "{dir:?}");
        assert!(!h.share.join(dir).join("su").exists());
    }

    plain_modes_and_directories_still_work(
        &mut h,
        &["mounts/0/dir", "rootfs/dir"],
        &["top", "mounts/0/tool", "rootfs/bin/tool"],
    );
}

#[test]
fn set_id_files_are_allowed_by_default() {
    if !can_confine("set_id_files_are_allowed_by_default") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    for file in ["top", "mounts/0/tool"] {
        assert_eq!(chmod(&mut h, file, 0o4755), Ok(()), "{file}");
        assert_eq!(host_mode(&h, file), 0o4755, "{file}");
    }
    assert_eq!(create(&mut h, "mounts/0", "su", 0o6755), Ok(()));
    assert_eq!(host_mode(&h, "mounts/0/su"), 0o6755);
    plain_modes_and_directories_still_work(&mut h, &["mounts/0/dir"], &["top"]);
}

#[test]
fn a_deleted_file_is_not_under_the_allowed_directory() {
    if !can_confine("a_deleted_file_is_not_under_the_allowed_directory") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |c| {
        c.set_id = SetIdFiles::AllowedUnder("rootfs".into());
    });
    let tool = node(&mut h, "rootfs/bin/tool");
    // Removed on the host while the guest holds it: its path is `/rootfs/bin/tool (deleted)`,
    // which names nothing any more.
    std::fs::remove_file(h.share.join("rootfs/bin/tool")).unwrap();
    assert_eq!(h.chmod(tool, libc::S_IFREG | 0o4755).err(), EPERM);
    assert_eq!(h.chmod(tool, libc::S_IFREG | 0o700).map(drop), Ok(()));
}

/// A volume unmounted under the guest (lazily, while the worker holds a file in it): the
/// file's path through `/proc/self/fd` is then from the root of the detached mount, and a volume
/// with a top-level `rootfs` directory makes that read like the allowed directory. Only
/// resolving the path again tells them apart. Runs on its own thread in a private mount
/// namespace (a shared tmpfs, so the unmount reaches the worker's copy of it).
#[test]
fn a_file_in_a_detached_volume_is_not_under_the_allowed_directory() {
    if !can_confine("a_file_in_a_detached_volume_is_not_under_the_allowed_directory") {
        return;
    }
    let outcome = std::thread::spawn(|| {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        let none = MsFlags::empty();
        unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).unwrap();
        let slave = MsFlags::MS_SLAVE | MsFlags::MS_REC;
        mount(None::<&str>, "/", None::<&str>, slave, None::<&str>).unwrap();
        let mem = test_mem();
        let mut h = Harness::with(
            &mem,
            |tmp| {
                mount(Some("tmpfs"), tmp, Some("tmpfs"), none, Some("size=1m")).unwrap();
                let shared = MsFlags::MS_SHARED;
                mount(None::<&str>, tmp, None::<&str>, shared, None::<&str>).unwrap();
                std::fs::create_dir_all(tmp.join("outside")).unwrap();
                populate(tmp);
                let volume = tmp.join("volume");
                std::fs::create_dir_all(volume.join("rootfs/bin")).unwrap();
                std::fs::write(volume.join("rootfs/bin/tool"), b"#!/bin/sh\n").unwrap();
                set_mode(&volume.join("rootfs/bin/tool"), 0o755);
                let target = tmp.join("share/mounts/0");
                let bind = MsFlags::MS_BIND;
                mount(Some(&volume), &target, None::<&str>, bind, None::<&str>).unwrap();
            },
            |c| c.set_id = SetIdFiles::AllowedUnder("rootfs".into()),
        );
        let tool = node(&mut h, "mounts/0/rootfs/bin/tool");
        assert_eq!(h.chmod(tool, libc::S_IFREG | 0o4755).err(), EPERM);
        umount2(&h.share.join("mounts/0"), MntFlags::MNT_DETACH).unwrap();
        let refused = h.chmod(tool, libc::S_IFREG | 0o4755).err();
        let mode = host_mode(&h, "../volume/rootfs/bin/tool");
        // The share's own rootfs/bin/tool is the file that path names now.
        let decoy = host_mode(&h, "rootfs/bin/tool");
        // Before the harness goes, so it can remove its directory.
        umount2(h.tmp.path(), MntFlags::MNT_DETACH).unwrap();
        (refused, mode, decoy)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert_eq!(outcome, (EPERM, 0o755, 0o755));
}

//! The cap on host fds one share holds for its guest (issue 11), against the real, confined
//! server: past it a new inode or handle fails with ENFILE before the host is touched, what the
//! guest already knows stays reachable, and FORGET/RELEASE give the room back.

use super::client::*;
use super::harness::*;
use crate::devices::virtio::fs::FsCache;

const ENFILE: Option<i32> = Some(libc::ENFILE);

#[test]
fn a_guest_past_the_cap_gets_enfile_and_known_files_stay_reachable() {
    if !can_confine("a_guest_past_the_cap_gets_enfile_and_known_files_stay_reachable") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |tmp| std::fs::create_dir(tmp.join("share/hostmade")).unwrap(),
        |c| {
            c.max_open_files = 6;
            // Real OPENs and handles (an exclusive share opens without a message).
            c.cache = FsCache::Shared;
        },
    );
    // Six new inodes fit (the root is the guest's from INIT and holds no count).
    let mut dirs = Vec::new();
    for i in 0..6 {
        dirs.push(h.mkdir(ROOT, &format!("d{i}"), 0o755).unwrap().nodeid);
    }
    assert_eq!(h.mkdir(ROOT, "d6", 0o755).err(), ENFILE);
    assert!(
        !h.share.join("d6").exists(),
        "refused before the host was touched"
    );
    assert_eq!(h.create(ROOT, "f", libc::O_WRONLY, 0o644).err(), ENFILE);
    assert!(!h.share.join("f").exists());
    assert_eq!(h.lookup(ROOT, "hostmade").err(), ENFILE, "a new inode");
    assert_eq!(h.opendir(dirs[1]).err(), ENFILE, "a new handle");
    // A revalidating LOOKUP of a known inode still works at the cap.
    assert_eq!(h.lookup(ROOT, "d0").unwrap().nodeid, dirs[0]);

    // FORGET of every reference (MKDIR's and the LOOKUP's) frees one place.
    h.forget(dirs[0], 2);
    assert!(h.lookup(ROOT, "hostmade").is_ok());
    assert_eq!(
        h.lookup(ROOT, "d0").err(),
        ENFILE,
        "forgotten, so new again"
    );
    // CREATE needs two places (the inode and the handle); RELEASE gives one back.
    h.forget(dirs[1], 1);
    h.forget(dirs[2], 1);
    let (entry, open) = h.create(ROOT, "f", libc::O_WRONLY, 0o644).unwrap();
    assert_eq!(h.mkdir(ROOT, "d7", 0o755).err(), ENFILE);
    h.release(entry.nodeid, open.fh).unwrap();
    assert!(h.mkdir(ROOT, "d7", 0o755).is_ok());
}

/// Fds this process holds (the worker is one of its threads).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_create_of_an_existing_name_whose_open_fails_keeps_no_fd() {
    if !can_confine("a_create_of_an_existing_name_whose_open_fails_keeps_no_fd") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |_| {},
        |c| {
            c.max_open_files = 8;
            c.cache = FsCache::Shared;
        },
    );
    let before = fds();
    for i in 0..40 {
        let name = format!("d{i}");
        let dir = h.mkdir(ROOT, &name, 0o755).unwrap().nodeid;
        h.forget(dir, 1);
        // A directory opened for writing through CREATE (no O_EXCL): EISDIR, and nothing kept.
        assert_eq!(
            h.create(ROOT, &name, libc::O_RDWR, 0o644).err(),
            Some(libc::EISDIR)
        );
    }
    // (Other tests of this binary open and close fds meanwhile: a leak here would be 40.)
    let after = fds();
    assert!(
        after < before + 20,
        "{} fds leaked",
        after.saturating_sub(before)
    );
    // An existing regular file through CREATE opens it, counted like an OPEN.
    std::fs::write(h.share.join("f"), b"x").unwrap();
    let (entry, open) = h.create(ROOT, "f", libc::O_RDWR, 0o644).unwrap();
    assert_eq!(h.read(entry.nodeid, open.fh, 0, 8).unwrap(), b"x");
    h.release(entry.nodeid, open.fh).unwrap();
    assert_eq!(
        h.create(ROOT, "f", libc::O_RDWR | libc::O_EXCL, 0o644)
            .err(),
        Some(libc::EEXIST)
    );
}

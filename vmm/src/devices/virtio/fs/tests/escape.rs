//! A hostile guest against the real, confined server: every way out of the share we know of
//! must end inside it. The share is `<tmp>/share`; `<tmp>/outside/secret` ("host secret") and
//! the host's own files are the prize.

use std::os::unix::fs::{symlink, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::client::*;
use super::harness::*;

const SECRET: &[u8] = b"host secret";

/// Checks that `<tmp>/outside` holds exactly the secret, unchanged.
fn assert_outside_untouched(h: &Harness<'_>) {
    let names: Vec<_> = std::fs::read_dir(&h.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "something appeared outside the share");
    assert_eq!(std::fs::read(h.outside.join("secret")).unwrap(), SECRET);
}

/// Reads a node's content the way the guest would (zero-message open: READ by node id).
fn slurp(h: &mut Harness<'_>, node: u64) -> Result<Vec<u8>, i32> {
    h.read(node, 0, 0, 4096)
}

fn refuse_reads_through(h: &mut Harness<'_>, node: u64) {
    if let Ok(data) = slurp(h, node) {
        assert_ne!(data, SECRET, "read the host secret");
    }
    for name in ["secret", "passwd", "etc", "self"] {
        if let Ok(e) = h.lookup(node, name) {
            if let Ok(data) = slurp(h, e.nodeid) {
                assert_ne!(data, SECRET, "read the host secret via {name}");
            }
        }
    }
}

#[test]
fn dot_dot_and_slashes_are_refused() {
    if !can_confine("dot_dot_and_slashes_are_refused") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| std::fs::create_dir(t.join("share/dir")).unwrap(),
        |_| {},
    );
    let dir = h.lookup(ROOT, "dir").unwrap().nodeid;
    for (parent, name) in [
        (ROOT, ".."),
        (ROOT, "."),
        (dir, ".."),
        (ROOT, "../outside/secret"),
        (ROOT, "../../../../etc/passwd"),
        (dir, "../../outside"),
        (ROOT, "/etc/passwd"),
        (ROOT, ""),
    ] {
        let r = h.lookup_raw(parent, &cstr(name));
        assert_eq!(r.errno, libc::EINVAL, "lookup({parent}, {name:?})");
    }
    // Creations with hostile names.
    assert_eq!(
        h.create(ROOT, "../outside/new", libc::O_WRONLY, 0o644)
            .err(),
        Some(libc::EINVAL)
    );
    assert_eq!(h.mkdir(dir, "..", 0o755).err(), Some(libc::EINVAL));
    assert_eq!(h.symlink(ROOT, "a/b", "x").err(), Some(libc::EINVAL));
    assert_eq!(
        h.rename(ROOT, "dir", ROOT, "../escaped").err(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        h.unlink(ROOT, "../outside/secret").err(),
        Some(libc::EINVAL)
    );
    assert!(h.share.join("dir").is_dir());
    assert_outside_untouched(&h);
}

#[test]
fn symlinks_out_of_the_share_are_never_followed() {
    if !can_confine("symlinks_out_of_the_share_are_never_followed") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| {
            let s = t.join("share");
            symlink("/", s.join("root")).unwrap();
            symlink("/etc/passwd", s.join("passwd")).unwrap();
            symlink(t.join("outside/secret"), s.join("secret")).unwrap();
            symlink(t.join("outside"), s.join("outside")).unwrap();
            symlink("../outside/secret", s.join("relative")).unwrap();
            symlink("/proc/self/root/etc/passwd", s.join("procroot")).unwrap();
        },
        |_| {},
    );
    for name in [
        "root", "passwd", "secret", "outside", "relative", "procroot",
    ] {
        let e = h.lookup(ROOT, name).unwrap();
        assert_eq!(
            e.attr.mode & libc::S_IFMT,
            libc::S_IFLNK,
            "{name} must be seen as a symlink"
        );
        // The guest gets the target text, to resolve in its own namespace.
        assert!(!h.readlink(e.nodeid).unwrap().is_empty());
        // Reading, listing or writing through the link node itself fails.
        assert!(slurp(&mut h, e.nodeid).is_err(), "read through {name}");
        assert!(
            h.readdir(e.nodeid, 0, false).is_err(),
            "readdir through {name}"
        );
        assert_eq!(
            h.lookup(e.nodeid, "secret").err(),
            Some(libc::ENOTDIR),
            "lookup under {name}"
        );
        assert!(h.write(e.nodeid, 0, 0, b"pwned").is_err());
        assert!(h.create(e.nodeid, "new", libc::O_WRONLY, 0o644).is_err());
    }
    // The guest can plant its own links to anywhere: they stay text.
    let planted = h.symlink(ROOT, "planted", "/proc/self/fd/0").unwrap();
    assert!(slurp(&mut h, planted.nodeid).is_err());
    assert_outside_untouched(&h);
    assert_ne!(std::fs::read("/etc/passwd").unwrap(), b"pwned");
}

#[test]
fn a_symlink_swapped_in_after_lookup_changes_nothing() {
    if !can_confine("a_symlink_swapped_in_after_lookup_changes_nothing") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| std::fs::create_dir(t.join("share/d")).unwrap(),
        |_| {},
    );
    let d = h.lookup(ROOT, "d").unwrap().nodeid;
    // Behind the guest's back (or by another guest request), d becomes a link to the outside.
    std::fs::rename(h.share.join("d"), h.share.join("d.old")).unwrap();
    symlink(&h.outside, h.share.join("d")).unwrap();

    // The old node is the directory it always was.
    assert_eq!(h.lookup(d, "secret").err(), Some(libc::ENOENT));
    let (f, _) = h.create(d, "created", libc::O_WRONLY, 0o644).unwrap();
    h.write(f.nodeid, 0, 0, b"inside").unwrap();
    assert_eq!(
        std::fs::read(h.share.join("d.old/created")).unwrap(),
        b"inside"
    );
    // A fresh lookup sees a symlink and goes no further.
    let link = h.lookup(ROOT, "d").unwrap().nodeid;
    assert_eq!(h.lookup(link, "secret").err(), Some(libc::ENOTDIR));
    assert_outside_untouched(&h);
}

#[test]
fn renames_racing_with_lookups_never_leave_the_share() {
    if !can_confine("renames_racing_with_lookups_never_leave_the_share") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| {
            let s = t.join("share");
            std::fs::create_dir(s.join("race")).unwrap();
            std::fs::write(s.join("race/secret"), b"inside").unwrap();
            symlink(t.join("outside"), s.join("swap")).unwrap();
        },
        |_| {},
    );
    // A host thread atomically swaps the directory and a symlink to the outside, as fast as it
    // can, while the guest looks up and reads race/secret.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let share = h.share.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    None,
                    &share.join("race"),
                    None,
                    &share.join("swap"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut inside = 0;
    for _ in 0..2000 {
        let Ok(e) = h.lookup(ROOT, "race") else {
            continue;
        };
        let Ok(s) = h.lookup(e.nodeid, "secret") else {
            continue;
        };
        match slurp(&mut h, s.nodeid) {
            Ok(data) => {
                assert_eq!(data, b"inside", "read something else than the share's file");
                inside += 1;
            }
            Err(errno) => assert_ne!(errno, 0),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the race did not run ({swaps} swaps)");
    assert!(inside > 0, "never read the file inside the share");
    assert_outside_untouched(&h);
}

#[test]
fn proc_self_fd_and_bogus_node_ids_lead_nowhere() {
    if !can_confine("proc_self_fd_and_bogus_node_ids_lead_nowhere") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| {
            let s = t.join("share");
            for fd in 0..32 {
                symlink(format!("/proc/self/fd/{fd}"), s.join(format!("fd{fd}"))).unwrap();
            }
            std::fs::create_dir_all(s.join("proc/self")).unwrap();
        },
        |_| {},
    );
    for fd in 0..32 {
        let e = h.lookup(ROOT, &format!("fd{fd}")).unwrap();
        refuse_reads_through(&mut h, e.nodeid);
    }
    // The share's own "proc" is just a directory.
    let proc_ = h.lookup(ROOT, "proc").unwrap().nodeid;
    let self_ = h.lookup(proc_, "self").unwrap().nodeid;
    assert_eq!(h.lookup(self_, "fd").err(), Some(libc::ENOENT));

    // Node ids the server never handed out: host inode numbers, huge values.
    let passwd_ino = std::fs::metadata("/etc/passwd").unwrap().ino();
    for node in [passwd_ino, 2, 1 << 40, u64::MAX, 0] {
        if node == 2 {
            continue; // may be a real node (fd0)
        }
        assert_eq!(h.getattr(node).err(), Some(libc::EBADF), "getattr({node})");
        assert!(slurp(&mut h, node).is_err());
        assert_eq!(h.link(node, ROOT, "hardlink").err(), Some(libc::EBADF));
    }
    assert!(!h.share.join("hardlink").exists());
    assert_outside_untouched(&h);
}

#[test]
fn device_nodes_cannot_be_made_or_opened() {
    if !can_confine("device_nodes_cannot_be_made_or_opened") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| {
            // A host-made device node and FIFO inside the share.
            let s = t.join("share");
            nix::sys::stat::mknod(
                &s.join("null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .unwrap();
            nix::unistd::mkfifo(
                &s.join("fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o666),
            )
            .unwrap();
        },
        |_| {},
    );
    let sda = libc::makedev(8, 0) as u32;
    assert_eq!(
        h.mknod(ROOT, "sda", libc::S_IFBLK | 0o600, sda).err(),
        Some(libc::EPERM)
    );
    assert_eq!(
        h.mknod(
            ROOT,
            "mem",
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 1) as u32
        )
        .err(),
        Some(libc::EPERM)
    );
    assert!(!h.share.join("sda").exists() && !h.share.join("mem").exists());
    // FIFOs and sockets are fine to create.
    h.mknod(ROOT, "myfifo", libc::S_IFIFO | 0o600, 0).unwrap();
    assert!(h.share.join("myfifo").exists());

    // Existing special files are never opened by the server (a FIFO would block it forever).
    for name in ["null", "fifo", "myfifo"] {
        let e = h.lookup(ROOT, name).unwrap();
        assert_eq!(slurp(&mut h, e.nodeid).err(), Some(libc::EBADF), "{name}");
        assert!(h.write(e.nodeid, 0, 0, b"x").is_err());
    }
}

#[test]
fn read_only_share_refuses_every_change() {
    if !can_confine("read_only_share_refuses_every_change") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(
        &mem,
        |t| {
            std::fs::write(t.join("share/file"), b"original").unwrap();
            std::fs::create_dir(t.join("share/dir")).unwrap();
        },
        |c| c.read_only = true,
    );
    let file = h.lookup(ROOT, "file").unwrap().nodeid;
    let dir = h.lookup(ROOT, "dir").unwrap().nodeid;
    // Reading works, with real opens (so EROFS reaches open(), not a later flush).
    let open = h.open(file, libc::O_RDONLY).unwrap();
    assert_eq!(h.read(file, open.fh, 0, 100).unwrap(), b"original");
    let erofs = Some(libc::EROFS);
    assert_eq!(h.open(file, libc::O_WRONLY).err(), erofs);
    assert_eq!(h.open(file, libc::O_RDONLY | libc::O_TRUNC).err(), erofs);
    assert_eq!(h.write(file, open.fh, 0, b"changed").err(), erofs);
    assert_eq!(h.truncate(file, 0).err(), erofs);
    assert_eq!(h.create(ROOT, "new", libc::O_WRONLY, 0o644).err(), erofs);
    assert_eq!(h.mkdir(ROOT, "newdir", 0o755).err(), erofs);
    assert_eq!(h.symlink(ROOT, "link", "file").err(), erofs);
    assert_eq!(h.link(file, ROOT, "hard").err(), erofs);
    assert_eq!(h.unlink(ROOT, "file").err(), erofs);
    assert_eq!(h.rmdir(ROOT, "dir").err(), erofs);
    assert_eq!(h.rename(ROOT, "file", dir, "moved").err(), erofs);
    assert_eq!(h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o600, 0).err(), erofs);
    assert_eq!(std::fs::read(h.share.join("file")).unwrap(), b"original");
    let names: Vec<_> = std::fs::read_dir(&h.share)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

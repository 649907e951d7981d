//! The ordinary life of a share: INIT, LOOKUP, GETATTR, OPEN/READ/WRITE, CREATE, READDIR(PLUS),
//! renames and removals, with the results checked on the host.

use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::FsOptions;

use super::client::*;
use super::harness::*;

fn populate(tmp: &std::path::Path) {
    let share = tmp.join("share");
    std::fs::write(share.join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(share.join("dir")).unwrap();
    std::fs::write(share.join("dir/a"), b"A").unwrap();
    std::fs::write(share.join("dir/b"), b"B").unwrap();
}

#[test]
fn init_grants_large_requests_and_caching() {
    if !can_confine("init_grants_large_requests_and_caching") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let init = h.init();
    let flags = FsOptions::from_bits_truncate(u64::from(init.flags));
    assert_eq!(init.max_pages, 256);
    assert_eq!(init.max_write, 1 << 20);
    for want in [
        FsOptions::MAX_PAGES,
        FsOptions::BIG_WRITES,
        FsOptions::DO_READDIRPLUS,
        FsOptions::WRITEBACK_CACHE,
        FsOptions::ZERO_MESSAGE_OPEN,
        FsOptions::CACHE_SYMLINKS,
        FsOptions::PARALLEL_DIROPS,
    ] {
        assert!(flags.contains(want), "{want:?} missing from {flags:?}");
    }
    assert!(!flags.contains(FsOptions::PERFILE_DAX), "{flags:?}");
    assert_eq!(init.flags2, 0, "no DAX or other high flags");
}

#[test]
fn lookup_getattr_read() {
    if !can_confine("lookup_getattr_read") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    let e = h.lookup(ROOT, "hello.txt").unwrap();
    let host = std::fs::metadata(h.share.join("hello.txt")).unwrap();
    assert_eq!(e.attr.size, host.len());
    assert_eq!(e.attr.ino, host.ino());
    assert_eq!(
        e.entry_valid, 86_400,
        "exclusive shares cache entries for a day"
    );
    let attr = h.getattr(e.nodeid).unwrap();
    assert_eq!(attr.attr.mode, host.mode());

    // Zero-message open: OPEN says ENOSYS, READ works without a handle.
    assert_eq!(h.open(e.nodeid, libc::O_RDONLY).err(), Some(libc::ENOSYS));
    let data = h.read(e.nodeid, 0, 0, 4096).unwrap();
    assert_eq!(data, b"hello from the host\n");
    assert_eq!(h.read(e.nodeid, 0, 6, 4).unwrap(), b"from");

    // A missing name is a negative entry the guest may cache.
    let r = h.lookup_raw(ROOT, &cstr("missing"));
    assert_eq!(r.errno, 0);
    let neg: fuse_backend_rs::abi::fuse_abi::EntryOut = r.obj();
    assert_eq!((neg.nodeid, neg.entry_valid), (0, 86_400));

    let m = h.metrics();
    assert_eq!(m.count("LOOKUP"), 2);
    assert_eq!(m.count("READ"), 2);
    assert_eq!(m.count("INIT"), 1);
    assert!(m.interrupts > 0);
}

#[test]
fn create_write_read_back_on_the_host() {
    if !can_confine("create_write_read_back_on_the_host") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    let (e, open) = h.create(ROOT, "new.txt", libc::O_WRONLY, 0o644).unwrap();
    // Zero-message opens: CREATE hands out no handle, I/O goes by node id.
    assert_eq!(open.fh, 0);
    assert_eq!(
        h.write(e.nodeid, open.fh, 0, b"written by the guest")
            .unwrap(),
        20
    );
    assert_eq!(h.write(e.nodeid, open.fh, 8, b"BY").unwrap(), 2);
    assert_eq!(
        std::fs::read(h.share.join("new.txt")).unwrap(),
        b"written BY the guest"
    );
    let meta = std::fs::metadata(h.share.join("new.txt")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o644);

    // A 1 MiB write and read in one request each.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(h.write(e.nodeid, 0, 0, &big).unwrap(), 1 << 20);
    assert_eq!(h.read(e.nodeid, 0, 0, 1 << 20).unwrap(), big);
    assert_eq!(std::fs::read(h.share.join("new.txt")).unwrap(), big);

    h.truncate(e.nodeid, 5).unwrap();
    assert_eq!(std::fs::read(h.share.join("new.txt")).unwrap(), &big[..5]);
}

#[test]
fn directories_readdir_rename_unlink() {
    if !can_confine("directories_readdir_rename_unlink") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    let dir = h.lookup(ROOT, "dir").unwrap().nodeid;
    // Zero-message opendir: READDIR works with handle 0.
    assert_eq!(h.opendir(dir).err(), Some(libc::ENOSYS));
    let mut names: Vec<_> = h
        .readdir(dir, 0, false)
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let plus = h.readdir(dir, 0, true).unwrap();
    assert_eq!(plus.len(), 2);
    assert!(plus.iter().all(|d| d.nodeid.is_some_and(|n| n > 1)));

    let sub = h.mkdir(dir, "sub", 0o755).unwrap();
    assert!(h.share.join("dir/sub").is_dir());
    h.rename(dir, "a", sub.nodeid, "moved").unwrap();
    assert_eq!(std::fs::read(h.share.join("dir/sub/moved")).unwrap(), b"A");
    h.unlink(sub.nodeid, "moved").unwrap();
    h.rmdir(dir, "sub").unwrap();
    assert!(!h.share.join("dir/sub").exists());

    h.symlink(dir, "link", "/etc/passwd").unwrap();
    assert_eq!(
        std::fs::read_link(h.share.join("dir/link")).unwrap(),
        std::path::Path::new("/etc/passwd")
    );
    let link = h.lookup(dir, "link").unwrap();
    assert_eq!(h.readlink(link.nodeid).unwrap(), b"/etc/passwd");

    let b = h.lookup(dir, "b").unwrap();
    h.link(b.nodeid, ROOT, "b-again").unwrap();
    assert_eq!(
        std::fs::metadata(h.share.join("b-again")).unwrap().ino(),
        std::fs::metadata(h.share.join("dir/b")).unwrap().ino()
    );

    // FORGET takes no reply and comes back with nothing written.
    assert_eq!(h.forget(b.nodeid, 2), 0);
    assert_eq!(h.metrics().count("FORGET"), 1);
}

#[test]
fn shared_cache_mode_uses_short_timeouts_and_real_opens() {
    if !can_confine("shared_cache_mode_uses_short_timeouts_and_real_opens") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |c| {
        c.cache = crate::devices::virtio::fs::FsCache::Shared;
    });
    let init = h.init();
    let flags = FsOptions::from_bits_truncate(u64::from(init.flags));
    assert!(!flags.contains(FsOptions::WRITEBACK_CACHE));
    assert!(!flags.contains(FsOptions::ZERO_MESSAGE_OPEN));
    assert!(flags.contains(FsOptions::AUTO_INVAL_DATA));
    let e = h.lookup(ROOT, "hello.txt").unwrap();
    assert_eq!(e.entry_valid, 1);
    let open = h.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_ne!(open.fh, 0);
    assert_eq!(h.read(e.nodeid, open.fh, 0, 5).unwrap(), b"hello");
    h.release(e.nodeid, open.fh).unwrap();
    assert_eq!(h.lookup(ROOT, "missing").err(), Some(libc::ENOENT));
    let r = h.lookup_raw(ROOT, &cstr("missing"));
    assert_eq!(
        r.errno,
        libc::ENOENT,
        "no negative caching for shared shares"
    );
}

#[test]
fn reset_forgets_the_old_drivers_state() {
    if !can_confine("reset_forgets_the_old_drivers_state") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    let e = h.lookup(ROOT, "hello.txt").unwrap();
    use crate::devices::virtio::VirtioDevice;
    h.dev.lock().unwrap().reset();
    // A new driver on fresh rings.
    h.q = vec![
        DriverQueue::new_at(&mem, 0x2_0000),
        DriverQueue::new_at(&mem, 0x3_0000),
    ];
    h.activate();
    h.init();
    // The old node id means nothing any more.
    assert_eq!(h.getattr(e.nodeid).err(), Some(libc::EBADF));
    assert!(h.lookup(ROOT, "hello.txt").is_ok());
}

#[test]
fn requests_keep_flowing_across_ring_wraps() {
    if !can_confine("requests_keep_flowing_across_ring_wraps") {
        return;
    }
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    for _ in 0..3 * usize::from(QSIZE) {
        h.getattr(ROOT).unwrap();
    }
    let m = h.metrics();
    assert_eq!(m.count("GETATTR"), 3 * u64::from(QSIZE));
    assert_eq!((m.server_errors, m.dropped, m.queue_errors), (0, 0, 0));
}

#[test]
fn xattrs_are_not_served() {
    if !can_confine("xattrs_are_not_served") {
        return;
    }
    use fuse_backend_rs::abi::fuse_abi::{GetxattrIn, SetxattrIn};
    use vm_memory::ByteValued;
    let mem = test_mem();
    let mut h = Harness::with(&mem, populate, |_| {});
    let f = h.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let set = SetxattrIn { size: 1, flags: 0 };
    let r = h.call(
        OP_SETXATTR,
        f,
        &[set.as_slice(), &cstr("trusted.overlay.opaque"), b"y"],
        REPLY_LEN,
    );
    assert_eq!(r.errno, libc::ENOSYS);
    let get = GetxattrIn {
        size: 100,
        padding: 0,
    };
    let r = h.call(
        OP_GETXATTR,
        f,
        &[get.as_slice(), &cstr("security.capability")],
        REPLY_LEN,
    );
    assert_eq!(r.errno, libc::ENOSYS);
}

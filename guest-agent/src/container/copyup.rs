//! `tmpcopyup`: a tmpfs mount that starts with a copy of the directory it covers.
//!
//! It is a crun extension that runc also honours; podman puts it on the tmpfs mounts of
//! `--read-only` containers (`/tmp`, `/var/tmp`, `/run`) so that what the image ships there is
//! still visible. The copy keeps owners and modes (and so setuid bits: the chmod comes after the
//! chown that clears them), copies symlinks as symlinks and recreates device nodes, fifos and
//! sockets; it never follows a link.
//!
//! It runs in the cloned container child (see `sys`), so it allocates nothing: one directory
//! buffer per level on the stack and `sendfile` for file data. The source is the container's
//! own rootfs, so its contents are the container's to choose; a tree deeper than [`MAX_DEPTH`]
//! fails the mount with `ELOOP` instead of growing the stack without bound.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::sys::{self, SysResult};

/// Deepest directory level copied.
pub const MAX_DEPTH: usize = 32;

/// Bytes handed to one `sendfile` call.
const CHUNK: usize = 1 << 20;

/// `struct linux_dirent64`: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
const DIRENT_NAME: usize = 19;

/// Copies everything inside directory `src` into directory `dst` (both open with
/// `O_RDONLY | O_DIRECTORY`).
pub fn copy_tree(src: RawFd, dst: RawFd) -> SysResult<()> {
    copy_dir(src, dst, 0)
}

fn copy_dir(src: RawFd, dst: RawFd, depth: usize) -> SysResult<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = sys::getdents64(src, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut entries = buf.get(..n).unwrap_or_default();
        while let Some(name) = next_name(&mut entries)? {
            if name != c"." && name != c".." {
                copy_entry(src, dst, name, depth)?;
            }
        }
    }
}

/// The next entry's name in a `getdents64` buffer; advances `entries` past it.
fn next_name<'a>(entries: &mut &'a [u8]) -> SysResult<Option<&'a CStr>> {
    if entries.is_empty() {
        return Ok(None);
    }
    let reclen = match entries.get(16..18) {
        Some(&[a, b]) => usize::from(u16::from_ne_bytes([a, b])),
        _ => return Err(Errno::EIO),
    };
    let record = entries.get(..reclen).ok_or(Errno::EIO)?;
    let name = record
        .get(DIRENT_NAME..)
        .and_then(|n| CStr::from_bytes_until_nul(n).ok())
        .ok_or(Errno::EIO)?;
    *entries = entries.get(reclen..).unwrap_or_default();
    Ok(Some(name))
}

fn copy_entry(src: RawFd, dst: RawFd, name: &CStr, depth: usize) -> SysResult<()> {
    let st = sys::lstatat(src, name)?;
    let kind = st.st_mode & libc::S_IFMT;
    match kind {
        libc::S_IFDIR => {
            if depth + 1 >= MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            sys::mkdirat(dst, name, 0o700)?;
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let from = sys::openat(src, name, flags, 0)?;
            let to = sys::openat(dst, name, flags, 0);
            let copied = to.and_then(|to| {
                let r = copy_dir(from, to, depth + 1);
                sys::close(to);
                r
            });
            sys::close(from);
            copied?;
        }
        libc::S_IFREG => copy_file(src, dst, name)?,
        libc::S_IFLNK => copy_link(src, dst, name)?,
        _ => sys::mknodat(dst, name, st.st_mode, st.st_rdev)?,
    }
    sys::fchownat(dst, name, st.st_uid, st.st_gid)?;
    if kind != libc::S_IFLNK {
        sys::fchmodat(dst, name, st.st_mode & 0o7777)?;
    }
    Ok(())
}

fn copy_file(src: RawFd, dst: RawFd, name: &CStr) -> SysResult<()> {
    let from = sys::openat(src, name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let copied = sys::openat(dst, name, flags, 0o600).and_then(|to| {
        let r = pump(from, to);
        sys::close(to);
        r
    });
    sys::close(from);
    copied
}

fn pump(from: RawFd, to: RawFd) -> SysResult<()> {
    loop {
        match sys::sendfile(to, from, CHUNK) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Kept out of line so the link buffer is not part of every directory level's frame.
#[inline(never)]
fn copy_link(src: RawFd, dst: RawFd, name: &CStr) -> SysResult<()> {
    let mut target = [0u8; libc::PATH_MAX as usize + 1];
    let n = sys::readlinkat(src, name, &mut target)?;
    // A target that filled the buffer may have been cut short.
    if n >= target.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    if let Some(end) = target.get_mut(n) {
        *end = 0;
    }
    let target = CStr::from_bytes_until_nul(&target).map_err(|_| Errno::EINVAL)?;
    sys::symlinkat(target, dst, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::path::Path;

    fn dir_fd(p: &Path) -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(p)
            .unwrap()
    }

    #[test]
    fn a_tree_is_copied_with_modes_links_and_fifos() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("a/b")).unwrap();
        std::fs::write(s.join("a/b/file"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(s.join("top"), "top\n").unwrap();
        std::fs::set_permissions(s.join("top"), PermissionsExt::from_mode(0o4751)).unwrap();
        std::fs::set_permissions(s.join("a"), PermissionsExt::from_mode(0o1777)).unwrap();
        symlink("/etc/passwd", s.join("abs")).unwrap();
        symlink("a/b", s.join("rel")).unwrap();
        let fifo = CString::new(s.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        std::os::unix::fs::chown(s.join("top"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(s.join("top"), PermissionsExt::from_mode(0o4751)).unwrap();

        copy_tree(dir_fd(s).as_raw_fd(), dir_fd(dst.path()).as_raw_fd()).unwrap();

        let d = dst.path();
        assert_eq!(
            std::fs::read(d.join("a/b/file")).unwrap(),
            vec![7u8; 3 << 20]
        );
        assert_eq!(std::fs::read_to_string(d.join("top")).unwrap(), "top\n");
        let top = std::fs::metadata(d.join("top")).unwrap();
        assert_eq!(
            (top.mode() & 0o7777, top.uid(), top.gid()),
            (0o4751, 1000, 1001)
        );
        assert_eq!(
            std::fs::metadata(d.join("a")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            std::fs::read_link(d.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(std::fs::read_link(d.join("rel")).unwrap(), Path::new("a/b"));
        let fifo = std::fs::symlink_metadata(d.join("fifo")).unwrap();
        assert_eq!(fifo.mode() & libc::S_IFMT, libc::S_IFIFO);
        assert_eq!(fifo.mode() & 0o7777, 0o640);
    }

    #[test]
    fn a_tree_deeper_than_the_limit_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let mut deep = src.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 1 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let r = copy_tree(
            dir_fd(src.path()).as_raw_fd(),
            dir_fd(dst.path()).as_raw_fd(),
        );
        assert_eq!(r, Err(Errno::ELOOP));
    }

    #[test]
    fn garbage_in_a_dirent_buffer_is_an_error_not_a_panic() {
        let mut short: &[u8] = &[1, 2, 3];
        assert_eq!(next_name(&mut short), Err(Errno::EIO));
        let mut rec = vec![0u8; 24];
        rec[16] = 200; // reclen past the end
        let mut r: &[u8] = &rec;
        assert_eq!(next_name(&mut r), Err(Errno::EIO));
        let mut unterminated = vec![b'x'; 24];
        unterminated[16] = 24;
        unterminated[17] = 0;
        let mut u: &[u8] = &unterminated;
        assert_eq!(next_name(&mut u), Err(Errno::EIO));
    }
}

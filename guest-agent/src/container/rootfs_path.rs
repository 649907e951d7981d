//! Resolving paths inside the container rootfs without ever leaving it.
//!
//! The rootfs is written by the (untrusted) image, so a mount destination such as `/etc/x` may
//! be a symlink to `/` of the guest or contain `..`. Every lookup uses `openat2` with
//! `RESOLVE_IN_ROOT`, which makes the kernel treat the rootfs as `/` for absolute symlinks and
//! `..`, and `RESOLVE_NO_MAGICLINKS`, so `/proc/self/root`-style links cannot jump out either.
//! Missing mount points are created one component at a time, each relative to the already
//! resolved parent. The result is an `O_PATH` descriptor, used as `/proc/self/fd/N`.
//!
//! Runs in the cloned child: no allocation, paths live in stack buffers.

use std::ffi::CStr;
use std::os::fd::RawFd;

use nix::errno::Errno;

use super::spec::{MAX_COMPONENTS, PATH_MAX};
use super::sys::{self, SysResult};

/// The `openat2` resolve flags for every lookup below the rootfs.
pub const RESOLVE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

/// What to create when the path does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: a missing path is an error.
    Nothing,
    /// Directories all the way.
    Dir,
    /// Directories, then an empty regular file as the last component (for file bind mounts).
    File,
}

/// A NUL-terminated copy of a path prefix, on the stack.
struct StackPath {
    buf: [u8; PATH_MAX + 1],
}

impl StackPath {
    fn new() -> Self {
        StackPath {
            buf: [0; PATH_MAX + 1],
        }
    }

    /// `bytes` with a NUL appended, as a C string.
    fn set(&mut self, bytes: &[u8]) -> SysResult<&CStr> {
        let dst = self.buf.get_mut(..bytes.len()).ok_or(Errno::ENAMETOOLONG)?;
        dst.copy_from_slice(bytes);
        *self.buf.get_mut(bytes.len()).ok_or(Errno::ENAMETOOLONG)? = 0;
        let with_nul = self.buf.get(..=bytes.len()).ok_or(Errno::ENAMETOOLONG)?;
        CStr::from_bytes_with_nul(with_nul).map_err(|_| Errno::EINVAL)
    }
}

/// Formats `/proc/self/fd/<fd>` into a stack buffer: the path that mount(2) follows to exactly
/// the object `fd` resolved to.
pub struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    /// The magic-link path of `fd`.
    pub fn new(fd: RawFd) -> FdPath {
        let mut out = FdPath { buf: [0; 32] };
        let prefix = b"/proc/self/fd/";
        out.buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 || len == digits.len() {
                break;
            }
        }
        for i in 0..len {
            out.buf[prefix.len() + i] = digits[len - 1 - i];
        }
        out
    }

    /// The path as a C string.
    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }
}

/// Opens `rel` (relative to the rootfs, already lexically clean: no `.`, `..` or empty
/// components) as an `O_PATH` descriptor; an empty `rel` is the rootfs itself.
pub fn open(root: RawFd, rel: &[u8]) -> SysResult<RawFd> {
    let mut path = StackPath::new();
    if rel.is_empty() {
        return sys::openat2(root, path.set(b".")?, libc::O_PATH, RESOLVE);
    }
    sys::openat2(root, path.set(rel)?, libc::O_PATH, RESOLVE)
}

/// Like [`open`], creating what is missing as `create` says. Descriptors of intermediate
/// directories are close-on-exec and left open: closing them costs a syscall each, and they are
/// gone when the process execs.
pub fn resolve(root: RawFd, rel: &[u8], create: Create) -> SysResult<RawFd> {
    match open(root, rel) {
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        other => return other,
    }
    // End offsets of each component.
    let mut ends = [0usize; MAX_COMPONENTS];
    let mut count = 0;
    for (i, b) in rel.iter().enumerate() {
        if *b == b'/' {
            *ends.get_mut(count).ok_or(Errno::ENAMETOOLONG)? = i;
            count += 1;
        }
    }
    *ends.get_mut(count).ok_or(Errno::ENAMETOOLONG)? = rel.len();
    count += 1;
    // The deepest prefix that exists; `have` components of it.
    let mut have = count - 1;
    let mut parent = root;
    while have > 0 {
        match open(root, rel.get(..ends[have - 1]).ok_or(Errno::EINVAL)?) {
            Ok(fd) => {
                parent = fd;
                break;
            }
            Err(Errno::ENOENT) => have -= 1,
            Err(e) => return Err(e),
        }
    }
    let mut name = StackPath::new();
    for i in have..count {
        let start = if i == 0 { 0 } else { ends[i - 1] + 1 };
        let comp = rel.get(start..ends[i]).ok_or(Errno::EINVAL)?;
        let comp = name.set(comp)?;
        let made = if i == count - 1 && create == Create::File {
            sys::mknodat(parent, comp, libc::S_IFREG | 0o644, 0)
        } else {
            sys::mkdirat(parent, comp, 0o755)
        };
        parent = match made {
            // Just made by us: open it right there, without walking the whole path again.
            Ok(()) => sys::openat(parent, comp, libc::O_PATH | libc::O_NOFOLLOW, 0)?,
            // Someone else's (or a dangling symlink): resolve it safely from the root.
            Err(Errno::EEXIST) => open(root, rel.get(..ends[i]).ok_or(Errno::EINVAL)?)?,
            Err(e) => return Err(e),
        };
    }
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::symlink;

    /// Where `fd` points; closes it.
    fn read_link(fd: RawFd) -> std::path::PathBuf {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        sys::close(fd);
        link
    }

    #[test]
    fn fd_paths_are_formatted() {
        assert_eq!(FdPath::new(0).as_cstr().to_bytes(), b"/proc/self/fd/0");
        assert_eq!(
            FdPath::new(1234).as_cstr().to_bytes(),
            b"/proc/self/fd/1234"
        );
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        symlink("/", root.join("up")).unwrap();
        symlink("../../../../tmp", root.join("etc/escape")).unwrap();
        let rootfd = std::fs::File::open(&root).unwrap();
        let r = rootfd.as_raw_fd();

        // An absolute symlink to / is the rootfs itself.
        let fd = open(r, b"up").unwrap();
        assert_eq!(read_link(fd), root);
        // Creating below a symlink that climbs out lands inside the root.
        let fd = resolve(r, b"etc/escape/made/deeper", Create::Dir).unwrap();
        assert_eq!(read_link(fd), root.join("tmp/made/deeper"));
        assert!(root.join("tmp/made/deeper").is_dir());
        let fd = resolve(r, b"up/file/x", Create::File).unwrap();
        assert_eq!(read_link(fd), root.join("file/x"));
        assert!(root.join("file/x").is_file());
        // A dangling symlink is not followed into creating its target.
        symlink("/gone", root.join("dangling")).unwrap();
        assert_eq!(resolve(r, b"dangling/x", Create::Dir), Err(Errno::ENOENT));
        // Nothing is created without asking.
        assert_eq!(open(r, b"nope/x"), Err(Errno::ENOENT));
        assert_eq!(resolve(r, b"nope/x", Create::Nothing), Err(Errno::ENOENT));
        // An empty path is the root.
        assert_eq!(read_link(open(r, b"").unwrap()), root);
    }
}

//! Checks every guest request passes before `PassthroughFs` sees it: names and open flags
//! (see [`super::filesystem`] for the policy), and the errors the policy answers with.

use std::ffi::CStr;
use std::io;

/// Open flags passed on to the host; everything else is dropped.
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_NOATIME
    | libc::O_TRUNC
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_CLOEXEC;

pub(super) fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

pub(super) fn eperm() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// Refuses names Linux never sends in a request: empty, `.`, `..`, or containing `/`.
pub(super) fn check_name(name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(einval());
    }
    Ok(())
}

/// Keeps only [`OPEN_FLAGS`]; access mode 3 (no read, no write) is refused.
pub(super) fn sanitize_open_flags(flags: u32) -> io::Result<u32> {
    let flags = flags as i32;
    if flags & libc::O_ACCMODE == libc::O_ACCMODE {
        return Err(einval());
    }
    Ok((flags & OPEN_FLAGS) as u32)
}

pub(super) fn opens_for_writing(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_linux_never_sends_are_refused() {
        for bad in [&b"\0"[..], b".\0", b"..\0", b"a/b\0", b"/\0"] {
            let name = CStr::from_bytes_with_nul(bad).unwrap();
            assert!(check_name(name).is_err(), "{name:?}");
        }
        for good in [&b"a\0"[..], b"...\0", b".hidden\0", b"..x\0"] {
            let name = CStr::from_bytes_with_nul(good).unwrap();
            assert!(check_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn open_flags_are_filtered() {
        let f = |x: i32| sanitize_open_flags(x as u32).map(|v| v as i32);
        assert_eq!(f(libc::O_RDWR | libc::O_PATH).unwrap(), libc::O_RDWR);
        assert_eq!(
            f(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_TMPFILE).unwrap(),
            libc::O_WRONLY | libc::O_DIRECTORY
        );
        assert!(f(libc::O_ACCMODE).is_err());
        assert!(opens_for_writing((libc::O_RDONLY | libc::O_TRUNC) as u32));
        assert!(!opens_for_writing(libc::O_RDONLY as u32));
    }
}

//! Finding `args[0]` the way runc does (Go's `exec.LookPath` with the process's `PATH`): a name
//! with a `/` is used as is, anything else is searched in `PATH`, where an empty entry means the
//! current directory; a candidate must exist, not be a directory and have an execute bit.
//!
//! Runs in the cloned child after `pivot_root`: allocation-free, the result lands in a buffer.

use std::ffi::CStr;

use nix::errno::Errno;

use super::spec::PATH_MAX;
use super::sys;

/// Why the lookup failed; travels to the agent as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookError {
    /// No `PATH` entry has it (runc: "executable file not found in $PATH").
    NotFound,
    /// A name with a `/` could not be stat'ed.
    Stat(Errno),
    /// It is a directory.
    IsDir,
    /// It has no execute bit.
    Permission,
}

impl LookError {
    /// (code, errno) for the wire.
    pub fn encode(self) -> (u32, Errno) {
        match self {
            LookError::NotFound => (0, Errno::ENOENT),
            LookError::Stat(e) => (1, e),
            LookError::IsDir => (2, Errno::EISDIR),
            LookError::Permission => (3, Errno::EACCES),
        }
    }

    /// Inverse of [`LookError::encode`].
    pub fn decode(code: u32, errno: Errno) -> LookError {
        match code {
            1 => LookError::Stat(errno),
            2 => LookError::IsDir,
            3 => LookError::Permission,
            _ => LookError::NotFound,
        }
    }
}

/// Room for the resolved path.
pub struct ExeBuf {
    buf: [u8; PATH_MAX + 1],
}

impl Default for ExeBuf {
    fn default() -> Self {
        ExeBuf {
            buf: [0; PATH_MAX + 1],
        }
    }
}

impl ExeBuf {
    /// The path found by the last successful [`ExeBuf::look`].
    pub fn path(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }

    /// Writes `parts` concatenated and NUL-terminated; false if it does not fit.
    fn set(&mut self, parts: &[&[u8]]) -> bool {
        let mut at = 0;
        for part in parts {
            let Some(dst) = self.buf.get_mut(at..at + part.len()) else {
                return false;
            };
            dst.copy_from_slice(part);
            at += part.len();
        }
        match self.buf.get_mut(at) {
            Some(b) => {
                *b = 0;
                true
            }
            None => false,
        }
    }

    fn check(&self) -> Result<(), LookError> {
        let mode = sys::stat_mode(self.path()).map_err(LookError::Stat)?;
        if mode & libc::S_IFMT == libc::S_IFDIR {
            Err(LookError::IsDir)
        } else if mode & 0o111 == 0 {
            Err(LookError::Permission)
        } else {
            Ok(())
        }
    }

    /// Resolves `name` with the `PATH` value `path` (none: nothing to search).
    pub fn look(&mut self, name: &CStr, path: Option<&CStr>) -> Result<(), LookError> {
        let name = name.to_bytes();
        if name.contains(&b'/') {
            if !self.set(&[name]) {
                return Err(LookError::Stat(Errno::ENAMETOOLONG));
            }
            return self.check();
        }
        if name.is_empty() {
            return Err(LookError::NotFound);
        }
        for dir in path
            .map(CStr::to_bytes)
            .unwrap_or_default()
            .split(|b| *b == b':')
        {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            if self.set(&[dir, b"/", name]) && self.check().is_ok() {
                return Ok(());
            }
        }
        Err(LookError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lookup_follows_go_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = bin.join("data");
        std::fs::write(&data, "x").unwrap();
        std::fs::create_dir(bin.join("sub")).unwrap();

        let path = CString::new(format!("/nonexistent:{}", bin.display())).unwrap();
        let mut buf = ExeBuf::default();
        buf.look(c"tool", Some(&path)).unwrap();
        assert_eq!(buf.path().to_bytes(), exe.as_os_str().as_encoded_bytes());
        // Non-executables and directories in PATH are skipped: not found.
        assert_eq!(buf.look(c"data", Some(&path)), Err(LookError::NotFound));
        assert_eq!(buf.look(c"sub", Some(&path)), Err(LookError::NotFound));
        assert_eq!(buf.look(c"tool", None), Err(LookError::NotFound));
        // With a slash the name is checked directly.
        let abs = CString::new(data.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(buf.look(&abs, Some(&path)), Err(LookError::Permission));
        let sub = CString::new(bin.join("sub").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(buf.look(&sub, None), Err(LookError::IsDir));
        assert_eq!(
            buf.look(c"/no/such", None),
            Err(LookError::Stat(Errno::ENOENT))
        );
        for e in [
            LookError::NotFound,
            LookError::IsDir,
            LookError::Permission,
            LookError::Stat(Errno::ELOOP),
        ] {
            let (code, errno) = e.encode();
            assert_eq!(LookError::decode(code, errno), e);
        }
    }
}

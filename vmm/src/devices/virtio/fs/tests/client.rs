//! Typed FUSE requests, built the way Linux's virtio-fs driver builds them.

use fuse_backend_rs::abi::fuse_abi::*;
use vm_memory::ByteValued;

use super::harness::{cstr, Harness, Reply, REPLY_LEN};

pub const ROOT: u64 = 1;

pub const OP_LOOKUP: u32 = 1;
pub const OP_FORGET: u32 = 2;
pub const OP_GETATTR: u32 = 3;
pub const OP_SETATTR: u32 = 4;
pub const OP_READLINK: u32 = 5;
pub const OP_SYMLINK: u32 = 6;
pub const OP_MKNOD: u32 = 8;
pub const OP_MKDIR: u32 = 9;
pub const OP_UNLINK: u32 = 10;
pub const OP_RMDIR: u32 = 11;
pub const OP_RENAME: u32 = 12;
pub const OP_LINK: u32 = 13;
pub const OP_OPEN: u32 = 14;
pub const OP_READ: u32 = 15;
pub const OP_WRITE: u32 = 16;
pub const OP_RELEASE: u32 = 18;
pub const OP_SETXATTR: u32 = 21;
pub const OP_GETXATTR: u32 = 22;
pub const OP_INIT: u32 = 26;
pub const OP_OPENDIR: u32 = 27;
pub const OP_READDIR: u32 = 28;
pub const OP_CREATE: u32 = 35;
pub const OP_BATCH_FORGET: u32 = 42;
pub const OP_READDIRPLUS: u32 = 44;
pub const OP_SETUPMAPPING: u32 = 48;

/// Linux 6.1's INIT flags (a subset that matters here) with INIT_EXT.
pub const LINUX_INIT_FLAGS: u64 = FsOptions::ASYNC_READ.bits()
    | FsOptions::BIG_WRITES.bits()
    | FsOptions::ATOMIC_O_TRUNC.bits()
    | FsOptions::DO_READDIRPLUS.bits()
    | FsOptions::READDIRPLUS_AUTO.bits()
    | FsOptions::ASYNC_DIO.bits()
    | FsOptions::WRITEBACK_CACHE.bits()
    | FsOptions::ZERO_MESSAGE_OPEN.bits()
    | FsOptions::PARALLEL_DIROPS.bits()
    | FsOptions::MAX_PAGES.bits()
    | FsOptions::CACHE_SYMLINKS.bits()
    | FsOptions::ZERO_MESSAGE_OPENDIR.bits()
    | FsOptions::AUTO_INVAL_DATA.bits()
    | FsOptions::PERFILE_DAX.bits()
    | FsOptions::INIT_EXT.bits();

/// A directory entry from READDIR(PLUS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub name: String,
    pub ino: u64,
    /// The entry's node id (READDIRPLUS only).
    pub nodeid: Option<u64>,
}

impl Harness<'_> {
    pub fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 37,
            max_readahead: 128 * 1024,
            flags: LINUX_INIT_FLAGS as u32,
        };
        let init2 = InitIn2 {
            flags2: (LINUX_INIT_FLAGS >> 32) as u32,
            unused: [0; 11],
        };
        let r = self.call(OP_INIT, 0, &[init.as_slice(), init2.as_slice()], REPLY_LEN);
        r.result().unwrap()
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let r = self.call(OP_LOOKUP, parent, &[&cstr(name)], REPLY_LEN);
        match r.result::<EntryOut>() {
            Ok(e) if e.nodeid == 0 => Err(libc::ENOENT),
            other => other,
        }
    }

    /// LOOKUP, as a raw reply (to see negative entries).
    pub fn lookup_raw(&mut self, parent: u64, name: &[u8]) -> Reply {
        self.call(OP_LOOKUP, parent, &[name], REPLY_LEN)
    }

    pub fn getattr(&mut self, node: u64) -> Result<AttrOut, i32> {
        let body = GetattrIn::default();
        self.call(OP_GETATTR, node, &[body.as_slice()], REPLY_LEN)
            .result()
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<OpenOut, i32> {
        let body = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(OP_OPEN, node, &[body.as_slice()], REPLY_LEN)
            .result()
    }

    pub fn opendir(&mut self, node: u64) -> Result<OpenOut, i32> {
        let body = OpenIn {
            flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
            fuse_flags: 0,
        };
        self.call(OP_OPENDIR, node, &[body.as_slice()], REPLY_LEN)
            .result()
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let body = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(OP_READ, node, &[body.as_slice()], size + 16);
        if r.errno == 0 {
            Ok(r.data)
        } else {
            Err(r.errno)
        }
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let body = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(OP_WRITE, node, &[body.as_slice(), data], REPLY_LEN)
            .result::<WriteOut>()
            .map(|w| w.size)
    }

    pub fn release(&mut self, node: u64, fh: u64) -> Result<(), i32> {
        let body = ReleaseIn {
            fh,
            ..Default::default()
        };
        let r = self.call(OP_RELEASE, node, &[body.as_slice()], REPLY_LEN);
        if r.errno == 0 {
            Ok(())
        } else {
            Err(r.errno)
        }
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, OpenOut), i32> {
        let body = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0o022,
            fuse_flags: 0,
        };
        let r = self.call(
            OP_CREATE,
            parent,
            &[body.as_slice(), &cstr(name)],
            REPLY_LEN,
        );
        let entry: EntryOut = r.result()?;
        let mut open = OpenOut::default();
        let n = std::mem::size_of::<EntryOut>();
        open.as_mut_slice()
            .copy_from_slice(&r.data[n..n + std::mem::size_of::<OpenOut>()]);
        Ok((entry, open))
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut, i32> {
        let body = MkdirIn {
            mode: libc::S_IFDIR | mode,
            umask: 0o022,
        };
        self.call(OP_MKDIR, parent, &[body.as_slice(), &cstr(name)], REPLY_LEN)
            .result()
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
    ) -> Result<EntryOut, i32> {
        let body = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call(OP_MKNOD, parent, &[body.as_slice(), &cstr(name)], REPLY_LEN)
            .result()
    }

    pub fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        self.call(OP_SYMLINK, parent, &[&cstr(name), &cstr(target)], REPLY_LEN)
            .result()
    }

    pub fn link(&mut self, node: u64, newparent: u64, name: &str) -> Result<EntryOut, i32> {
        let body = LinkIn { oldnodeid: node };
        self.call(
            OP_LINK,
            newparent,
            &[body.as_slice(), &cstr(name)],
            REPLY_LEN,
        )
        .result()
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        let r = self.call(OP_READLINK, node, &[], REPLY_LEN);
        if r.errno == 0 {
            Ok(r.data)
        } else {
            Err(r.errno)
        }
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.status(OP_UNLINK, parent, &[&cstr(name)])
    }

    pub fn rmdir(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        self.status(OP_RMDIR, parent, &[&cstr(name)])
    }

    pub fn rename(&mut self, olddir: u64, old: &str, newdir: u64, new: &str) -> Result<(), i32> {
        let body = RenameIn { newdir };
        self.status(
            OP_RENAME,
            olddir,
            &[body.as_slice(), &cstr(old), &cstr(new)],
        )
    }

    pub fn truncate(&mut self, node: u64, size: u64) -> Result<AttrOut, i32> {
        let body = SetattrIn {
            valid: SetattrValid::SIZE.bits(),
            size,
            ..Default::default()
        };
        self.call(OP_SETATTR, node, &[body.as_slice()], REPLY_LEN)
            .result()
    }

    /// SETATTR of the permission bits only, as `chmod` sends it (the mode carries the file
    /// type too; the server must not trust it).
    pub fn chmod(&mut self, node: u64, mode: u32) -> Result<AttrOut, i32> {
        let body = SetattrIn {
            valid: SetattrValid::MODE.bits(),
            mode,
            ..Default::default()
        };
        self.call(OP_SETATTR, node, &[body.as_slice()], REPLY_LEN)
            .result()
    }

    pub fn forget(&mut self, node: u64, nlookup: u64) -> u32 {
        let body = ForgetIn { nlookup };
        self.call_hiprio(OP_FORGET, node, &[body.as_slice()])
    }

    /// READDIR or READDIRPLUS of a whole (small) directory.
    pub fn readdir(&mut self, node: u64, fh: u64, plus: bool) -> Result<Vec<Dirent>, i32> {
        let body = ReadIn {
            fh,
            offset: 0,
            size: REPLY_LEN - 16,
            ..Default::default()
        };
        let op = if plus { OP_READDIRPLUS } else { OP_READDIR };
        let r = self.call(op, node, &[body.as_slice()], REPLY_LEN);
        if r.errno != 0 {
            return Err(r.errno);
        }
        let mut out = Vec::new();
        let mut rest = &r.data[..];
        while !rest.is_empty() {
            let mut nodeid = None;
            if plus {
                let mut e = EntryOut::default();
                let n = std::mem::size_of::<EntryOut>();
                e.as_mut_slice().copy_from_slice(&rest[..n]);
                nodeid = Some(e.nodeid);
                rest = &rest[n..];
            }
            let mut d = fuse_backend_rs::abi::fuse_abi::Dirent::default();
            let n = std::mem::size_of::<fuse_backend_rs::abi::fuse_abi::Dirent>();
            d.as_mut_slice().copy_from_slice(&rest[..n]);
            let name = String::from_utf8(rest[n..n + d.namelen as usize].to_vec()).unwrap();
            out.push(Dirent {
                name,
                ino: d.ino,
                nodeid,
            });
            let len = (n + d.namelen as usize).next_multiple_of(8);
            rest = &rest[len.min(rest.len())..];
        }
        Ok(out)
    }

    fn status(&mut self, opcode: u32, node: u64, body: &[&[u8]]) -> Result<(), i32> {
        let r = self.call(opcode, node, body, REPLY_LEN);
        if r.errno == 0 {
            Ok(())
        } else {
            Err(r.errno)
        }
    }
}

//! The policy layer between the FUSE server and `fuse-backend-rs`'s `PassthroughFs`.
//!
//! `PassthroughFs` already resolves every guest name as one component relative to an `O_PATH`
//! directory fd with `O_NOFOLLOW`, and never opens anything but regular files and directories
//! for I/O; it relies on its caller's sandbox for the rest (see [`super::sandbox`]). This layer
//! adds what a hostile guest needs on top, independent of the sandbox:
//! - names: `.`, `..`, empty names and names with `/` are refused everywhere (Linux never sends
//!   them; the crate allows `.`/`..` in LOOKUP for NFS export, which we do not offer);
//! - open flags: only the ones a file open needs are passed on (no `O_PATH`, `O_TMPFILE`,
//!   `O_CREAT` smuggled into OPEN, no access mode 3);
//! - device nodes: MKNOD of block and character devices is refused (the worker also has no
//!   `CAP_MKNOD`), FIFOs and sockets are fine;
//! - read-only shares: every mutating request fails with `EROFS`, before the host is touched;
//! - set-ID files: SETATTR, CREATE and MKNOD that would give a non-directory set-user-ID or
//!   set-group-ID bits fail with `EPERM` where the share's [`SetIdFiles`] refuses them (see
//!   [`super::setid`]);
//! - the FUSE options and cache timeouts of [`FsCache`], and negative-entry caching;
//! - READ/WRITE never make the crate `fcntl` a handle (see [`ShareFs::io_flags`]: a failing
//!   `fcntl` makes it close a handle's fd twice).

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, Attr, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::guards::{check_name, eperm, erofs, opens_for_writing, sanitize_open_flags};
use super::open_files::OpenFiles;
use super::setid::SetIdRule;
use super::{FsCache, SetIdFiles};

type Inode = u64;
type Handle = u64;

/// Attribute and entry timeout for [`FsCache::Exclusive`]: only this guest changes the share,
/// and the guest kernel updates its own caches when it does, so they never go stale (the value
/// virtiofsd uses for `cache=always`).
pub const EXCLUSIVE_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Attribute and entry timeout for [`FsCache::Shared`]: host changes show up within a second.
pub const SHARED_TIMEOUT: Duration = Duration::from_secs(1);

/// FUSE options we ask for on top of what `PassthroughFs` asks for. Each one saves round trips:
/// 1 MiB requests (`MAX_PAGES`, `BIG_WRITES`), concurrent reads and directory operations in the
/// guest, symlink targets cached in the guest's page cache.
const EXTRA_OPTIONS: FsOptions = FsOptions::ASYNC_READ
    .union(FsOptions::BIG_WRITES)
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::CACHE_SYMLINKS)
    .union(FsOptions::ASYNC_DIO);

/// Options we never grant: no DAX window, no kill-priv v2 (the guest kernel clears setuid bits
/// itself), no export support (which would let the guest LOOKUP `..`).
const REFUSED_OPTIONS: FsOptions = FsOptions::PERFILE_DAX
    .union(FsOptions::MAP_ALIGNMENT)
    .union(FsOptions::HANDLE_KILLPRIV_V2)
    .union(FsOptions::EXPORT_SUPPORT)
    .union(FsOptions::POSIX_ACL);

/// How one share behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareOptions {
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// The caching contract with the guest.
    pub cache: FsCache,
    /// Where the guest may make set-ID files.
    pub set_id: SetIdFiles,
    /// Host fds (inodes the guest knows + open handles) the share may hold; see
    /// [`super::open_files`].
    pub max_open_files: usize,
}

/// `PassthroughFs` behind the guest-facing policy. `Sync`, so the server can share it.
pub struct ShareFs {
    inner: PassthroughFs<()>,
    options: ShareOptions,
    /// `options.set_id` against the server's root.
    set_id: SetIdRule,
    /// Whether the crate runs zero-message opens (mirrors its own rule, decided at INIT).
    zero_open: AtomicBool,
    /// The open flags the crate stored with each handle it gave out (see [`Self::io_flags`]).
    handle_flags: Mutex<HashMap<Handle, u32>>,
    /// The share's host fds, capped.
    open_files: OpenFiles,
}

impl std::fmt::Debug for ShareFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareFs")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a set-ID check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetIdOn {
    /// The inode itself (SETATTR of its mode).
    Itself,
    /// A new file in the directory inode (CREATE, MKNOD).
    NewFileIn,
}

/// Whether `path`, resolved from this thread's root without following a final symlink, is the
/// file `st` describes: confirms the path the kernel gave for an inode (see
/// [`SetIdRule::permits`]).
fn names_inode(path: &Path, st: &stat64) -> bool {
    nix::sys::stat::fstatat(None, path, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|found| (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino))
}

impl ShareFs {
    /// A file system serving `root_dir` (an absolute path as seen by the calling thread; `/`
    /// inside the sandbox). Opens `/proc/self/fd` now, so call it before the thread loses the
    /// host's `/proc`.
    pub fn new(root_dir: &str, options: ShareOptions) -> io::Result<Self> {
        let exclusive = options.cache == FsCache::Exclusive;
        let timeout = if exclusive {
            EXCLUSIVE_TIMEOUT
        } else {
            SHARED_TIMEOUT
        };
        // Writeback caching and zero-message opens make writes fail late (at flush) instead of
        // at open(); a read-only share keeps OPEN so `EROFS` reaches the opener.
        let lazy = exclusive && !options.read_only;
        let config = Config {
            root_dir: root_dir.to_owned(),
            attr_timeout: timeout,
            entry_timeout: timeout,
            cache_policy: if exclusive {
                CachePolicy::Always
            } else {
                CachePolicy::Auto
            },
            writeback: lazy,
            no_open: lazy,
            no_opendir: lazy,
            xattr: false,
            killpriv_v2: false,
            inode_file_handles: false,
            do_import: true,
            ..Config::default()
        };
        Ok(Self {
            inner: PassthroughFs::new(config)?,
            set_id: SetIdRule::new(Path::new(root_dir), &options.set_id),
            open_files: OpenFiles::new(options.max_open_files),
            options,
            zero_open: AtomicBool::new(false),
            handle_flags: Mutex::new(HashMap::new()),
        })
    }

    /// The `flags` to hand the crate's READ/WRITE: exactly what it stored with the handle.
    ///
    /// The crate `fcntl(F_SETFL)`s a handle's fd to the request's flags when they differ from
    /// the stored ones, and if that fails (`O_DIRECT` on a directory, clearing `O_APPEND` on an
    /// append-only file) it returns early while a `File` it built over the handle's raw fd is
    /// still in scope: the fd is closed twice, and its number — reused by whatever the VMM opens
    /// next — stays in the handle. Passing the stored flags means the `fcntl` never happens. The
    /// guest loses nothing it needs: open-time flags apply, and append/direct writes arrive with
    /// their offsets computed by the guest kernel.
    fn io_flags(&self, handle: Handle, zero_open_flags: i32) -> u32 {
        if self.zero_open.load(Ordering::Relaxed) {
            // Zero-message I/O opens a fresh fd with these flags and stores them.
            return zero_open_flags as u32;
        }
        self.handle_flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle)
            .copied()
            .unwrap_or(0)
    }

    fn remember_handle(&self, handle: Option<Handle>, flags: u32) {
        if let Some(h) = handle {
            self.handle_flags
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(h, flags);
        }
    }

    fn writable(&self) -> io::Result<()> {
        if self.options.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }

    /// `EPERM` when the share's set-ID rule refuses the set-ID bits of `mode` at `inode`. The
    /// whole request fails rather than going through with the bits stripped, so the guest's
    /// `chmod` or installer reports it instead of leaving a file without the bits it was told it
    /// has.
    ///
    /// Directories keep theirs: set-group-ID on a directory only makes new entries inherit its
    /// group (and set-user-ID means nothing there); neither runs anything. Whether `inode` is a
    /// directory is the host's answer, not the file type bits of the guest's SETATTR mode.
    fn check_set_id(&self, ctx: &Context, inode: Inode, mode: u32, on: SetIdOn) -> io::Result<()> {
        if !self.set_id.concerns(mode) {
            return Ok(());
        }
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if on == SetIdOn::Itself && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Ok(());
        }
        let path = self.inner.readlinkat_proc_file(inode);
        if self.set_id.permits(path, |p| names_inode(p, &st)) {
            Ok(())
        } else {
            Err(eperm())
        }
    }

    /// Counts the guest's new reference to `entry`'s inode; past the cap the crate's
    /// reference is dropped again and the request fails with `ENFILE`.
    fn admit(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        if let Err(e) = self.open_files.entry(entry.inode) {
            self.inner.forget(ctx, entry.inode, 1);
            return Err(e);
        }
        Ok(entry)
    }

    /// A negative entry the guest may cache, when only the guest changes the share.
    fn negative_entry(&self) -> Option<Entry> {
        (self.options.cache == FsCache::Exclusive).then(|| Entry {
            inode: 0,
            generation: 0,
            attr: stat64::from(Attr::default()),
            attr_flags: 0,
            attr_timeout: Duration::ZERO,
            entry_timeout: EXCLUSIVE_TIMEOUT,
        })
    }
}

impl FileSystem for ShareFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut want = self.inner.init(capable)? | EXTRA_OPTIONS;
        // The crate's rule for zero-message opens (it only ever switches them on).
        let exclusive = self.options.cache == FsCache::Exclusive;
        if exclusive && !self.options.read_only && capable.contains(FsOptions::ZERO_MESSAGE_OPEN) {
            self.zero_open.store(true, Ordering::Relaxed);
        }
        if self.options.cache == FsCache::Shared {
            // Drop cached file data when the host changed the file (mtime or size).
            want |= FsOptions::AUTO_INVAL_DATA;
        }
        if self.options.read_only {
            want.remove(FsOptions::WRITEBACK_CACHE);
        }
        Ok(want - REFUSED_OPTIONS)
    }

    fn destroy(&self) {
        self.handle_flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // The guest's references go with the session: no FORGET follows a DESTROY.
        self.open_files.reset();
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        match self.inner.lookup(ctx, parent, name) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.negative_entry().ok_or(e),
            other => self.admit(ctx, other?),
        }
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.open_files.forget(inode, count);
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        for (inode, count) in &requests {
            self.open_files.forget(*inode, *count);
        }
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        if valid.contains(SetattrValid::MODE) {
            self.check_set_id(ctx, inode, attr.st_mode, SetIdOn::Itself)?;
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        self.open_files.check_room(1)?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.admit(ctx, entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => {}
            _ => return Err(eperm()),
        }
        // Regular files are what matters; a set-ID FIFO or socket has no use either.
        self.check_set_id(ctx, parent, mode, SetIdOn::NewFileIn)?;
        self.open_files.check_room(1)?;
        let entry = self.inner.mknod(ctx, parent, name, mode, rdev, umask)?;
        self.admit(ctx, entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        self.open_files.check_room(1)?;
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.admit(ctx, entry)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_name(oldname)?;
        check_name(newname)?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(newname)?;
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.admit(ctx, entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let flags = sanitize_open_flags(flags)?;
        if opens_for_writing(flags) {
            self.writable()?;
        }
        self.open_files.check_room(1)?;
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.remember_handle(opened.0, flags);
        if opened.0.is_some() {
            self.open_files.opened();
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_name(name)?;
        let exclusive = args.flags & libc::O_EXCL as u32 != 0;
        let args = CreateIn {
            flags: sanitize_open_flags(args.flags)? & !(libc::O_DIRECTORY as u32),
            ..args
        };
        self.check_set_id(ctx, parent, args.mode, SetIdOn::NewFileIn)?;
        // An existing name is a LOOKUP and an OPEN, done here: the crate's CREATE keeps the
        // inode's fd when that OPEN fails (EISDIR, EACCES), uncounted and never forgotten.
        match self.inner.lookup(ctx, parent, name) {
            Ok(entry) if exclusive => {
                self.inner.forget(ctx, entry.inode, 1);
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            Ok(entry) => {
                let entry = self.admit(ctx, entry)?;
                return match self.open(ctx, entry.inode, args.flags, args.fuse_flags) {
                    Ok((handle, opts, passthrough)) => Ok((entry, handle, opts, passthrough)),
                    Err(e) => {
                        self.forget(ctx, entry.inode, 1);
                        Err(e)
                    }
                };
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        self.open_files.check_room(2)?;
        let created = self.inner.create(ctx, parent, name, args)?;
        if let Err(e) = self.open_files.entry(created.0.inode) {
            if let Some(h) = created.1 {
                let _ = self
                    .inner
                    .release(ctx, created.0.inode, 0, h, false, false, None);
            }
            self.inner.forget(ctx, created.0.inode, 1);
            return Err(e);
        }
        self.remember_handle(created.1, args.flags);
        if created.1.is_some() {
            self.open_files.opened();
        }
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let _ = flags;
        let flags = self.io_flags(handle, libc::O_RDONLY);
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let _ = flags;
        let flags = self.io_flags(handle, libc::O_RDWR);
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        // Only once the crate has really dropped the handle (it refuses a wrong inode).
        self.handle_flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        self.open_files.released();
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        // No xattrs: `trusted.*`/`security.*` written by a hostile guest would reach the host
        // (overlayfs and LSMs read them). ENOSYS also stops the guest from asking again.
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        _inode: Inode,
        _name: &CStr,
        _size: u32,
    ) -> io::Result<GetxattrReply> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn listxattr(&self, _ctx: &Context, _inode: Inode, _size: u32) -> io::Result<ListxattrReply> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn removexattr(&self, _ctx: &Context, _inode: Inode, _name: &CStr) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        let flags = sanitize_open_flags(flags)?;
        if opens_for_writing(flags) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        self.open_files.check_room(1)?;
        let opened = self.inner.opendir(ctx, inode, flags)?;
        if opened.0.is_some() {
            self.open_files.opened();
        }
        Ok(opened)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // An entry past the cap ends this reply as a full buffer would (the crate then drops
        // its reference): at the cap a listing is cut short rather than the fd table filled.
        let mut counted = |d: DirEntry, e: Entry| -> io::Result<usize> {
            let ino = e.inode;
            if self.open_files.entry(ino).is_err() {
                return Ok(0);
            }
            match add_entry(d, e) {
                Ok(0) => {
                    self.open_files.forget(ino, 1);
                    Ok(0)
                }
                // The crate keeps its reference on an error, and so do we.
                other => other,
            }
        };
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut counted)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        self.open_files.released();
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

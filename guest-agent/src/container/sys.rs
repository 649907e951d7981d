//! Raw system calls for the container setup, fenced in one leaf module.
//!
//! The container init and exec'd processes are cloned from the agent, a multi-threaded process,
//! with a raw `clone3` (glibc has no wrapper that takes namespace flags and a cgroup). Such a
//! child must not take any lock another thread may have held at clone time, so everything here
//! is allocation-free and calls the kernel directly; ids are changed with raw `set*id` calls
//! because glibc's wrappers try to broadcast the change to threads that only exist in the parent.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr;

use nix::errno::Errno;

/// A result carrying the raw errno, the only error a cloned child can report cheaply.
pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

/// `struct clone_args` of `clone3(2)` (linux/sched.h, version 2 with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (linux/sched.h); not in the libc crate.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What `clone3` returned in the calling process.
pub enum Forked {
    /// We are the new child.
    Child,
    /// We are the parent; the child's pid and, when asked for, its pidfd.
    Parent { pid: libc::pid_t, pidfd: RawFd },
}

/// Fork-like `clone3`: the child continues on a copy of the caller's stack.
///
/// `flags` may hold `CLONE_NEW*`, `CLONE_PARENT` and `CLONE_PIDFD`; `cgroup` is a cgroup v2
/// directory fd to start the child in. The child gets `SIGCHLD` as its exit signal (with
/// `CLONE_PARENT` the kernel gives it the caller's, which must then be left zero here).
///
/// # Safety
/// In the child only async-signal-safe, allocation-free code may run (see the module doc), and it
/// must end in `execve` or [`exit`], never return into the caller's normal flow.
pub unsafe fn clone3(flags: u64, cgroup: Option<RawFd>) -> SysResult<Forked> {
    let mut pidfd: libc::c_int = -1;
    let exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 {
        0
    } else {
        libc::SIGCHLD as u64
    };
    let mut args = CloneArgs {
        flags,
        exit_signal,
        ..CloneArgs::default()
    };
    if flags & libc::CLONE_PIDFD as u64 != 0 {
        args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    }
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM the child runs
    // on a private copy of this stack, like after fork(). The caller upholds the child contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match check(ret)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            pidfd,
        }),
    }
}

/// Ends the calling process at once, without running exit handlers.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no user-space state.
    unsafe { libc::_exit(code) }
}

/// `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    // SAFETY: every pointer is a NUL-terminated string or null, which mount(2) accepts.
    let ret = unsafe {
        libc::mount(
            opt_ptr(source),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    };
    check(ret.into()).map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// `mount_setattr(2)` on `path` relative to `dirfd`; changes only the attributes named in `attr`.
pub fn mount_setattr(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated and `attr` a valid mount_attr of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// `umount2(target, MNT_DETACH)`.
pub fn umount_detach(target: &CStr) -> SysResult<()> {
    // SAFETY: `target` is NUL-terminated.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }.into()).map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(ret).map(drop)
}

/// `struct open_how` of `openat2(2)` (the libc crate's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)` with `O_CLOEXEC` added to `flags`.
pub fn openat2(dirfd: RawFd, path: &CStr, flags: libc::c_int, resolve: u64) -> SysResult<RawFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is NUL-terminated and `how` a valid open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    check(ret).map(|fd| fd as RawFd)
}

/// `openat(2)` with `O_CLOEXEC` added to `flags`.
pub fn openat(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> SysResult<RawFd> {
    // SAFETY: `path` is NUL-terminated.
    let ret = unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    check(ret.into()).map(|fd| fd as RawFd)
}

/// `mkdirat(2)`.
pub fn mkdirat(dirfd: RawFd, name: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) }.into()).map(drop)
}

/// `mknodat(2)`.
pub fn mknodat(dirfd: RawFd, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mknodat(dirfd, name.as_ptr(), mode, dev) }.into()).map(drop)
}

/// `symlinkat(2)`: creates `name` in `dirfd` pointing at `target`.
pub fn symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) }.into()).map(drop)
}

/// `fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)`.
pub fn fchownat(dirfd: RawFd, name: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    let ret = unsafe { libc::fchownat(dirfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
    check(ret.into()).map(drop)
}

/// `fstat(2)`.
pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    // SAFETY: an all-zero `struct stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; `fd` is only read.
    check(unsafe { libc::fstat(fd, &mut st) }.into())?;
    Ok(st)
}

/// Unlocks the slave of pty master `fd` (`TIOCSPTLCK` 0) and opens it with `TIOCGPTPEER`
/// (no path lookup, so right in any mount namespace); the slave is close-on-exec and not made
/// the controlling terminal.
pub fn pty_peer(master: RawFd) -> SysResult<RawFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer.
    check(unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) }.into())?;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    check(unsafe { libc::ioctl(master, libc::TIOCGPTPEER, flags) }.into()).map(|fd| fd as RawFd)
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dirfd: RawFd, name: &CStr) -> SysResult<libc::stat> {
    // SAFETY: an all-zero `struct stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a valid out-pointer.
    let ret = unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    check(ret.into())?;
    Ok(st)
}

/// `fchmodat(dirfd, name, mode, 0)` (never used on symlinks: Linux cannot change their mode).
pub fn fchmodat(dirfd: RawFd, name: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::fchmodat(dirfd, name.as_ptr(), mode, 0) }.into()).map(drop)
}

/// `readlinkat(2)` into `buf`; the target's length (not NUL-terminated).
pub fn readlinkat(dirfd: RawFd, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `name` is NUL-terminated; `buf` is a valid writable slice of the given length.
    let ret = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    check(ret as libc::c_long).map(|n| n as usize)
}

/// `getdents64(2)` into `buf`; bytes filled, 0 at the end of the directory.
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let ret = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    check(ret).map(|n| n as usize)
}

/// `sendfile(out, in, NULL, count)`: bytes copied, 0 at the end of `in`.
pub fn sendfile(out: RawFd, input: RawFd, count: usize) -> SysResult<usize> {
    // SAFETY: plain descriptors; a null offset means the file position of `input`.
    let ret = unsafe { libc::sendfile(out, input, ptr::null_mut(), count) };
    check(ret as libc::c_long).map(|n| n as usize)
}

/// `stat(2)`: returns the mode bits.
pub fn stat_mode(path: &CStr) -> SysResult<libc::mode_t> {
    // SAFETY: an all-zero `struct stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` a valid out-pointer.
    check(unsafe { libc::stat(path.as_ptr(), &mut st) }.into())?;
    Ok(st.st_mode)
}

/// `write(2)` of the whole buffer (retrying on short writes and `EINTR`).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> SysResult<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of the given length.
        let ret = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match check(ret as libc::c_long) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = buf.get(n as usize..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read(2)`, retrying on `EINTR`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    loop {
        // SAFETY: `buf` is a valid writable slice of the given length.
        let ret = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match check(ret as libc::c_long) {
            Ok(n) => return Ok(n as usize),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// `close(2)`; errors are meaningless for the descriptors we close.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and does not use it afterwards.
    unsafe { libc::close(fd) };
}

/// `close_range(first, last, 0)`.
pub fn close_range(first: libc::c_uint, last: libc::c_uint) -> SysResult<()> {
    // SAFETY: close_range takes plain integers.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// `dup3(old, new, 0)`: the copy is not close-on-exec.
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: dup3 takes plain integers.
    check(unsafe { libc::dup3(old, new, 0) }.into()).map(drop)
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`.
pub fn dup_above(fd: RawFd, min: RawFd) -> SysResult<RawFd> {
    // SAFETY: fcntl with F_DUPFD_CLOEXEC takes plain integers.
    check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) }.into()).map(|fd| fd as RawFd)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) }.into()).map(drop)
}

/// `fchdir(2)`.
pub fn fchdir(fd: RawFd) -> SysResult<()> {
    // SAFETY: fchdir takes a plain integer.
    check(unsafe { libc::fchdir(fd) }.into()).map(drop)
}

/// `chroot(2)`.
pub fn chroot(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::chroot(path.as_ptr()) }.into()).map(drop)
}

/// `setns(2)`; `fd` may be a namespace file or a pidfd.
pub fn setns(fd: RawFd, nstype: libc::c_int) -> SysResult<()> {
    // SAFETY: setns takes plain integers.
    check(unsafe { libc::setns(fd, nstype) }.into()).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &[u8]) -> SysResult<()> {
    // SAFETY: `name` is a valid slice of the given length.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

/// `setdomainname(2)`.
pub fn setdomainname(name: &[u8]) -> SysResult<()> {
    // SAFETY: `name` is a valid slice of the given length.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }.into()).map(drop)
}

/// `setrlimit(2)` (through `prlimit64`, so 64-bit limits on every libc).
pub fn setrlimit(resource: libc::c_int, soft: u64, hard: u64) -> SysResult<()> {
    let limit = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit64; a null old-limit pointer is allowed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            resource,
            &limit as *const libc::rlimit64,
            ptr::null_mut::<libc::rlimit64>(),
        )
    };
    check(ret).map(drop)
}

/// `prctl(2)` with integer arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> SysResult<()> {
    // SAFETY: the options used here take only integer arguments.
    check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) }.into())
        .map(drop)
}

/// Raw `setgroups(2)` for this thread (the only one in a cloned child).
pub fn setgroups(groups: &[libc::gid_t]) -> SysResult<()> {
    // SAFETY: `groups` is a valid slice of the given length.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) }).map(drop)
}

/// Raw `setresgid(2)`.
pub fn setresgid(gid: libc::gid_t) -> SysResult<()> {
    // SAFETY: setresgid takes plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

/// Raw `setresuid(2)`.
pub fn setresuid(uid: libc::uid_t) -> SysResult<()> {
    // SAFETY: setresuid takes plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` for the calling thread with 64-bit masks (capability version 3).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> SysResult<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and the two data words are valid for capability version 3.
    let ret =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    check(ret).map(drop)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`.
pub fn seccomp_filter(flags: libc::c_uint, filter: &[libc::sock_filter]) -> SysResult<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    check(ret).map(drop)
}

/// `umask(2)`.
pub fn umask(mask: libc::mode_t) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// `setsid(2)`.
pub fn setsid() -> SysResult<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() }.into()).map(drop)
}

/// Makes the terminal on `fd` the controlling terminal of the calling session.
pub fn set_controlling_tty(fd: RawFd) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }.into()).map(drop)
}

/// Sets the window size of the terminal on `fd`.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> SysResult<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize, which `size` is.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size as *const libc::winsize) }.into())
        .map(drop)
}

/// Resets `SIGPIPE` to its default action (the Rust runtime ignores it in the agent).
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL involves no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// `execve(2)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> Errno {
    // SAFETY: `argv` and `envp` are null-terminated arrays of NUL-terminated strings that live
    // as long as the caller's plan (checked when the plan was built).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Raw `kill(2)`; used by the parent on pids it owns.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, sig) }.into()).map(drop)
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(pidfd: RawFd, sig: libc::c_int) -> SysResult<()> {
    // SAFETY: null siginfo is allowed; the other arguments are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            ptr::null_mut::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// Sends `buf` and, when given, one file descriptor as `SCM_RIGHTS` on a socket.
pub fn send_with_fd(sock: RawFd, buf: &[u8], fd: Option<RawFd>) -> SysResult<()> {
    // Room for one cmsghdr carrying one int, 8-byte aligned.
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32),
                libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32),
            )
        };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: `control` is large and aligned enough for one cmsghdr with one int, so the
        // first header exists and its data area holds an int.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as usize;
            ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let ret = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        match check(ret as libc::c_long) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives one message into `buf` and at most one `SCM_RIGHTS` descriptor (made close-on-exec).
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> SysResult<(usize, Option<RawFd>)> {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let ret = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(ret as libc::c_long) {
            Ok(n) => break n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    };
    let mut fd = None;
    // SAFETY: the kernel filled `msg`; the CMSG macros walk only within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let got = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                if fd.is_none() {
                    fd = Some(got);
                } else {
                    libc::close(got);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, fd))
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct BpfProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// Loads a `CGROUP_DEVICE` program (`insns`: `count` `struct bpf_insn`s); returns its fd.
pub fn bpf_load_cgroup_device(insns: &[u8], count: usize) -> SysResult<RawFd> {
    let license = c"Apache-2.0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(count).map_err(|_| Errno::E2BIG)?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"bulkhead_devs\0\0\0",
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: `attr` is a valid prefix of bpf_attr whose pointers outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    check(ret).map(|fd| fd as RawFd)
}

/// Attaches the device program `prog` to the cgroup directory `cgroup`, replacing the one there.
pub fn bpf_attach_cgroup_device(cgroup: RawFd, prog: RawFd) -> SysResult<()> {
    let attr = BpfProgAttach {
        target_fd: cgroup as u32,
        attach_bpf_fd: prog as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a valid prefix of bpf_attr.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const BpfProgAttach,
            std::mem::size_of::<BpfProgAttach>(),
        )
    };
    check(ret).map(drop)
}

//! A root guest trying to reach host files outside the share.
//!
//! Host layout (made by the test): in the `bulkhead` share, `to-root` → `/`, `to-outside` →
//! `<outside>`, `to-secret` → `<outside>/secret`, `rel` → `../outside/secret`, `fd0`..`fd19` →
//! `/proc/self/fd/N`, `race/secret` ("inside\n") and `swap` → `<outside>`. `<outside>/secret`
//! holds [`SECRET`]; none of these paths may ever yield it. Symlinks on a virtio-fs mount are
//! resolved by the guest kernel in the guest's own tree, and the server never follows them.

use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::work::{err, preview};
use crate::{cstring, Report, SECRET};

pub fn all(report: &mut Report, outside: &str) {
    if !outside.starts_with('/') {
        report.check(
            "outside-path-given",
            Err(format!("no absolute outside path given: {outside:?}")),
        );
        return;
    }
    let secret = format!("{outside}/secret");
    report.check("dotdot-and-symlinks", dotdot_and_symlinks(&secret));
    report.check("guest-made-symlinks", guest_made_symlinks(&secret));
    report.check("proc-self-fd", proc_self_fd(&secret));
    report.check("device-nodes", device_nodes());
    report.check("file-handles", file_handles(&secret));
    report.check("xattrs", xattrs());
    report.check("rename-race", rename_race(&secret));
    writes_outside(outside);
}

fn dotdot_and_symlinks(secret: &str) -> Result<(), String> {
    no_secret_any(&[
        "/mnt/../../../etc/passwd".to_string(),
        format!("/mnt/..{secret}"),
        format!("/mnt/dir/../../..{secret}"),
        secret.to_string(),
        "/mnt/to-secret".into(),
        "/mnt/to-outside/secret".into(),
        format!("/mnt/to-root{secret}"),
        "/mnt/rel".into(),
        "/mnt/swap/secret".into(),
    ])
}

fn guest_made_symlinks(secret: &str) -> Result<(), String> {
    std::os::unix::fs::symlink("/", "/mnt/g-root").map_err(err)?;
    std::os::unix::fs::symlink(secret, "/mnt/g-secret").map_err(err)?;
    std::os::unix::fs::symlink("../../../../../..", "/mnt/g-up").map_err(err)?;
    no_secret_any(&[
        format!("/mnt/g-root{secret}"),
        "/mnt/g-secret".into(),
        format!("/mnt/g-up{secret}"),
    ])
}

/// Our own fds and the host-made links to `/proc/self/fd/N` (resolved here, to our fds; 0-2
/// are the console and left alone).
fn proc_self_fd(secret: &str) -> Result<(), String> {
    let _mnt = fs::File::open("/mnt").map_err(err)?;
    let mut paths = Vec::new();
    for fd in 3..20 {
        paths.push(format!("/proc/self/fd/{fd}"));
        paths.push(format!("/proc/self/fd/{fd}/..{secret}"));
        paths.push(format!("/mnt/fd{fd}"));
    }
    no_secret_any(&paths)
}

/// Device nodes on the share are refused by the server.
fn device_nodes() -> Result<(), String> {
    for (name, kind, major, minor) in [
        ("sda", libc::S_IFBLK, 8, 0),
        ("mem", libc::S_IFCHR, 1, 1),
        ("kvm", libc::S_IFCHR, 10, 232),
    ] {
        let path = cstring(&format!("/mnt/{name}"));
        // SAFETY: `path` is a valid NUL-terminated string.
        let rc = unsafe { libc::mknod(path.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
        if rc == 0 {
            return Err(format!("mknod {name} succeeded on the share"));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(format!("mknod {name}: {e} (want EPERM)"));
        }
    }
    Ok(())
}

/// `trusted.*` xattrs would reach host overlayfs; the server has no xattrs at all.
fn xattrs() -> Result<(), String> {
    let (path, name) = (cstring("/mnt/small.txt"), cstring("trusted.overlay.opaque"));
    // SAFETY: valid NUL-terminated strings and a one-byte value buffer.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Err("setxattr trusted.* succeeded".into())
    } else {
        Ok(())
    }
}

/// Writes aimed outside the share: each fails or lands in the guest's own tree (the host test
/// checks its outside directory afterwards).
fn writes_outside(outside: &str) {
    for path in [
        "/mnt/../escape-1".to_string(),
        "/mnt/to-outside/escape-2".into(),
        format!("/mnt/to-root{outside}/escape-3"),
        format!("{outside}/escape-4"),
    ] {
        let _ = fs::write(&path, b"escaped?");
    }
}

/// Fails if reading any of `paths` returns the host secret.
fn no_secret_any(paths: &[String]) -> Result<(), String> {
    for path in paths {
        if let Ok(data) = read_nonblocking(path) {
            if data.windows(SECRET.len()).any(|w| w == SECRET) {
                return Err(format!("read the host secret through {path}"));
            }
        }
    }
    Ok(())
}

/// Reads up to 64 KiB of `path` without ever blocking (a path may name the console or a FIFO).
fn read_nonblocking(path: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let mut data = Vec::new();
    f.by_ref().take(64 << 10).read_to_end(&mut data)?;
    Ok(data)
}

/// `name_to_handle_at` on the share must not work (no export support); if it ever does, a
/// forged handle must not open a host file.
fn file_handles(secret: &str) -> Result<(), String> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    let path = cstring("/mnt/small.txt");
    // SAFETY: `h` is a properly sized file_handle buffer, `mount_id` a valid out-pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if rc != 0 {
        return Ok(());
    }
    // Handles exist after all: try forged inode numbers through the share's mount.
    let mnt = fs::File::open("/mnt").map_err(err)?;
    for ino in [1u64, 2, 3, 128, 4096, 1 << 20] {
        h.data[..8].copy_from_slice(&ino.to_ne_bytes());
        // SAFETY: as above; the result is an fd we close (or -1).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                std::os::fd::AsRawFd::as_raw_fd(&mnt),
                &mut h as *mut Handle,
                libc::O_RDONLY,
            )
        };
        if fd >= 0 {
            let mut buf = [0u8; 64];
            // SAFETY: `fd` is ours; `buf` is a valid buffer.
            let n = unsafe { libc::read(fd as i32, buf.as_mut_ptr().cast(), buf.len()) };
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd as i32) };
            if n > 0 && buf[..n as usize].windows(SECRET.len()).any(|w| w == SECRET) {
                return Err(format!("open_by_handle_at reached {secret}"));
            }
        }
    }
    Ok(())
}

/// One thread swaps `race` (a directory) with `swap` (a symlink to the outside directory) with
/// `RENAME_EXCHANGE` as fast as it can, two others open and read `race/secret` and
/// `swap/secret`: they must only ever read the share's own file.
fn rename_race(secret: &str) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            let (a, b) = (cstring("/mnt/race"), cstring("/mnt/swap"));
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid NUL-terminated strings; plain integer flags.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                if rc != 0 {
                    return Err(format!("renameat2: {}", io::Error::last_os_error()));
                }
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let readers: Vec<_> = ["/mnt/race/secret", "/mnt/swap/secret"]
        .into_iter()
        .map(|path| {
            std::thread::spawn(move || {
                let mut inside = 0usize;
                for _ in 0..150 {
                    match fs::read(path) {
                        Ok(data) if data == b"inside\n" => inside += 1,
                        Ok(data) => {
                            return Err(format!("{path} gave {:?}", preview(&data)));
                        }
                        Err(_) => {}
                    }
                }
                Ok(inside)
            })
        })
        .collect();
    let mut inside = 0;
    let mut result = Ok(());
    for r in readers {
        match r.join() {
            Ok(Ok(n)) => inside += n,
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err("reader panicked".into()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    match swapper.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = result.and(Err(e)),
        Err(_) => result = result.and(Err("swapper panicked".into())),
    }
    result?;
    let swaps = swaps.load(Ordering::Relaxed);
    crate::say(&format!(
        "rename-race swaps={swaps} inside-reads={inside} (secret at {secret})"
    ));
    if swaps == 0 || inside == 0 {
        return Err(format!(
            "the race did not run (swaps {swaps}, reads {inside})"
        ));
    }
    Ok(())
}

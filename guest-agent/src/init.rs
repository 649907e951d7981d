//! PID 1 duties: the file systems every guest process expects, stdio on the console, an up
//! loopback device, and a guest that ends (rather than hangs) if the agent panics.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// Errors of the PID 1 setup.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {0}")]
    Mount(&'static str, #[source] Errno),
    #[error("mkdir {0}")]
    Mkdir(&'static str, #[source] std::io::Error),
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Create the directory first (it is not in the initramfs or the parent file system).
    mkdir: bool,
}

/// In order: each later target lives on an earlier mount.
fn mounts() -> [Mount; 8] {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let hidden = nosuid_nodev | MsFlags::MS_NOEXEC;
    [
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hidden,
            data: None,
            mkdir: true,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hidden,
            data: None,
            mkdir: true,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            mkdir: true,
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            mkdir: true,
        },
        Mount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid_nodev,
            data: Some("mode=1777"),
            mkdir: true,
        },
        Mount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: nosuid_nodev,
            data: Some("mode=1777"),
            mkdir: true,
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: nosuid_nodev,
            data: Some("mode=0755"),
            mkdir: true,
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: hidden,
            data: None,
            // sysfs provides the directory.
            mkdir: false,
        },
    ]
}

/// Mounts the basics, makes sure fds 0-2 are the console and brings `lo` up.
pub fn setup() -> Result<(), InitError> {
    for m in mounts() {
        if m.mkdir {
            match std::fs::create_dir(m.target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(InitError::Mkdir(m.target, e)),
            }
        }
        mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
            .map_err(|e| InitError::Mount(m.target, e))?;
    }
    ensure_stdio(Path::new("/dev/console"));
    // Every container expects an up `lo` (runc's have one), with or without a network; the
    // agent itself does not need it, so a failure is logged rather than fatal.
    if let Err(e) = crate::network::loopback_up() {
        crate::log(&bulkhead_protocol::error_chain(&e));
    }
    Ok(())
}

/// Opens `device` for every one of fds 0, 1, 2 that is closed (the kernel gives init the
/// console only if the initramfs has /dev/console). Also keeps later fds from landing on 0-2,
/// which the spawner relies on.
pub fn ensure_stdio(device: &Path) {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
            continue;
        }
        // open() takes the lowest free fd, which is `fd`.
        let opened = nix::fcntl::open(
            device,
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
            nix::sys::stat::Mode::empty(),
        );
        if opened.is_err() {
            let _ = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
        }
    }
}

/// As PID 1, a panic would otherwise leave a guest that no longer answers: log it on the
/// console and reset, so the host sees the VM end.
pub fn reboot_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        crate::log(&format!("panic: {info}"));
        power_off();
    }));
}

/// Syncs and resets the guest (with `reboot=k` the VMM sees the keyboard-controller reset).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // Only reached if reboot failed; exiting PID 1 panics the kernel, which resets too.
    std::process::exit(1)
}

//! The prerequisites a test can name, and how each is checked.

use std::path::{Path, PathBuf};

/// One thing a test needs from its machine or its run.
#[derive(Debug, Clone)]
pub enum Need {
    /// End-to-end tests are asked for (`BULKHEAD_E2E=1`): they boot real VMs or start
    /// engines, minutes of work that a quick `cargo test` leaves out. Never missing when the
    /// run asks for everything, by definition.
    EndToEnd,
    /// Running as root (mount namespaces, bind mounts, cgroups, container set-up).
    Root,
    /// `/dev/kvm` can be opened read-write.
    Kvm,
    /// `/dev/fuse` can be opened (some hosts refuse it even to root).
    Fuse,
    /// A program on `PATH` (e.g. `python3`).
    Program(&'static str),
    /// A file that must exist (e.g. the installed guest kernel), with what makes it.
    File(PathBuf, &'static str),
    /// The cgroup v2 group of this process offers the controller (e.g. `memory`).
    CgroupV2Controller(&'static str),
}

impl Need {
    /// What is missing, in words, or `None` when the need holds. `requested`: the run asks
    /// for everything (then [`Need::EndToEnd`] holds).
    pub(crate) fn missing(&self, requested: bool) -> Option<String> {
        let ok = match self {
            Need::EndToEnd => requested,
            Need::Root => effective_uid() == 0,
            Need::Kvm => opens_rw(Path::new("/dev/kvm")),
            Need::Fuse => opens_rw(Path::new("/dev/fuse")),
            Need::Program(name) => on_path(name),
            Need::File(path, _) => path.exists(),
            Need::CgroupV2Controller(c) => cgroup_v2_controllers().iter().any(|x| x == c),
        };
        (!ok).then(|| self.describe())
    }

    /// The missing prerequisite, as the skip line or the failure names it.
    fn describe(&self) -> String {
        match self {
            Need::EndToEnd => "end-to-end tests not requested (set BULKHEAD_E2E=1)".into(),
            Need::Root => "needs root".into(),
            Need::Kvm => "needs /dev/kvm (read-write)".into(),
            Need::Fuse => "needs /dev/fuse (this host refuses to open it)".into(),
            Need::Program(p) => format!("needs {p} on PATH"),
            Need::File(p, hint) => format!("needs {} ({hint})", p.display()),
            Need::CgroupV2Controller(c) => {
                format!("needs the {c} controller in this process's cgroup v2 group")
            }
        }
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn opens_rw(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .is_ok()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// The controllers offered to this process's own cgroup v2 group (empty without cgroup2).
pub fn cgroup_v2_controllers() -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    // Field 5 is the mount point; the filesystem type follows " - ".
    let mount = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))?
    });
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    mount
        .and_then(|m| std::fs::read_to_string(m.join(rel).join("cgroup.controllers")).ok())
        .map(|c| c.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// `major:minor` of a disk of this host: the first block device in /sys/block with a driver
/// (not a loop or zram device), for tests that throttle I/O on a real device.
pub fn a_disk() -> (i64, i64) {
    let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .collect();
    disks.sort();
    let dev = disks
        .first()
        .expect("a disk in /sys/block with a device (for an I/O throttle)");
    let (major, minor) = dev.trim().split_once(':').expect("major:minor");
    (
        major.parse().expect("a major number"),
        minor.parse().expect("a minor number"),
    )
}

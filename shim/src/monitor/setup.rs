//! The monitor's host-side setup steps and their undo.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::cgroups::{self, HostLimits};
use crate::share::Share;
use crate::spec::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("new mount namespace")]
    MountNs(#[source] nix::Error),
    #[error("new network namespace")]
    NetNs(#[source] nix::Error),
    #[error("join network namespace {path}")]
    JoinNetNs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("cannot allocate tty if runc will detach without setting console socket")]
    NoTerminal,
}

/// What to undo if creation fails.
#[derive(Default)]
pub struct Undo {
    pub cgroup_dirs: Vec<PathBuf>,
    pub share: Option<Share>,
}

impl Undo {
    /// Undoes everything. The monitor is still inside its cgroup, so it first moves back to
    /// the root group of each hierarchy to make the directories removable.
    pub fn run(&mut self) {
        self.run_share_only();
        if !self.cgroup_dirs.is_empty() {
            leave_cgroups(&self.cgroup_dirs);
            cgroups::remove(&self.cgroup_dirs);
            self.cgroup_dirs.clear();
        }
    }

    pub fn run_share_only(&mut self) {
        if let Some(mut s) = self.share.take() {
            s.teardown();
        }
    }
}

/// Moves this process to the parent group of each directory it joined.
fn leave_cgroups(dirs: &[PathBuf]) {
    let pid = std::process::id().to_string();
    for d in dirs {
        if let Some(parent) = d.parent() {
            let _ = std::fs::write(parent.join("cgroup.procs"), &pid);
        }
    }
}

/// A private mount namespace whose `/` is a slave of the host's (host mounts still appear,
/// ours never leak out and all vanish with the monitor), and the spec's network namespace:
/// a new one, or the one at the given path (podman's and libnetwork's hooks configure it).
/// The VM reaches nothing through it yet; it is where a future virtio-net backend will live.
pub fn enter_namespaces(bundle: &Bundle) -> Result<(), SetupError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(SetupError::MountNs)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(SetupError::MountNs)?;
    match bundle.namespace("network") {
        Some(None) => unshare(CloneFlags::CLONE_NEWNET).map_err(SetupError::NetNs)?,
        Some(Some(path)) => join_netns(&path)?,
        None => {}
    }
    Ok(())
}

fn join_netns(path: &Path) -> Result<(), SetupError> {
    let err = |source| SetupError::JoinNetNs {
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| err(std::io::Error::from(e)))
}

/// Joins the container's host cgroup in every mounted hierarchy.
pub fn join_cgroup(rel: &Path, pid: i32, limits: &HostLimits) -> Result<Vec<PathBuf>, SetupError> {
    let hs = cgroups::hierarchies()?;
    Ok(cgroups::join(&hs, rel, pid, limits)?)
}

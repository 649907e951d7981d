//! containerd's rootfs mounts (a snapshot's overlay, for an image's container) on
//! `<bundle>/rootfs`, where the bundle's `config.json` expects the root; `ctr run --rootfs`
//! and a bundle with its own root send none.

use std::path::Path;

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{umount2, MntFlags};

/// Mounts them in order; true if there were any. A failure undoes what was mounted.
pub async fn mount(mounts: &[Mount], bundle: &Path) -> containerd_shim::Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| containerd_shim::Error::Other(format!("{}: {e}", target.display())))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            unmount(bundle);
            return Err(e);
        }
    }
    Ok(true)
}

/// Unmounts everything stacked on `<bundle>/rootfs` (detached: a process still inside it
/// must not keep the bundle from being removed).
pub fn unmount(bundle: &Path) {
    let target = bundle.join("rootfs");
    // Each call takes the top mount away; EINVAL once nothing is mounted there.
    for _ in 0..16 {
        if umount2(&target, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

//! The busybox root filesystem every container test runs: Debian's busybox-static with its
//! applet links, a passwd/group with root and uid 1000. Never pulled from a registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the rootfs in `<dir>/busybox` and its tarball `<dir>/busybox.tar`; returns the
/// tarball's path.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("busybox");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"] {
        fs::create_dir_all(root.join(sub)).expect("create the rootfs");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is not installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n";
    fs::write(root.join("etc/passwd"), passwd).expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
    let tar = dir.join("busybox.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(ok.success(), "tar of the busybox rootfs failed");
    tar
}

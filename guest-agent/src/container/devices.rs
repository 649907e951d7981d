//! `/dev` in the container: the device nodes runc always creates, the spec's `linux.devices`,
//! the standard symlinks, and the console.
//!
//! Nodes are made with `mknodat` on the container's `/dev` (normally a fresh tmpfs from the
//! spec's mounts; when `/dev` is a bind mount, nothing is created, like runc). Where `/dev` is
//! the rootfs itself, a virtio-fs share, the host refuses device nodes (a guest must not make
//! them on the host's disk): the node is then an empty file with the guest's own device of the
//! same path bound over it, as runc does in a user namespace.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use bulkhead_protocol::dev::{DEFAULT_NODES, DIRS, LINKS};
use nix::errno::Errno;
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::error::{AtStep, ChildResult, Step};
use super::mounts::MountStep;
use super::rootfs_path::{self, Create, FdPath};
use super::spec::{clean_relative, cstring, SpecError};
use super::sys;

/// One device node to create.
#[derive(Debug)]
struct Node {
    /// Directory relative to the rootfs (`dev` for all defaults).
    parent: CString,
    name: CString,
    mode: libc::mode_t,
    dev: libc::dev_t,
    uid: u32,
    gid: u32,
    /// The same path in the guest's own root: bound over an empty file where `mknod` is refused.
    source: CString,
}

/// What to build in `/dev`.
#[derive(Debug, Default)]
pub struct DevicePlan {
    nodes: Vec<Node>,
    /// Directories in `/dev` that no mount provides.
    dirs: Vec<&'static CStr>,
}

impl DevicePlan {
    /// Plans `/dev`; `None` when `/dev` is bind-mounted from elsewhere.
    pub fn new(spec: &Spec, mounts: &[MountStep]) -> Result<Option<DevicePlan>, SpecError> {
        if mounts.iter().any(|m| m.is_at(b"dev") && m.is_bind()) {
            return Ok(None);
        }
        let mut plan = DevicePlan::default();
        for d in spec
            .linux()
            .iter()
            .flat_map(|l| l.devices().iter().flatten())
        {
            let shown = d.path().display().to_string();
            if !d.path().is_absolute() {
                return Err(SpecError::Device(shown, "path must be absolute"));
            }
            let kind = match d.typ() {
                LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
                LinuxDeviceType::B => libc::S_IFBLK,
                LinuxDeviceType::P => libc::S_IFIFO,
                LinuxDeviceType::A => return Err(SpecError::Device(shown, "type a is not a node")),
            };
            let (Ok(major), Ok(minor)) = (u32::try_from(d.major()), u32::try_from(d.minor()))
            else {
                return Err(SpecError::Device(shown, "negative major or minor"));
            };
            let rel = clean_relative("linux.devices.path", d.path())?;
            let (parent, name) = split(rel.as_bytes())
                .ok_or(SpecError::Device(shown.clone(), "path is the root"))?;
            plan.nodes.push(Node {
                parent: cstring("linux.devices.path", parent)?,
                name: cstring("linux.devices.path", name)?,
                mode: kind | (d.file_mode().unwrap_or(0o666) & 0o7777),
                dev: libc::makedev(major, minor),
                uid: d.uid().unwrap_or(0),
                gid: d.gid().unwrap_or(0),
                source: cstring("linux.devices.path", [b"/", rel.as_bytes()].concat())?,
            });
        }
        for (name, major, minor) in DEFAULT_NODES {
            let taken = plan
                .nodes
                .iter()
                .any(|n| n.parent.as_bytes() == b"dev" && n.name.as_c_str() == name);
            if !taken {
                plan.nodes.push(Node {
                    parent: c"dev".into(),
                    name: name.into(),
                    mode: libc::S_IFCHR | 0o666,
                    dev: libc::makedev(major, minor),
                    uid: 0,
                    gid: 0,
                    source: cstring("device", [&b"/dev/"[..], name.to_bytes()].concat())?,
                });
            }
        }
        for name in DIRS {
            let rel = [&b"dev/"[..], name.to_bytes()].concat();
            if !mounts.iter().any(|m| m.is_at(&rel)) {
                plan.dirs.push(name);
            }
        }
        Ok(Some(plan))
    }

    /// Creates everything under the rootfs opened as `root` (child side). `console` is the path
    /// of the pty slave to bind over `/dev/console` when the process has a terminal.
    pub fn apply(&self, root: RawFd, console: Option<&CStr>) -> ChildResult<()> {
        let dev = rootfs_path::resolve(root, b"dev", Create::Dir).step(Step::Device)?;
        for (i, node) in self.nodes.iter().enumerate() {
            let dir = if node.parent.as_bytes() == b"dev" {
                dev
            } else {
                rootfs_path::resolve(root, node.parent.as_bytes(), Create::Dir)
                    .step_at(Step::Device, i)?
            };
            let device = node.mode & libc::S_IFMT != libc::S_IFIFO;
            let bind = match sys::mknodat(dir, &node.name, node.mode, node.dev) {
                Ok(()) => false,
                // A regular file where a device belongs (left by an earlier run on the share,
                // or shipped in the image) gets the device bound over it; anything else that
                // is there stays, as under runc.
                Err(Errno::EEXIST) => {
                    device
                        && sys::lstatat(dir, &node.name)
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
                }
                Err(Errno::EPERM) if device => {
                    sys::mknodat(dir, &node.name, libc::S_IFREG | 0o644, 0)
                        .step_at(Step::Device, i)?;
                    true
                }
                Err(e) => return Err(e).step_at(Step::Device, i),
            };
            if bind {
                bind_device(dir, node).step_at(Step::Device, i)?;
                continue;
            }
            if node.uid != 0 || node.gid != 0 {
                sys::fchownat(dir, &node.name, node.uid, node.gid).step_at(Step::Device, i)?;
            }
        }
        for name in &self.dirs {
            match sys::mkdirat(dev, name, 0o755) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).step(Step::Device),
            }
        }
        for (i, (name, target)) in LINKS.iter().enumerate() {
            match sys::symlinkat(target, dev, name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).step_at(Step::DeviceLink, i),
            }
        }
        if let Some(tty) = console {
            match sys::mknodat(dev, c"console", libc::S_IFREG | 0o666, 0) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e).step(Step::Console),
            }
            let target = rootfs_path::open(root, b"dev/console").step(Step::Console)?;
            let target = FdPath::new(target);
            sys::mount(Some(tty), target.as_cstr(), None, libc::MS_BIND, None)
                .step(Step::Console)?;
        }
        Ok(())
    }

    /// The path of node `index`, for error messages.
    pub fn describe(&self, index: usize) -> String {
        match self.nodes.get(index) {
            Some(n) => n.source.to_string_lossy().into_owned(),
            None => "/dev".into(),
        }
    }
}

/// Binds the guest's device of `node`'s path over the regular file `node` names in `dir`
/// (no ownership or mode of the spec's: the guest's node is bound as it is). Only a device of
/// the node's type is bound (ENODEV otherwise): the spec names the path, and no other file of
/// the agent's root may end up writable in the container.
fn bind_device(dir: RawFd, node: &Node) -> sys::SysResult<()> {
    if sys::stat_mode(&node.source)? & libc::S_IFMT != node.mode & libc::S_IFMT {
        return Err(Errno::ENODEV);
    }
    let fd = rootfs_path::open(dir, node.name.to_bytes())?;
    let target = FdPath::new(fd);
    let bound = sys::mount(
        Some(&node.source),
        target.as_cstr(),
        None,
        libc::MS_BIND,
        None,
    );
    sys::close(fd);
    bound
}

/// Splits a clean relative path into (parent, last component); `None` for the empty path.
fn split(rel: &[u8]) -> Option<(&[u8], &[u8])> {
    if rel.is_empty() {
        return None;
    }
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => Some((rel.get(..i)?, rel.get(i + 1..)?)),
        None => Some((&[], rel)),
    }
}

/// The symlink name of entry `index` of [`LINKS`], for error messages.
pub fn link_name(index: usize) -> String {
    LINKS
        .get(index)
        .map(|(n, _)| format!("/dev/{}", n.to_string_lossy()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::mounts;

    #[test]
    fn spec_devices_override_defaults() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2",
            "mounts":[{"destination":"/dev","type":"tmpfs"},{"destination":"/dev/pts","type":"devpts"}],
            "linux":{"devices":[
              {"path":"/dev/null","type":"c","major":1,"minor":3,"fileMode":384},
              {"path":"/dev/net/tun","type":"c","major":10,"minor":200,"uid":5,"gid":6}]}}"#,
        )
        .unwrap();
        let m = mounts::plan(&spec, true).unwrap();
        let plan = DevicePlan::new(&spec, &m).unwrap().unwrap();
        let null: Vec<_> = plan
            .nodes
            .iter()
            .filter(|n| n.name.as_bytes() == b"null")
            .collect();
        assert_eq!(null.len(), 1);
        assert_eq!(null[0].mode, libc::S_IFCHR | 0o600);
        assert_eq!(plan.nodes.len(), 7);
        assert_eq!(plan.describe(1), "/dev/net/tun");
        assert_eq!(plan.nodes[1].parent.as_bytes(), b"dev/net");
        assert_eq!((plan.nodes[1].uid, plan.nodes[1].gid), (5, 6));
        // /dev/pts is mounted, /dev/shm is not.
        assert_eq!(plan.dirs, vec![c"shm"]);
    }

    #[test]
    fn bind_mounted_dev_is_left_alone() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/dev","type":"bind","source":"/dev","options":["rbind"]}]}"#,
        )
        .unwrap();
        let m = mounts::plan(&spec, true).unwrap();
        assert!(DevicePlan::new(&spec, &m).unwrap().is_none());
        assert_eq!(split(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(split(b"c"), Some((&b""[..], &b"c"[..])));
        assert_eq!(link_name(4), "/dev/ptmx");
    }
}

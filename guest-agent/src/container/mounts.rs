//! The spec's `mounts`: option parsing in the agent, the mount calls in the cloned child.
//!
//! Each mount costs one `openat2` (safe resolution of the destination, see `rootfs_path`) and
//! one `mount(2)` on `/proc/self/fd/N`. Bind mounts with per-mount attributes (`ro`, `nosuid`,
//! …) or propagation get one more lookup and `mount_setattr(2)`, which changes only the named
//! attributes — so a bind from a `nosuid` share stays `nosuid` — and handles the recursive
//! variants (`rro`, `rnosuid`, …) in one call. `private`/`rprivate` are free: the whole mount
//! namespace is already private, and new mounts inherit that.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::Path;

use nix::errno::Errno;
use oci_spec::runtime::Spec;

use super::copyup;
use super::error::{AtStep, ChildResult, Step};
use super::rootfs_path::{self, Create, FdPath};
use super::spec::{clean_relative, cstring, SpecError};
use super::sys::{self, MountAttr, SysResult};

const ATTR_RDONLY: u64 = 0x1;
const ATTR_NOSUID: u64 = 0x2;
const ATTR_NODEV: u64 = 0x4;
const ATTR_NOEXEC: u64 = 0x8;
const ATTR_ATIME_MASK: u64 = 0x70;
const ATTR_NOATIME: u64 = 0x10;
const ATTR_STRICTATIME: u64 = 0x20;
const ATTR_NODIRATIME: u64 = 0x80;
const ATTR_NOSYMFOLLOW: u64 = 0x20_0000;

/// One entry of the spec's `mounts`, ready for the child.
#[derive(Debug)]
pub struct MountStep {
    /// Destination relative to the rootfs, lexically clean.
    pub dest: CString,
    source: Option<CString>,
    fstype: Option<CString>,
    flags: libc::c_ulong,
    data: Option<CString>,
    target: Create,
    top: Option<MountAttr>,
    recursive: Option<MountAttr>,
    /// `tmpcopyup`: the new mount starts with a copy of what it covers (see `copyup`).
    copy_up: bool,
    /// A tmpfs without `mode=`: it takes the covered directory's mode.
    keep_mode: bool,
}

impl std::fmt::Debug for MountAttr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "set={:#x} clr={:#x} prop={:#x}",
            self.attr_set, self.attr_clr, self.propagation
        )
    }
}

/// What the options of one mount say.
#[derive(Default)]
struct Options {
    flags: libc::c_ulong,
    bind: bool,
    top: MountAttr,
    recursive: MountAttr,
    data: Vec<String>,
    copy_up: bool,
}

impl Options {
    fn set_attr(attr: &mut MountAttr, set: u64, clear: u64) {
        attr.attr_set = (attr.attr_set & !clear) | set;
        attr.attr_clr = (attr.attr_clr & !set) | clear;
    }

    /// Parses `options`; `private_ns` says the namespace is already private, so `private` and
    /// `rprivate` need no call.
    fn parse(options: &[String], private_ns: bool) -> Result<Options, SpecError> {
        let mut o = Options::default();
        for opt in options {
            // (mount flag to set, mount flag to clear) for ordinary options.
            let flag: Option<(libc::c_ulong, libc::c_ulong)> = match opt.as_str() {
                "defaults" => Some((0, 0)),
                "ro" => Some((libc::MS_RDONLY, 0)),
                "rw" => Some((0, libc::MS_RDONLY)),
                "nosuid" => Some((libc::MS_NOSUID, 0)),
                "suid" => Some((0, libc::MS_NOSUID)),
                "nodev" => Some((libc::MS_NODEV, 0)),
                "dev" => Some((0, libc::MS_NODEV)),
                "noexec" => Some((libc::MS_NOEXEC, 0)),
                "exec" => Some((0, libc::MS_NOEXEC)),
                "sync" => Some((libc::MS_SYNCHRONOUS, 0)),
                "async" => Some((0, libc::MS_SYNCHRONOUS)),
                "dirsync" => Some((libc::MS_DIRSYNC, 0)),
                "mand" => Some((libc::MS_MANDLOCK, 0)),
                "nomand" => Some((0, libc::MS_MANDLOCK)),
                "noatime" => Some((libc::MS_NOATIME, 0)),
                "atime" => Some((0, libc::MS_NOATIME)),
                "nodiratime" => Some((libc::MS_NODIRATIME, 0)),
                "diratime" => Some((0, libc::MS_NODIRATIME)),
                "relatime" => Some((libc::MS_RELATIME, 0)),
                "norelatime" => Some((0, libc::MS_RELATIME)),
                "strictatime" => Some((libc::MS_STRICTATIME, 0)),
                "nostrictatime" => Some((0, libc::MS_STRICTATIME)),
                "lazytime" => Some((libc::MS_LAZYTIME, 0)),
                "nolazytime" => Some((0, libc::MS_LAZYTIME)),
                "iversion" => Some((libc::MS_I_VERSION, 0)),
                "noiversion" => Some((0, libc::MS_I_VERSION)),
                "silent" => Some((libc::MS_SILENT, 0)),
                "loud" => Some((0, libc::MS_SILENT)),
                "nosymfollow" => Some((libc::MS_NOSYMFOLLOW, 0)),
                "remount" => Some((libc::MS_REMOUNT, 0)),
                "bind" => Some((libc::MS_BIND, 0)),
                "rbind" => Some((libc::MS_BIND | libc::MS_REC, 0)),
                _ => None,
            };
            if let Some((set, clear)) = flag {
                o.flags = (o.flags & !clear) | set;
                continue;
            }
            let propagation: Option<(u64, bool)> = match opt.as_str() {
                "private" => Some((libc::MS_PRIVATE, false)),
                "rprivate" => Some((libc::MS_PRIVATE, true)),
                "shared" => Some((libc::MS_SHARED, false)),
                "rshared" => Some((libc::MS_SHARED, true)),
                "slave" => Some((libc::MS_SLAVE, false)),
                "rslave" => Some((libc::MS_SLAVE, true)),
                "unbindable" => Some((libc::MS_UNBINDABLE, false)),
                "runbindable" => Some((libc::MS_UNBINDABLE, true)),
                _ => None,
            };
            if let Some((prop, recursive)) = propagation {
                if !(private_ns && prop == libc::MS_PRIVATE) {
                    let attr = if recursive {
                        &mut o.recursive
                    } else {
                        &mut o.top
                    };
                    attr.propagation = prop;
                }
                continue;
            }
            // Recursive attributes (runc's "rro" family), applied with AT_RECURSIVE.
            let recursive: Option<(u64, u64)> = match opt.as_str() {
                "rro" => Some((ATTR_RDONLY, 0)),
                "rrw" => Some((0, ATTR_RDONLY)),
                "rnosuid" => Some((ATTR_NOSUID, 0)),
                "rsuid" => Some((0, ATTR_NOSUID)),
                "rnodev" => Some((ATTR_NODEV, 0)),
                "rdev" => Some((0, ATTR_NODEV)),
                "rnoexec" => Some((ATTR_NOEXEC, 0)),
                "rexec" => Some((0, ATTR_NOEXEC)),
                "rnodiratime" => Some((ATTR_NODIRATIME, 0)),
                "rdiratime" => Some((0, ATTR_NODIRATIME)),
                "rnoatime" => Some((ATTR_NOATIME, ATTR_ATIME_MASK)),
                "rstrictatime" => Some((ATTR_STRICTATIME, ATTR_ATIME_MASK)),
                "rrelatime" => Some((0, ATTR_ATIME_MASK)),
                "rnosymfollow" => Some((ATTR_NOSYMFOLLOW, 0)),
                "rsymfollow" => Some((0, ATTR_NOSYMFOLLOW)),
                _ => None,
            };
            if let Some((set, clear)) = recursive {
                Self::set_attr(&mut o.recursive, set, clear);
                continue;
            }
            match opt.as_str() {
                "tmpcopyup" => o.copy_up = true,
                "idmap" | "ridmap" | "copy-symlink" => {
                    return Err(SpecError::MountOption(opt.clone()))
                }
                _ if opt.starts_with("X-") || opt.starts_with("x-") => {}
                _ => o.data.push(opt.clone()),
            }
        }
        o.bind = o.flags & libc::MS_BIND != 0;
        Ok(o)
    }

    /// Per-mount attributes of a bind mount, from the ordinary flags (bind mounts ignore them
    /// in the mount call itself).
    fn bind_attrs(&mut self, options: &[String]) {
        for opt in options {
            let (set, clear) = match opt.as_str() {
                "ro" => (ATTR_RDONLY, 0),
                "rw" => (0, ATTR_RDONLY),
                "nosuid" => (ATTR_NOSUID, 0),
                "suid" => (0, ATTR_NOSUID),
                "nodev" => (ATTR_NODEV, 0),
                "dev" => (0, ATTR_NODEV),
                "noexec" => (ATTR_NOEXEC, 0),
                "exec" => (0, ATTR_NOEXEC),
                "noatime" => (ATTR_NOATIME, ATTR_ATIME_MASK),
                "strictatime" => (ATTR_STRICTATIME, ATTR_ATIME_MASK),
                "relatime" => (0, ATTR_ATIME_MASK),
                "nodiratime" => (ATTR_NODIRATIME, 0),
                "diratime" => (0, ATTR_NODIRATIME),
                "nosymfollow" => (ATTR_NOSYMFOLLOW, 0),
                _ => continue,
            };
            Self::set_attr(&mut self.top, set, clear);
        }
    }
}

fn nonzero(attr: MountAttr) -> Option<MountAttr> {
    (attr.attr_set != 0 || attr.attr_clr != 0 || attr.propagation != 0).then_some(attr)
}

/// Turns the spec's `mounts` into steps. `private_ns`: the container's mount namespace uses the
/// default (private) root propagation.
pub fn plan(spec: &Spec, private_ns: bool) -> Result<Vec<MountStep>, SpecError> {
    let mut steps = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let shown = m.destination().display().to_string();
        let dest = clean_relative("mounts.destination", m.destination())?;
        if dest.as_bytes().is_empty() {
            return Err(SpecError::MountOnRoot(shown));
        }
        let options = m.options().clone().unwrap_or_default();
        let mut o = Options::parse(&options, private_ns)?;
        let typ = m.typ().as_deref().unwrap_or("");
        o.bind |= typ == "bind";
        let step = if typ == "cgroup" || typ == "cgroup2" {
            // Always a fresh cgroup2 mount: inside the container's cgroup namespace it shows
            // the container's own cgroup as the root.
            MountStep {
                dest,
                source: Some(cstring("mounts.source", "cgroup2")?),
                fstype: Some(cstring("mounts.type", "cgroup2")?),
                flags: o.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT),
                data: None,
                target: Create::Dir,
                top: nonzero(o.top),
                recursive: nonzero(o.recursive),
                copy_up: false,
                keep_mode: false,
            }
        } else if o.bind {
            let source = m
                .source()
                .as_deref()
                .filter(|s| s.is_absolute())
                .ok_or_else(|| SpecError::BindSource(shown.clone()))?;
            o.bind_attrs(&options);
            MountStep {
                dest,
                target: bind_target(source),
                source: Some(cstring(
                    "mounts.source",
                    source.as_os_str().as_encoded_bytes(),
                )?),
                fstype: None,
                flags: libc::MS_BIND | (o.flags & libc::MS_REC),
                data: None,
                top: nonzero(o.top),
                recursive: nonzero(o.recursive),
                copy_up: false,
                keep_mode: false,
            }
        } else {
            let source = match m.source() {
                Some(s) => s.as_os_str().as_encoded_bytes().to_vec(),
                None => typ.as_bytes().to_vec(),
            };
            MountStep {
                dest,
                source: Some(cstring("mounts.source", source)?),
                fstype: Some(cstring("mounts.type", typ)?),
                flags: o.flags,
                data: if o.data.is_empty() {
                    None
                } else {
                    Some(cstring("mounts.options", o.data.join(","))?)
                },
                target: Create::Dir,
                top: nonzero(o.top),
                recursive: nonzero(o.recursive),
                // As runc: only a tmpfs is copied up into; elsewhere the option means nothing.
                copy_up: o.copy_up && typ == "tmpfs",
                keep_mode: typ == "tmpfs" && !o.data.iter().any(|d| d.starts_with("mode=")),
            }
        };
        steps.push(step);
    }
    Ok(steps)
}

/// A file bind mount needs a file as its mount point, anything else a directory.
fn bind_target(source: &Path) -> Create {
    match std::fs::metadata(source) {
        Ok(meta) if !meta.is_dir() => Create::File,
        _ => Create::Dir,
    }
}

impl MountStep {
    /// True for a mount exactly at `rel` (relative, clean).
    pub fn is_at(&self, rel: &[u8]) -> bool {
        self.dest.as_bytes() == rel
    }

    /// True for a bind mount (its target keeps the source's contents).
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

/// Performs the mounts below the rootfs opened as `root` (child side).
pub fn apply(root: RawFd, steps: &[MountStep]) -> ChildResult<()> {
    for (i, m) in steps.iter().enumerate() {
        let dest = m.dest.as_bytes();
        // A tmpfs takes the mode of the directory it covers unless its options name one, as
        // runc does (`--tmpfs /tmp` over a 1777 /tmp stays 1777); a new mount point keeps
        // tmpfs's default.
        let (fd, covered_mode) = match m.keep_mode {
            false => (None, None),
            true => match rootfs_path::open(root, dest) {
                Ok(fd) => {
                    let mode = sys::stat_mode(FdPath::new(fd).as_cstr());
                    (Some(fd), Some(mode.step_at(Step::MountTarget, i)?))
                }
                Err(Errno::ENOENT) => (None, None),
                Err(e) => return Err(e).step_at(Step::MountTarget, i),
            },
        };
        let fd = match fd {
            Some(fd) => fd,
            None => rootfs_path::resolve(root, dest, m.target).step_at(Step::MountTarget, i)?,
        };
        // With tmpcopyup, what the mount will cover, still readable through this descriptor.
        let below = if m.copy_up {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            Some(sys::openat(fd, c".", flags, 0).step_at(Step::CopyUp, i)?)
        } else {
            None
        };
        let target = FdPath::new(fd);
        sys::mount(
            m.source.as_deref(),
            target.as_cstr(),
            m.fstype.as_deref(),
            m.flags,
            m.data.as_deref(),
        )
        .step_at(Step::Mount, i)?;
        if below.is_none() && covered_mode.is_none() && m.top.is_none() && m.recursive.is_none() {
            continue;
        }
        // The descriptor above names the covered mount point; look again to get the new mount.
        let fd = rootfs_path::open(root, dest).step_at(Step::MountAttr, i)?;
        if let Some(mode) = covered_mode {
            sys::fchmodat(libc::AT_FDCWD, FdPath::new(fd).as_cstr(), mode & 0o7777)
                .step_at(Step::Mount, i)?;
        }
        if let Some(below) = below {
            copy_up(fd, below).step_at(Step::CopyUp, i)?;
        }
        if let Some(attr) = &m.top {
            sys::mount_setattr(fd, c"", libc::AT_EMPTY_PATH as libc::c_uint, attr)
                .step_at(Step::MountAttr, i)?;
        }
        if let Some(attr) = &m.recursive {
            let flags = (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint;
            sys::mount_setattr(fd, c"", flags, attr).step_at(Step::MountAttr, i)?;
        }
    }
    Ok(())
}

/// Copies the covered directory `below` into the new mount `top` (an `O_PATH` descriptor);
/// closes `below`.
fn copy_up(top: RawFd, below: RawFd) -> SysResult<()> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let copied = sys::openat(top, c".", flags, 0).and_then(|to| {
        let r = copyup::copy_tree(below, to);
        sys::close(to);
        r
    });
    sys::close(below);
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: &str) -> Spec {
        serde_json::from_str(&format!(r#"{{"ociVersion":"1.0.2","mounts":{mounts}}}"#)).unwrap()
    }

    #[test]
    fn docker_style_mounts_parse() {
        let s = spec(
            r#"[
            {"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
            {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
            {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro","nosuid","noexec","nodev"]},
            {"destination":"/data","type":"bind","source":"/","options":["rbind","rprivate","ro","nosuid"]},
            {"destination":"/etc/x","type":"bind","source":"/etc/hostname","options":["bind","rshared","rro"]}
            ]"#,
        );
        let steps = plan(&s, true).unwrap();
        assert_eq!(steps[0].dest.as_bytes(), b"proc");
        assert_eq!(
            steps[0].flags,
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV
        );
        assert!(steps[0].data.is_none() && steps[0].top.is_none());
        assert_eq!(
            steps[1].data.as_deref().unwrap().to_bytes(),
            b"mode=755,size=65536k"
        );
        assert_eq!(steps[1].flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(steps[2].fstype.as_deref().unwrap().to_bytes(), b"cgroup2");
        assert_eq!(steps[2].flags & libc::MS_RDONLY, libc::MS_RDONLY);
        // Bind: rprivate is free, ro/nosuid become per-mount attributes.
        let bind = &steps[3];
        assert_eq!(bind.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(bind.target, Create::Dir);
        let top = bind.top.unwrap();
        assert_eq!(top.attr_set, ATTR_RDONLY | ATTR_NOSUID);
        assert_eq!(top.propagation, 0);
        assert!(bind.recursive.is_none());
        // A file source gets a file mount point; recursive options go to AT_RECURSIVE.
        let file = &steps[4];
        assert_eq!(file.flags, libc::MS_BIND);
        assert_eq!(file.target, Create::File);
        let rec = file.recursive.unwrap();
        assert_eq!(rec.attr_set, ATTR_RDONLY);
        assert_eq!(rec.propagation, libc::MS_SHARED);
        assert!(file.top.is_none());
    }

    #[test]
    fn bad_mounts_are_refused() {
        let relative =
            spec(r#"[{"destination":"/x","type":"bind","source":"rel","options":["rbind"]}]"#);
        assert!(matches!(
            plan(&relative, true),
            Err(SpecError::BindSource(_))
        ));
        let root = spec(r#"[{"destination":"/a/..","type":"tmpfs"}]"#);
        assert!(matches!(plan(&root, true), Err(SpecError::MountOnRoot(_))));
        let copyup = spec(r#"[{"destination":"/t","type":"tmpfs","options":["tmpcopyup"]}]"#);
        assert!(plan(&copyup, true).unwrap()[0].copy_up);
        let idmap =
            spec(r#"[{"destination":"/t","type":"bind","source":"/","options":["idmap"]}]"#);
        assert_eq!(
            plan(&idmap, true).unwrap_err().to_string(),
            "unsupported mount option idmap"
        );
        let atime = spec(
            r#"[{"destination":"/b","type":"bind","source":"/","options":["bind","noatime"]}]"#,
        );
        let top = plan(&atime, true).unwrap()[0].top.unwrap();
        assert_eq!(top.attr_set, ATTR_NOATIME);
        assert_eq!(top.attr_clr, ATTR_ATIME_MASK);
    }

    #[test]
    fn destinations_compare_cleaned() {
        let s = spec(r#"[{"destination":"/dev/./pts/","type":"devpts"}]"#);
        let m = &plan(&s, true).unwrap()[0];
        assert!(m.is_at(b"dev/pts"));
        assert!(!m.is_at(b"dev"));
    }
}

//! The per-container shared directory that the VM's virtio-fs device exports.
//!
//! Layout under `<root>/<id>/share`: `rootfs` (bind of the bundle's rootfs, read-only when
//! `root.readonly`, after [`crate::mountpoints`] created the mount points in it) and
//! `mounts/<n>` (bind of the n-th OCI bind mount's source — volumes, and Docker's `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname` — file or directory, read-only when its options say
//! `ro` or `rro`). The spec sent to the guest is rewritten so `root.path` and each bind
//! source name the guest-side paths inside the share; nothing else in it changes.
//!
//! The host enforces what is read-only, whatever the guest does with its own mounts (it can
//! mount the share's tag itself): the share directory is a bind mount of itself made read-only
//! once filled (it lives on the host's `/run`, RAM every container shares, so only the rootfs
//! and the volumes are the guest's to write), and a read-only rootfs or bind is read-only with
//! every mount below it (`mount_setattr(AT_RECURSIVE)`: `rbind` + `ro` and `rro` alike).
//!
//! The sandbox monitor calls [`Share::prepare`] after moving into its own mount namespace (with
//! `/` made a slave), so the binds are invisible on the host and vanish with the monitor even if
//! it is killed. [`Share::teardown`] unmounts anyway (and is what `delete` calls), so the module
//! never relies on that.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::Value;

use crate::spec::Bundle;

pub const SHARE_DIR: &str = "share";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("mount source {src} for {dest} does not exist")]
    NoSource { src: PathBuf, dest: String },
    #[error("create {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bind {src} to {dst}")]
    Bind {
        src: PathBuf,
        dst: PathBuf,
        source: nix::Error,
    },
    #[error("make {path} read-only")]
    ReadOnly { path: PathBuf, source: nix::Error },
    #[error(transparent)]
    MountPoint(#[from] crate::mountpoints::MountPointError),
}

/// A prepared share and the spec rewritten for the guest.
#[derive(Debug)]
pub struct Share {
    /// Host directory exported to the guest.
    pub dir: PathBuf,
    /// The spec with guest-side paths.
    pub guest_spec: Value,
    mounted: Vec<PathBuf>,
}

/// A bind mount's source on the host (relative sources are relative to the bundle).
pub fn bind_source(bundle_dir: &Path, m: &Value) -> PathBuf {
    bundle_dir.join(m.get("source").and_then(Value::as_str).unwrap_or(""))
}

/// True for OCI mounts that bind a host path (these must travel through the share).
pub fn is_bind(m: &Value) -> bool {
    let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
    let opts = options(m);
    typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind")
}

fn options(m: &Value) -> Vec<String> {
    m.get("options")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Share {
    /// Binds the rootfs and every bind-mount source under `<state_dir>/share`; `guest_root` is
    /// where the guest mounts the share. On error everything already mounted is undone.
    pub fn prepare(
        state_dir: &Path,
        bundle: &Bundle,
        guest_root: &Path,
    ) -> Result<Share, ShareError> {
        let dir = state_dir.join(SHARE_DIR);
        let mut share = Share {
            dir: dir.clone(),
            guest_spec: bundle.raw.clone(),
            mounted: Vec::new(),
        };
        match share.fill(bundle, guest_root) {
            Ok(()) => Ok(share),
            Err(e) => {
                share.teardown();
                Err(e)
            }
        }
    }

    fn fill(&mut self, bundle: &Bundle, guest_root: &Path) -> Result<(), ShareError> {
        mkdir(&self.dir)?;
        // A mount of its own, made read-only below once the rootfs and the binds are in it.
        let dir = self.dir.clone();
        self.bind(&dir, &dir, false, false)?;
        self.fill_binds(bundle, guest_root)?;
        read_only(&dir, false)
    }

    fn fill_binds(&mut self, bundle: &Bundle, guest_root: &Path) -> Result<(), ShareError> {
        let readonly_root = bundle
            .raw
            .pointer("/root/readonly")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let rootfs = self.dir.join("rootfs");
        mkdir(&rootfs)?;
        if readonly_root {
            // The guest cannot create them in a read-only export; runc creates them too.
            crate::mountpoints::ensure(&bundle.rootfs, &bundle.dir, &bundle.raw)?;
        }
        self.bind(&bundle.rootfs, &rootfs, true, readonly_root)?;
        self.guest_spec["root"]["path"] =
            Value::String(guest_root.join("rootfs").display().to_string());

        let Some(mounts) = self.guest_spec.get("mounts").and_then(Value::as_array) else {
            return Ok(());
        };
        let binds: Vec<(usize, Value)> = mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| is_bind(m))
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let mounts_dir = self.dir.join("mounts");
        if !binds.is_empty() {
            mkdir(&mounts_dir)?;
        }
        let mut rewrites = Vec::new();
        for (i, m) in binds {
            let dest = m
                .get("destination")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let src = bind_source(&bundle.dir, &m);
            let meta = fs::metadata(&src).map_err(|_| ShareError::NoSource {
                src: src.clone(),
                dest: dest.clone(),
            })?;
            let target = mounts_dir.join(i.to_string());
            if meta.is_dir() {
                mkdir(&target)?;
            } else {
                fs::File::create(&target).map_err(|source| ShareError::Create {
                    path: target.clone(),
                    source,
                })?;
            }
            let opts = options(&m);
            let recursive = opts.iter().any(|o| o == "rbind");
            let ro = opts.iter().any(|o| o == "ro" || o == "rro");
            self.bind(&src, &target, recursive, ro)?;
            rewrites.push((i, guest_root.join("mounts").join(i.to_string())));
        }
        for (i, guest) in rewrites {
            self.guest_spec["mounts"][i]["source"] = Value::String(guest.display().to_string());
        }
        Ok(())
    }

    fn bind(
        &mut self,
        src: &Path,
        dst: &Path,
        recursive: bool,
        readonly: bool,
    ) -> Result<(), ShareError> {
        let rec = if recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(|source| ShareError::Bind {
            src: src.into(),
            dst: dst.into(),
            source,
        })?;
        self.mounted.push(dst.to_path_buf());
        // Keep our binds from propagating anywhere (and host mounts from appearing in them).
        let _ = mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_PRIVATE | rec,
            None::<&str>,
        );
        if readonly {
            read_only(dst, true)?;
        }
        Ok(())
    }

    /// Unmounts everything this share mounted and removes the directory.
    pub fn teardown(&mut self) {
        for m in self.mounted.drain(..).rev() {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
        remove_share_dir(&self.dir);
    }
}

/// Makes the mount at `path` read-only (with `recursive`, every mount below it too).
fn read_only(path: &Path, recursive: bool) -> Result<(), ShareError> {
    bulkhead_vmm::devices::virtio::fs::sandbox::set_mount_attrs(
        path,
        libc::MOUNT_ATTR_RDONLY,
        recursive,
    )
    .map_err(|source| ShareError::ReadOnly {
        path: path.into(),
        source,
    })
}

fn mkdir(p: &Path) -> Result<(), ShareError> {
    fs::create_dir_all(p).map_err(|source| ShareError::Create {
        path: p.into(),
        source,
    })
}

/// Removes a share directory left by a monitor that died: detaches whatever is still mounted
/// under it (found in /proc/self/mountinfo), then deletes the tree without crossing mounts.
pub fn remove_share_dir(dir: &Path) {
    let mut mounted = mounts_under(dir);
    mounted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in &mounted {
        let _ = umount2(m, MntFlags::MNT_DETACH);
    }
    if mounts_under(dir).is_empty() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Mount points at or below `dir` in our mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_test_support::{require, Need};
    use serde_json::json;

    fn bundle_with_mounts(dir: &Path, mounts: Value, readonly: bool) -> Bundle {
        let mut spec = crate::spec::tests::minimal();
        spec["mounts"] = mounts;
        spec["root"]["readonly"] = json!(readonly);
        crate::spec::tests::write_bundle(dir, &spec);
        Bundle::load(dir).unwrap()
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\134c"),
            PathBuf::from("/a b\\c")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn binds_rootfs_and_volumes_then_tears_down() {
        // Bind mounts need root.
        if !require(&[Need::Root]) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let bundle_dir = tmp.path().join("bundle");
        let vol = tmp.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        fs::write(vol.join("hello"), "from host").unwrap();
        let hosts = tmp.path().join("hosts");
        fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        // A tree with a mount inside it, bound read-only twice (rbind + ro, and rro).
        let tree = tmp.path().join("tree");
        let inner = tmp.path().join("inner");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::create_dir_all(&inner).unwrap();
        mount(
            Some(&inner),
            &tree.join("sub"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let bundle = bundle_with_mounts(
            &bundle_dir,
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]},
                {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
                {"destination": "/rel", "source": "rootfs", "options": ["bind"]},
                {"destination": "/tree", "type": "bind", "source": tree, "options": ["rbind", "ro"]},
                {"destination": "/tree2", "type": "bind", "source": tree, "options": ["bind", "rro"]}
            ]),
            true,
        );
        fs::write(bundle.rootfs.join("inroot"), "x").unwrap();
        let state_dir = tmp.path().join("state");
        fs::create_dir_all(&state_dir).unwrap();
        let mut share = Share::prepare(&state_dir, &bundle, Path::new("/run/share")).unwrap();

        // The guest spec points into the share; non-bind mounts are untouched.
        let g = &share.guest_spec;
        assert_eq!(g["root"]["path"], "/run/share/rootfs");
        assert_eq!(g["mounts"][0]["source"], "proc");
        assert_eq!(g["mounts"][1]["source"], "/run/share/mounts/1");
        assert_eq!(g["mounts"][2]["source"], "/run/share/mounts/2");
        assert_eq!(g["mounts"][3]["source"], "/run/share/mounts/3");
        assert_eq!(g["process"], bundle.raw["process"]);

        // The binds are real: content visible, writes reach the host, ro is enforced.
        let d = &share.dir.clone();
        assert_eq!(fs::read_to_string(d.join("rootfs/inroot")).unwrap(), "x");
        assert!(
            fs::write(d.join("rootfs/new"), "y").is_err(),
            "root.readonly must hold"
        );
        assert_eq!(
            fs::read_to_string(d.join("mounts/1/hello")).unwrap(),
            "from host"
        );
        fs::write(d.join("mounts/1/back"), "from guest").unwrap();
        assert_eq!(fs::read_to_string(vol.join("back")).unwrap(), "from guest");
        assert_eq!(
            fs::read_to_string(d.join("mounts/2")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert!(fs::write(d.join("mounts/2"), "evil").is_err());
        assert!(
            d.join("mounts/3/inroot").exists(),
            "relative sources resolve in the bundle"
        );
        // The share itself and every read-only form hold on the host, submounts included.
        assert!(fs::write(d.join("evil"), "x").is_err(), "share root");
        assert!(fs::write(d.join("mounts/evil"), "x").is_err(), "mounts dir");
        assert!(fs::write(d.join("mounts/4/new"), "x").is_err(), "rbind+ro");
        assert!(
            fs::write(d.join("mounts/4/sub/new"), "x").is_err(),
            "rbind+ro submount"
        );
        assert!(fs::write(d.join("mounts/5/new"), "x").is_err(), "rro");
        fs::write(inner.join("host"), "still the host's").unwrap();
        assert!(
            fs::write(tree.join("sub/host"), "x").is_ok(),
            "the source stays writable"
        );
        // share, rootfs, 1, 2, 3, 4, 4/sub, 5 (a non-recursive bind: no submount)
        assert_eq!(mounts_under(d).len(), 8, "{:?}", mounts_under(d));

        share.teardown();
        assert!(mounts_under(d).is_empty());
        assert!(!d.exists());
        assert_eq!(
            fs::read_to_string(vol.join("hello")).unwrap(),
            "from host",
            "teardown must not touch sources"
        );
        assert!(bundle.rootfs.join("inroot").exists());
        umount2(&tree.join("sub"), MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn errors_undo_everything() {
        // Bind mounts need root.
        if !require(&[Need::Root]) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let bundle_dir = tmp.path().join("bundle");
        let bundle = bundle_with_mounts(
            &bundle_dir,
            json!([{"destination": "/data", "type": "bind", "source": "/nonexistent/vol", "options": ["rbind"]}]),
            false,
        );
        let state_dir = tmp.path().join("state");
        fs::create_dir_all(&state_dir).unwrap();
        let err = Share::prepare(&state_dir, &bundle, Path::new("/s")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount source /nonexistent/vol for /data does not exist"
        );
        assert!(mounts_under(&state_dir).is_empty());
        assert!(!state_dir.join(SHARE_DIR).exists());
    }

    #[test]
    fn leftover_share_is_cleaned() {
        // Bind mounts need root.
        if !require(&[Need::Root]) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let share = tmp.path().join("share");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("keep"), "k").unwrap();
        fs::create_dir_all(share.join("rootfs")).unwrap();
        mount(
            Some(&src),
            &share.join("rootfs"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        remove_share_dir(&share);
        assert!(!share.exists());
        assert!(
            src.join("keep").exists(),
            "cleanup must not delete through a mount"
        );
    }
}

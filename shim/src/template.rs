//! Templates: snapshots of a booted guest whose agent is ready and which holds nothing of any
//! container (no share mounted, no host connection), from which every container's VM is
//! restored instead of booted. One per [`Recipe`] — kernel and initramfs (by content), vCPUs,
//! memory, host profile, kernel arguments and VMM version — in `<template_dir>/<key>/`, where
//! the key is a hash of the recipe. The snapshot itself records the image and host it was
//! taken on and refuses any other (the VMM checks), so a stale template is never used.
//!
//! Making one is the sandbox's job (`vm::template`); this module names, finds, locks, lists and
//! removes them. Concurrent creates of one kind make it once: the first takes the template's
//! lock (`flock`) and builds into a temporary directory that is renamed into place; the others
//! wait on the lock and then find it.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bulkhead_vmm::{HostProfile, ImageId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, VmSize};

/// What a template directory holds besides the VMM's `state` and `memory`.
const META_FILE: &str = "meta.json";
/// The console log of the guest a template was made from.
pub const BUILD_LOG: &str = "console.log";
/// Cached content hashes of kernels and initramfs images, by file identity.
const IMAGE_CACHE: &str = "images";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template directory {}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("hash the guest kernel and initramfs")]
    Image(#[source] io::Error),
    #[error("waiting for another process to make template {key} took over {secs} s")]
    LockTimeout { key: String, secs: u64 },
    #[error("make template {key}")]
    Build {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no template {0}")]
    Unknown(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything a template is a template of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// SHA-256 over the kernel and initramfs (the VMM's [`ImageId`]), hex.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub profile: String,
    pub kernel_args: String,
    /// NIC slots (config `net_slots`): the guest's devices, so part of the snapshot.
    #[serde(default)]
    pub net_slots: u8,
    /// The VMM that took it (and its snapshot format).
    pub vmm: String,
}

impl Recipe {
    /// The recipe for a container's VM; the image hash comes from the cache in `store`.
    pub fn for_vm(
        store: &Templates,
        cfg: &Config,
        size: &VmSize,
    ) -> Result<(Recipe, ImageId), TemplateError> {
        let image = store.image_id(&cfg.kernel, &cfg.initramfs)?;
        let recipe = Recipe {
            kernel: cfg.kernel.clone(),
            initramfs: cfg.initramfs.clone(),
            image: hex(&image.0),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            profile: HostProfile::probe().name().to_string(),
            kernel_args: cfg.kernel_args.clone(),
            net_slots: cfg.net_slots,
            vmm: format!(
                "{} format {}",
                env!("CARGO_PKG_VERSION"),
                bulkhead_vmm::snapshot::format::FORMAT_VERSION
            ),
        };
        Ok((recipe, image))
    }

    /// The template's name: a hash of what matters (not the file paths: the same image under
    /// another name is the same template).
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.image,
            &self.vcpus.to_string(),
            &self.memory_mib.to_string(),
            &self.profile,
            &self.kernel_args,
            &self.net_slots.to_string(),
            &self.vmm,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize()[..16])
    }
}

/// What `meta.json` says about a template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub recipe: Recipe,
    /// Seconds since the epoch.
    pub created: u64,
    /// Boot + snapshot, seconds.
    pub build_secs: f64,
    /// Bytes of guest memory actually stored (the file is sparse).
    pub memory_bytes: u64,
}

/// One template found on disk.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub dir: PathBuf,
    pub meta: Option<Meta>,
}

/// The templates under one directory.
#[derive(Debug, Clone)]
pub struct Templates {
    dir: PathBuf,
}

/// An exclusive `flock` on one template; released when dropped.
pub struct Lock(#[allow(dead_code)] fs::File);

impl Templates {
    pub fn new(dir: impl Into<PathBuf>) -> Templates {
        Templates { dir: dir.into() }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The template of `key` if one is there (its snapshot state written).
    pub fn find(&self, key: &str) -> Option<PathBuf> {
        let dir = self.path(key);
        dir.join(bulkhead_vmm::snapshot::STATE_FILE)
            .is_file()
            .then_some(dir)
    }

    /// Takes the lock of template `key`, waiting up to `timeout` for whoever holds it (a
    /// process making it).
    pub async fn lock(&self, key: &str, timeout: Duration) -> Result<Lock, TemplateError> {
        crate::private::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(format!("{key}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let wait = tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                Ok(file)
            } else {
                Err(io::Error::last_os_error())
            }
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Ok(file))) => Ok(Lock(file)),
            Ok(Ok(Err(e))) => Err(io_err(&path)(e)),
            Ok(Err(e)) => Err(io_err(&path)(io::Error::other(e))),
            Err(_) => Err(TemplateError::LockTimeout {
                key: key.to_string(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// A fresh directory to make template `key` in, next to where it will live.
    pub fn scratch(&self, key: &str) -> Result<PathBuf, TemplateError> {
        let dir = self.dir.join(format!(".{key}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        crate::private::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Moves a made template into place (replacing an old one: VMs restored from that keep
    /// their mapping of its memory file, which lives on until they end).
    pub fn install(
        &self,
        key: &str,
        scratch: &Path,
        meta: &Meta,
    ) -> Result<PathBuf, TemplateError> {
        let meta_path = scratch.join(META_FILE);
        let text = serde_json::to_vec_pretty(meta).map_err(|e| io_err(&meta_path)(e.into()))?;
        fs::write(&meta_path, text).map_err(io_err(&meta_path))?;
        let dir = self.path(key);
        self.remove_dir(&dir)?;
        fs::rename(scratch, &dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Removes template `key` (the caller holds its lock, or does not care).
    pub fn remove(&self, key: &str) -> Result<(), TemplateError> {
        let dir = self.path(key);
        if !dir.exists() {
            return Err(TemplateError::Unknown(key.to_string()));
        }
        self.remove_dir(&dir)?;
        let _ = fs::remove_file(self.dir.join(format!("{key}.lock")));
        Ok(())
    }

    /// Which template `key` is now, if there is one: its state file's device, inode and
    /// modification time in ns (a template made again is a new file written later; the time
    /// tells it apart even if the file system hands it the freed inode).
    pub fn identity(&self, key: &str) -> Option<(u64, u64, i64, i64)> {
        let m = fs::metadata(self.path(key).join(bulkhead_vmm::snapshot::STATE_FILE)).ok()?;
        Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec()))
    }

    /// Removes template `key`'s directory, keeping its lock file (the caller holds the lock: a
    /// process that opened the file meanwhile must keep waiting on the same lock).
    pub fn discard(&self, key: &str) -> Result<(), TemplateError> {
        self.remove_dir(&self.path(key))
    }

    /// Moves template `key` out of use to `<key><suffix>`, replacing what was there (clones
    /// of either keep their mapping), where an operator can restore it by hand or remove it
    /// (`template rm`). The caller holds the lock.
    pub fn set_aside(&self, key: &str, suffix: &str) -> Result<PathBuf, TemplateError> {
        let (dir, aside) = (self.path(key), self.path(&format!("{key}{suffix}")));
        self.remove_dir(&aside)?;
        fs::rename(&dir, &aside).map_err(io_err(&dir))?;
        Ok(aside)
    }

    fn remove_dir(&self, dir: &Path) -> Result<(), TemplateError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(dir)(e)),
        }
    }

    /// Every template under the directory, sorted by key.
    pub fn list(&self) -> Result<Vec<Listed>, TemplateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out: Vec<Listed> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join(bulkhead_vmm::snapshot::STATE_FILE).is_file())
            .filter_map(|e| {
                let key = e.file_name().into_string().ok()?;
                let meta = fs::read(e.path().join(META_FILE))
                    .ok()
                    .and_then(|t| serde_json::from_slice(&t).ok());
                Some(Listed {
                    key,
                    dir: e.path(),
                    meta,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The content hash of a kernel and initramfs, cached by the files' identity (device,
    /// inode, size, change times): hashing ~20 MB takes ~50 ms, every create would pay it.
    pub fn image_id(&self, kernel: &Path, initramfs: &Path) -> Result<ImageId, TemplateError> {
        let mut id = Sha256::new();
        for path in [kernel, initramfs] {
            let m = fs::metadata(path).map_err(TemplateError::Image)?;
            id.update(path.as_os_str().as_encoded_bytes());
            for v in [m.dev(), m.ino(), m.size()] {
                id.update(v.to_le_bytes());
            }
            for v in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
                id.update(v.to_le_bytes());
            }
        }
        let cache = self.dir.join(IMAGE_CACHE).join(hex(&id.finalize()[..16]));
        if let Some(cached) = fs::read_to_string(&cache)
            .ok()
            .and_then(|t| unhex32(t.trim()))
        {
            return Ok(ImageId(cached));
        }
        let image = ImageId::of_files(kernel, Some(initramfs)).map_err(TemplateError::Image)?;
        // A cache that cannot be written costs only time.
        let _ = crate::private::create_dir_all(&self.dir.join(IMAGE_CACHE))
            .and_then(|()| fs::File::create(&cache))
            .and_then(|mut f| f.write_all(hex(&image.0).as_bytes()));
        Ok(image)
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Recipe {
        Recipe {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            image: "ab".repeat(32),
            vcpus: 1,
            memory_mib: 128,
            profile: "pvm".into(),
            kernel_args: String::new(),
            net_slots: 4,
            vmm: "0.1.0 format 1".into(),
        }
    }

    fn meta() -> Meta {
        Meta {
            recipe: recipe(),
            created: now_secs(),
            build_secs: 1.5,
            memory_bytes: 10,
        }
    }

    #[test]
    fn keys_change_with_what_the_guest_sees_not_with_paths() {
        let a = recipe();
        let mut moved = a.clone();
        moved.kernel = "/elsewhere/vmlinux".into();
        assert_eq!(a.key(), moved.key());
        for change in [
            |r: &mut Recipe| r.image = "cd".repeat(32),
            |r: &mut Recipe| r.vcpus = 2,
            |r: &mut Recipe| r.memory_mib = 256,
            |r: &mut Recipe| r.profile = "hardware".into(),
            |r: &mut Recipe| r.kernel_args = "quiet".into(),
            |r: &mut Recipe| r.net_slots = 1,
            |r: &mut Recipe| r.vmm = "0.2.0 format 1".into(),
        ] {
            let mut b = a.clone();
            change(&mut b);
            assert_ne!(a.key(), b.key(), "{b:?}");
        }
        assert_eq!(a.key().len(), 32);
    }

    #[test]
    fn image_ids_are_cached_and_follow_the_files() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("k"), d.path().join("i"));
        fs::write(&k, b"kernel").unwrap();
        fs::write(&i, b"initramfs").unwrap();
        let t = Templates::new(d.path().join("templates"));
        let first = t.image_id(&k, &i).unwrap();
        assert_eq!(first, ImageId::of_files(&k, Some(&i)).unwrap());
        assert_eq!(t.image_id(&k, &i).unwrap(), first, "cached");
        // A new kernel is a new file identity, and a new hash.
        fs::write(d.path().join("k2"), b"kernel 2").unwrap();
        fs::rename(d.path().join("k2"), &k).unwrap();
        assert_ne!(t.image_id(&k, &i).unwrap(), first);
    }

    #[tokio::test]
    async fn made_templates_are_installed_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let t = Templates::new(d.path());
        let key = recipe().key();
        let _lock = t.lock(&key, Duration::from_secs(5)).await.unwrap();
        assert!(t.find(&key).is_none());
        let scratch = t.scratch(&key).unwrap();
        fs::write(scratch.join(bulkhead_vmm::snapshot::STATE_FILE), b"s").unwrap();
        let meta = meta();
        let dir = t.install(&key, &scratch, &meta).unwrap();
        assert_eq!(t.find(&key), Some(dir));
        let listed = t.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].meta.as_ref().unwrap().recipe, recipe());
        t.remove(&key).unwrap();
        assert!(t.list().unwrap().is_empty());
        assert!(matches!(t.remove(&key), Err(TemplateError::Unknown(_))));
    }

    #[tokio::test]
    async fn a_template_set_aside_is_out_of_use_and_replaces_the_last_one() {
        let d = tempfile::tempdir().unwrap();
        let t = Templates::new(d.path());
        let key = recipe().key();
        let meta = meta();
        for generation in [b"first", b"later"] {
            let scratch = t.scratch(&key).unwrap();
            fs::write(scratch.join(bulkhead_vmm::snapshot::STATE_FILE), generation).unwrap();
            t.install(&key, &scratch, &meta).unwrap();
            let aside = t.set_aside(&key, ".silent").unwrap();
            assert!(t.find(&key).is_none(), "not used any more");
            let state = fs::read(aside.join(bulkhead_vmm::snapshot::STATE_FILE)).unwrap();
            assert_eq!(state, generation);
        }
        let listed: Vec<_> = t.list().unwrap().into_iter().map(|l| l.key).collect();
        assert_eq!(listed, [format!("{key}.silent")], "one kept, and shown");
        t.remove(&format!("{key}.silent")).unwrap();
        assert!(t.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_template_made_again_is_another_one_and_discard_keeps_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let t = Templates::new(d.path());
        let key = recipe().key();
        let _lock = t.lock(&key, Duration::from_secs(5)).await.unwrap();
        let meta = meta();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let scratch = t.scratch(&key).unwrap();
            fs::write(scratch.join(bulkhead_vmm::snapshot::STATE_FILE), b"s").unwrap();
            t.install(&key, &scratch, &meta).unwrap();
            seen.push(t.identity(&key).expect("installed"));
        }
        assert_ne!(seen[0], seen[1], "made again: another template");
        t.discard(&key).unwrap();
        assert_eq!(t.identity(&key), None);
        assert!(
            d.path().join(format!("{key}.lock")).exists(),
            "the held lock's file stays"
        );
    }

    #[tokio::test]
    async fn a_held_lock_makes_others_wait() {
        let d = tempfile::tempdir().unwrap();
        let t = Templates::new(d.path());
        let held = t.lock("k", Duration::from_secs(5)).await.unwrap();
        assert!(matches!(
            t.lock("k", Duration::from_millis(200)).await,
            Err(TemplateError::LockTimeout { .. })
        ));
        drop(held);
        t.lock("k", Duration::from_secs(5)).await.unwrap();
    }
}

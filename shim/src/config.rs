//! Runtime configuration (`/etc/bulkhead/config.toml`) and the VM size of one container.
//!
//! Every key is optional; the built-in defaults are where the setup command installs the guest
//! kernel and the agent's initramfs. A container can override the VM size with the OCI annotations
//! `io.bulkhead.vcpus` and `io.bulkhead.memory_mib`; otherwise its memory limit and CPU quota
//! size the VM (limit + a fixed guest overhead; quota rounded up to whole vCPUs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/bulkhead/config.toml";
/// Environment variable naming another config file (tests, side-by-side installs).
pub const CONFIG_ENV: &str = "BULKHEAD_CONFIG";
pub const ANNOTATION_VCPUS: &str = "io.bulkhead.vcpus";
pub const ANNOTATION_MEMORY_MIB: &str = "io.bulkhead.memory_mib";

/// Upper bounds that keep a typo in an annotation from asking for an absurd VM.
const MAX_VCPUS: u32 = 64;
const MAX_MEMORY_MIB: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("annotation {key}={value:?} is not a number between {min} and {max}")]
    Annotation {
        key: &'static str,
        value: String,
        min: u32,
        max: u32,
    },
    #[error("config key {key} must be between {min} and {max}")]
    Range {
        key: &'static str,
        min: u32,
        max: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Guest kernel (vmlinux ELF or bzImage).
    pub kernel: PathBuf,
    /// The agent's initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// Guest memory when the container has no memory limit.
    pub memory_mib: u32,
    /// vCPUs when the container has no CPU quota.
    pub vcpus: u32,
    /// Guest memory added on top of a container's memory limit (kernel + agent).
    pub guest_overhead_mib: u32,
    /// Host memory added on top of the guest's when limiting the monitor's host cgroup (VMM,
    /// page tables, stdio buffers).
    pub host_overhead_mib: u32,
    /// Directory of the per-container serial console logs.
    pub log_dir: PathBuf,
    /// Keep every container's console log and write its phase timings
    /// (`<log_dir>/<id>.timings.json`, for `bench/`). Otherwise a console log is removed when
    /// its container ends normally and kept when the VM or the monitor failed, so the directory
    /// does not grow with every container.
    pub keep_logs: bool,
    /// Cap of a console log in KiB: when full it becomes `<id>.console.log.1` (replacing the
    /// previous one) and a new log starts, so a guest keeps at most twice this on disk; 0
    /// keeps no console output.
    pub console_log_max_kib: u64,
    /// Extra kernel command line arguments.
    pub kernel_args: String,
    /// Seconds allowed for the guest to boot and its agent to answer.
    pub boot_timeout_secs: u32,
    /// Restore every container's VM from a template (a snapshot of a booted guest) instead of
    /// booting it; the first container of a kind makes the template.
    pub templates: bool,
    /// Where templates live (one directory each, named by the hash of what they were made of).
    pub template_dir: PathBuf,
    /// Let the guest make set-user-ID and set-group-ID files in volumes too. By default only the
    /// container's own rootfs keeps them (package installs need them, and it lives in the
    /// engine's private storage); in a volume, a file the guest (root in its VM) made
    /// set-user-ID root could be run as root by any host user who can reach the directory.
    pub volumes_allow_set_id: bool,
    /// Host file descriptors a container's share may hold for its guest (one per file or
    /// directory the guest knows, one per open file). 0: the monitor's open-file limit less
    /// [`MONITOR_FD_RESERVE`] (or half of it, if more), so a guest can never take the fds its
    /// own monitor needs.
    pub share_max_open_files: u64,
    /// Whether the monitor's threads (vCPUs, device loop, control) run under their seccomp
    /// allow-lists. Off is a way out for a host that needs a syscall a list lacks (a forbidden
    /// syscall stops the container with a `seccomp:` line in its log); the virtio-fs server and
    /// its queue thread keep theirs either way.
    pub seccomp: bool,
    /// The program a container's virtio-fs server runs (with `__virtiofs-server`): empty for
    /// this `bulkhead` binary itself, which is what ships. For embedders whose own binary is
    /// not `bulkhead` (tests that run the monitor's code in-process).
    pub fs_server_program: PathBuf,
    /// The user each container's monitor runs as once it is locked down, with
    /// `monitor_gid` (both or neither; not 0). Unset (the default), it stays root with no
    /// capability. Set, it gives up root for good before the workload runs: it can then open
    /// no file of root's, signal no process of root's, and holds no capability even in a
    /// thread. Its state's live directory and its console log become this user's, and the log
    /// directory (Bulkhead's own: its group and mode change; not a symlink) this group's, mode
    /// 1770 (sticky: root's files there stay root's). A dedicated user (no login, no other
    /// files) is what this is for; every monitor shares it, and their jails and seccomp lists
    /// keep them apart.
    pub monitor_uid: Option<u32>,
    /// The group that goes with `monitor_uid`.
    pub monitor_gid: Option<u32>,
    /// NIC slots every VM has (virtio-net devices the guest sees only once the host attaches
    /// a tap): how many interfaces a container's network namespace may have. Templates are made
    /// with them, so changing it makes new templates.
    pub net_slots: u8,
}

/// Fds kept for the monitor itself (control connections, vsock streams, stdio, logs) when the
/// share's cap is derived from the open-file limit.
pub const MONITOR_FD_RESERVE: u64 = 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: "/usr/local/share/bulkhead/vmlinux".into(),
            initramfs: "/usr/local/share/bulkhead/agent-initramfs.cpio".into(),
            memory_mib: 128,
            vcpus: 1,
            guest_overhead_mib: 64,
            host_overhead_mib: 64,
            log_dir: "/var/log/bulkhead".into(),
            keep_logs: false,
            console_log_max_kib: 1024,
            kernel_args: String::new(),
            boot_timeout_secs: 180,
            templates: true,
            template_dir: "/var/lib/bulkhead/templates".into(),
            volumes_allow_set_id: false,
            share_max_open_files: 0,
            seccomp: true,
            fs_server_program: PathBuf::new(),
            net_slots: 4,
            monitor_uid: None,
            monitor_gid: None,
        }
    }
}

impl Config {
    /// Loads `$BULKHEAD_CONFIG` or `/etc/bulkhead/config.toml`; a missing file means defaults.
    pub fn load() -> Result<Config, ConfigError> {
        let path = std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
        Self::load_from(&path)
    }

    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|msg| ConfigError::Parse {
            path: path.into(),
            msg,
        })
    }

    fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| crate::logging::one_line(e.message()))?;
        if !(1..=MAX_VCPUS).contains(&cfg.vcpus) {
            return Err(ConfigError::Range {
                key: "vcpus",
                min: 1,
                max: MAX_VCPUS,
            }
            .to_string());
        }
        if !(16..=MAX_MEMORY_MIB).contains(&cfg.memory_mib) {
            return Err(ConfigError::Range {
                key: "memory_mib",
                min: 16,
                max: MAX_MEMORY_MIB,
            }
            .to_string());
        }
        match (cfg.monitor_uid, cfg.monitor_gid) {
            (None, None) => {}
            (Some(0), _) | (_, Some(0)) => {
                return Err("monitor_uid and monitor_gid must not be 0 (root): leave them out to keep the monitor root".into())
            }
            (Some(_), Some(_)) => {}
            _ => return Err("monitor_uid and monitor_gid go together: set both or neither".into()),
        }
        Ok(cfg)
    }

    /// The unprivileged user and group of the locked-down monitor, if configured.
    pub fn monitor_identity(&self) -> Option<(u32, u32)> {
        self.monitor_uid.zip(self.monitor_gid)
    }

    /// Serial console log of one container.
    pub fn console_log(&self, id: &str) -> PathBuf {
        let name = bulkhead_protocol::id_file_name(id);
        self.log_dir.join(format!("{name}.console.log"))
    }

    /// The cap of a console log in bytes (for the VMM).
    /// The share's fd cap given the monitor's hard open-file limit `fd_limit` (the VMM raises
    /// the soft limit to it).
    pub fn share_max_open_files(&self, fd_limit: u64) -> u64 {
        match self.share_max_open_files {
            // A small limit is shared half and half rather than left to the guest at 1.
            0 => fd_limit
                .saturating_sub(MONITOR_FD_RESERVE)
                .max(fd_limit / 2)
                .max(1),
            n => n,
        }
    }

    /// The monitor's open-file limit once it is locked down, given its hard limit `fd_limit`
    /// at boot (from which the share's cap was derived): the share's cap plus
    /// [`MONITOR_FD_RESERVE`], never more than it had (it could not raise it again anyway).
    /// With the derived cap (0) that is the hard limit itself: the cap already left the
    /// reserve out of it.
    pub fn monitor_fd_limit(&self, fd_limit: u64) -> u64 {
        self.share_max_open_files(fd_limit)
            .saturating_add(MONITOR_FD_RESERVE)
            .min(fd_limit)
    }

    pub fn console_max_bytes(&self) -> u64 {
        self.console_log_max_kib.saturating_mul(1024)
    }

    /// Phase timings of one container (written with `keep_logs`).
    pub fn timings_log(&self, id: &str) -> PathBuf {
        let name = bulkhead_protocol::id_file_name(id);
        self.log_dir.join(format!("{name}.timings.json"))
    }
}

/// The VM shape chosen for one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The inputs from the OCI spec that size the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeHints {
    pub memory_limit: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
}

impl VmSize {
    /// Annotations win; then the spec's limits; then the config defaults.
    pub fn choose(
        cfg: &Config,
        annotations: &BTreeMap<String, String>,
        hints: &SizeHints,
    ) -> Result<VmSize, ConfigError> {
        let vcpus = match annotation(annotations, ANNOTATION_VCPUS, 1, MAX_VCPUS)? {
            Some(v) => v,
            None => vcpus_from_quota(hints).unwrap_or(cfg.vcpus),
        };
        let memory_mib = match annotation(annotations, ANNOTATION_MEMORY_MIB, 16, MAX_MEMORY_MIB)? {
            Some(m) => m,
            None => match hints.memory_limit {
                Some(limit) if limit > 0 => {
                    let mib = (limit as u64)
                        .div_ceil(1 << 20)
                        .min(u64::from(MAX_MEMORY_MIB)) as u32;
                    mib.saturating_add(cfg.guest_overhead_mib)
                        .min(MAX_MEMORY_MIB)
                }
                _ => cfg.memory_mib,
            },
        };
        Ok(VmSize { vcpus, memory_mib })
    }

    /// Host cgroup memory limit covering the whole VM process.
    pub fn host_memory_limit(&self, cfg: &Config) -> i64 {
        (i64::from(self.memory_mib) + i64::from(cfg.host_overhead_mib)) << 20
    }
}

fn vcpus_from_quota(h: &SizeHints) -> Option<u32> {
    let quota = h.cpu_quota.filter(|q| *q > 0)? as u64;
    let period = h.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
    Some(quota.div_ceil(period).clamp(1, u64::from(MAX_VCPUS)) as u32)
}

fn annotation(
    a: &BTreeMap<String, String>,
    key: &'static str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, ConfigError> {
    let Some(value) = a.get(key) else {
        return Ok(None);
    };
    match value.trim().parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
        _ => Err(ConfigError::Annotation {
            key,
            value: value.clone(),
            min,
            max,
        }),
    }
}

#[cfg(test)]
mod tests {
    /// The commented settings file setup installs lists every setting with its default.
    #[test]
    fn the_installed_example_lists_every_setting_with_its_default() {
        let text = include_str!("../config.toml");
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        // Every key is there (deny_unknown_fields refuses strays) and has the default value.
        assert_eq!(Config::parse(&uncommented).unwrap(), Config::default());
        let keys = uncommented.lines().count();
        let all = toml::to_string(&Config::default()).unwrap().lines().count();
        assert_eq!(keys, all, "a setting is missing from shim/config.toml");
        // As installed (all commented out) it changes nothing.
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    use super::*;

    #[test]
    fn missing_file_means_defaults() {
        let c = Config::load_from(Path::new("/nonexistent/bulkhead.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.kernel, PathBuf::from("/usr/local/share/bulkhead/vmlinux"));
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "kernel = \"/k\"\nvcpus = 2\nlog_dir = \"/l\"\n").unwrap();
        let c = Config::load_from(&p).unwrap();
        assert_eq!(
            (c.kernel.to_str(), c.vcpus, c.memory_mib),
            (Some("/k"), 2, 128)
        );
        assert_eq!(c.console_log("x"), PathBuf::from("/l/x.console.log"));
        assert!(!c.keep_logs);
        assert!(!c.volumes_allow_set_id);
        assert_eq!(c.share_max_open_files(20_000), 20_000 - MONITOR_FD_RESERVE);
        assert_eq!(c.share_max_open_files(1500), 750);
        assert_eq!(c.share_max_open_files(1), 1);
        assert_eq!(c.monitor_fd_limit(1 << 20), 1 << 20);
        assert_eq!(c.monitor_fd_limit(1500), 1500);
        assert_eq!(c.console_max_bytes(), 1 << 20);
        std::fs::write(
            &p,
            "keep_logs = true\nconsole_log_max_kib = 4\nvolumes_allow_set_id = true\n\
             share_max_open_files = 300\n",
        )
        .unwrap();
        let c = Config::load_from(&p).unwrap();
        assert!(c.keep_logs && c.volumes_allow_set_id);
        assert_eq!(c.share_max_open_files(20_000), 300);
        assert_eq!(c.monitor_fd_limit(20_000), 300 + MONITOR_FD_RESERVE);
        assert_eq!(c.monitor_fd_limit(1000), 1000, "never above the hard limit");
        assert_eq!(c.console_max_bytes(), 4096);
    }

    #[test]
    fn bad_files_are_rejected() {
        assert!(Config::parse("vcpus = 0").is_err());
        assert!(Config::parse("memory_mib = 1").is_err());
        assert!(Config::parse("colour = \"red\"")
            .unwrap_err()
            .contains("colour"));
        assert!(Config::parse("vcpus = \"two\"").is_err());
        for half in ["monitor_uid = 900", "monitor_gid = 900"] {
            assert!(Config::parse(half)
                .unwrap_err()
                .contains("set both or neither"));
        }
        let root = Config::parse("monitor_uid = 0\nmonitor_gid = 900").unwrap_err();
        assert!(root.contains("must not be 0"), "{root}");
        let both = Config::parse("monitor_uid = 900\nmonitor_gid = 901").unwrap();
        assert_eq!(both.monitor_identity(), Some((900, 901)));
        assert_eq!(Config::default().monitor_identity(), None);
    }

    #[test]
    fn sizing_order() {
        let cfg = Config::default();
        let none = BTreeMap::new();
        let s = VmSize::choose(&cfg, &none, &SizeHints::default()).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 1,
                memory_mib: 128
            }
        );
        let hints = SizeHints {
            memory_limit: Some(64 << 20),
            cpu_quota: Some(150_000),
            cpu_period: Some(100_000),
        };
        let s = VmSize::choose(&cfg, &none, &hints).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 2,
                memory_mib: 64 + 64
            }
        );
        let mut ann = BTreeMap::new();
        ann.insert(ANNOTATION_VCPUS.to_string(), "3".to_string());
        ann.insert(ANNOTATION_MEMORY_MIB.to_string(), "512".to_string());
        let s = VmSize::choose(&cfg, &ann, &hints).unwrap();
        assert_eq!(
            s,
            VmSize {
                vcpus: 3,
                memory_mib: 512
            }
        );
        assert_eq!(s.host_memory_limit(&cfg), (512 + 64) << 20);
    }

    #[test]
    fn bad_annotations_are_errors() {
        let cfg = Config::default();
        for bad in ["0", "-1", "lots", "100000"] {
            let mut ann = BTreeMap::new();
            ann.insert(ANNOTATION_VCPUS.to_string(), bad.to_string());
            let err = VmSize::choose(&cfg, &ann, &SizeHints::default()).unwrap_err();
            assert!(err.to_string().contains(ANNOTATION_VCPUS), "{err}");
        }
    }
}

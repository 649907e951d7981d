//! The host cgroup of a container: the sandbox monitor (and so the whole VM) joins
//! `linux.cgroupsPath`, so `docker stats`, OOM accounting and the engine's own cgroup reads see it.
//!
//! Both cgroup v1 (each controller hierarchy found in /proc/self/mountinfo, hybrid included) and
//! v2 are handled. `cgroupsPath` comes in the cgroupfs form (`/a/b`) or, with `--systemd-cgroup`,
//! in systemd's `slice:prefix:name` form, which maps to `<slice path>/<prefix>-<name>.scope` the
//! way systemd lays it out. We write the directories ourselves instead of asking systemd for a
//! transient unit: the hosts we run on need not run systemd as PID 1 (this build machine does
//! not), and the layout is the same either way.
//!
//! Limits cover the VM, not just the container: memory = guest memory + host overhead (stated in
//! the config), pids = the container's limit + [`HOST_PIDS_OVERHEAD`] for the monitor's own
//! threads, CPU quota and shares as given (the vCPUs are the container's CPUs), block I/O weight
//! and throttles as given ([`io`]: the VM's host-side I/O is the container's).

mod io;
pub use io::{IoLimits, Throttle, ThrottleKind};

use std::fs;
use std::path::{Path, PathBuf};

/// Threads of the monitor itself (vCPUs, device loop, stdio relays) added to a pids limit.
pub const HOST_PIDS_OVERHEAD: i64 = 64;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid systemd cgroup path {0:?} (want slice:prefix:name)")]
    SystemdPath(String),
    #[error("invalid cgroup path {0:?}")]
    Path(String),
    #[error("cgroup {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::error::HasKind for CgroupError {
    fn kind(&self) -> crate::error::Kind {
        match self {
            CgroupError::Io { .. } => crate::error::Kind::Internal,
            _ => crate::error::Kind::InvalidArgument,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Turns `cgroupsPath` (or its absence) into a path relative to each hierarchy's root.
pub fn resolve_path(
    cgroups_path: Option<&str>,
    systemd: bool,
    id: &str,
) -> Result<PathBuf, CgroupError> {
    let raw = cgroups_path.unwrap_or("");
    if systemd {
        let raw = if raw.is_empty() {
            format!("system.slice:bulkhead:{id}")
        } else {
            raw.to_string()
        };
        return systemd_path(&raw);
    }
    let rel = if raw.is_empty() {
        id
    } else {
        raw.trim_start_matches('/')
    };
    let path = PathBuf::from(rel);
    let clean = !rel.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !clean {
        return Err(CgroupError::Path(raw.into()));
    }
    Ok(path)
}

/// `system.slice:docker:abc` → `system.slice/docker-abc.scope`; `a-b.slice:p:n` →
/// `a.slice/a-b.slice/p-n.scope`; a name ending in `.slice` is itself the unit.
pub fn systemd_path(raw: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::SystemdPath(raw.into());
    let mut parts = raw.split(':');
    let (slice, prefix, name) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(p), Some(n), None) => (s, p, n),
        _ => return Err(bad()),
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(bad());
    }
    let slice = if slice.is_empty() || slice == "-.slice" {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice).ok_or_else(bad)?;
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Ok(path)
}

/// systemd's slice nesting: `a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// Controllers of a v1 hierarchy (`memory`, `cpu`, `name=systemd`, …); empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

impl Hierarchy {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }
}

/// The cgroup hierarchies mounted on this host, from /proc/self/mountinfo.
pub fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, _src, opts) = (r.next().unwrap_or(""), r.next(), r.next().unwrap_or(""));
        let h = match fstype {
            "cgroup2" => Hierarchy {
                mount: mount.into(),
                controllers: Vec::new(),
                v2: true,
            },
            "cgroup" => {
                let controllers = opts
                    .split(',')
                    .filter(|o| {
                        !matches!(
                            *o,
                            "rw" | "ro"
                                | "relatime"
                                | "noatime"
                                | "nosuid"
                                | "nodev"
                                | "noexec"
                                | "clone_children"
                                | "xattr"
                        ) && !o.starts_with("release_agent=")
                    })
                    .map(str::to_string)
                    .collect();
                Hierarchy {
                    mount: mount.into(),
                    controllers,
                    v2: false,
                }
            }
            _ => continue,
        };
        if !out.iter().any(|o: &Hierarchy| o.mount == h.mount) {
            out.push(h);
        }
    }
    out
}

/// Resource limits for the host group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    pub memory: Option<i64>,
    pub pids: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// Block I/O of the VM's host side (virtio-fs reads and writes, the console): the spec's
    /// weight and per-device throttles, as runc applies them to a container's processes.
    pub io: IoLimits,
}

impl HostLimits {
    /// The one rule, for `create` and `update` alike: the host group holds the whole VM, so a
    /// container memory limit becomes the VM's memory plus the host overhead (the guest itself
    /// enforces the container's limit; a lower host limit would OOM-kill the whole VM for guest
    /// page cache it is entitled to). Pids add the monitor's own threads (in `apply_limits`);
    /// CPU quota and shares apply as given (the vCPUs are the container's CPUs).
    pub fn new(
        res: Option<&oci_spec::runtime::LinuxResources>,
        size: &crate::config::VmSize,
        cfg: &crate::config::Config,
    ) -> HostLimits {
        let memory_limited = res
            .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
            .is_some_and(|l| l > 0);
        let cpu = res.and_then(|r| r.cpu().as_ref());
        HostLimits {
            memory: memory_limited.then(|| size.host_memory_limit(cfg)),
            pids: res
                .and_then(|r| r.pids().as_ref().map(|p| p.limit()))
                .filter(|l| *l > 0),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpu_shares: cpu.and_then(|c| c.shares()),
            io: res
                .and_then(|r| r.block_io().as_ref())
                .map(IoLimits::from_spec)
                .unwrap_or_default(),
        }
    }
}

/// Creates `rel` in every hierarchy (a v2 mount alone is one hierarchy), applies `limits` and
/// moves `pid` in. Returns the directories created, for [`remove`]; on error removes them.
pub fn join(
    hs: &[Hierarchy],
    rel: &Path,
    pid: i32,
    limits: &HostLimits,
) -> Result<Vec<PathBuf>, CgroupError> {
    let mut created = Vec::new();
    let res = join_inner(hs, rel, pid, limits, &mut created);
    if res.is_err() {
        remove(&created);
    }
    res.map(|()| created)
}

fn join_inner(
    hs: &[Hierarchy],
    rel: &Path,
    pid: i32,
    limits: &HostLimits,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    // With a unified v2 root (no v1 controllers) only that one counts; in hybrid mode the
    // controller-less unified mount is joined too, like runc.
    for h in hs {
        let dir = h.mount.join(rel);
        mkdir_levels(h, rel)?;
        created.push(dir.clone());
        apply_limits(h, &dir, limits)?;
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io_err(&procs))?;
    }
    Ok(())
}

fn mkdir_levels(h: &Hierarchy, rel: &Path) -> Result<(), CgroupError> {
    let mut dir = h.mount.clone();
    for comp in rel.components() {
        let parent = dir.clone();
        dir.push(comp);
        if dir.exists() {
            continue;
        }
        if h.v2 {
            // Controllers must be enabled in the parent for the child to have them.
            let ctl = parent.join("cgroup.subtree_control");
            // One at a time: a controller the parent lacks fails only its own write.
            for c in ["+memory", "+pids", "+cpu", "+io"] {
                let _ = fs::write(&ctl, c);
            }
        }
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        if h.has("cpuset") {
            // A v1 cpuset group is unusable until cpus and mems are set: inherit the parent's.
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let v = fs::read_to_string(parent.join(f)).unwrap_or_default();
                let _ = fs::write(dir.join(f), v.trim());
            }
        }
    }
    Ok(())
}

fn apply_limits(h: &Hierarchy, dir: &Path, l: &HostLimits) -> Result<(), CgroupError> {
    let set = |file: &str, value: String| -> Result<(), CgroupError> {
        let p = dir.join(file);
        fs::write(&p, value).map_err(io_err(&p))
    };
    if h.v2 {
        let has = |c: &str| {
            fs::read_to_string(dir.join("cgroup.controllers"))
                .is_ok_and(|s| s.split_whitespace().any(|x| x == c))
        };
        if let (Some(m), true) = (l.memory, has("memory")) {
            set("memory.max", m.to_string())?;
        }
        if let (Some(p), true) = (l.pids, has("pids")) {
            set("pids.max", (p + HOST_PIDS_OVERHEAD).to_string())?;
        }
        if has("cpu") {
            if let Some(q) = l.cpu_quota.filter(|q| *q > 0) {
                set(
                    "cpu.max",
                    format!("{q} {}", l.cpu_period.unwrap_or(100_000)),
                )?;
            }
            if let Some(s) = l.cpu_shares.filter(|s| *s >= 2) {
                set("cpu.weight", (1 + ((s - 2) * 9999) / 262_142).to_string())?;
            }
        }
        if has("io") {
            for t in &l.io.throttles {
                let line = format!("{}:{} {}={}", t.major, t.minor, t.kind.v2_key(), t.rate);
                set("io.max", line)?;
            }
            // runc's blkio weight (10-1000) → io weight (1-10000); kernels without io.weight
            // (no io cost model) have BFQ's or nothing, like v1 below.
            if let Some(w) = l.io.weight {
                let weight = 1 + (u64::from(w).saturating_sub(10) * 9999) / 990;
                if dir.join("io.weight").exists() {
                    set("io.weight", format!("default {weight}"))?;
                } else if dir.join("io.bfq.weight").exists() {
                    set("io.bfq.weight", w.to_string())?;
                }
            }
        }
        return Ok(());
    }
    if let (Some(m), true) = (l.memory, h.has("memory")) {
        set("memory.limit_in_bytes", m.to_string())?;
    }
    if let (Some(p), true) = (l.pids, h.has("pids")) {
        set("pids.max", (p + HOST_PIDS_OVERHEAD).to_string())?;
    }
    if h.has("cpu") {
        if let Some(period) = l.cpu_period {
            set("cpu.cfs_period_us", period.to_string())?;
        }
        if let Some(q) = l.cpu_quota.filter(|q| *q > 0) {
            set("cpu.cfs_quota_us", q.to_string())?;
        }
        if let Some(s) = l.cpu_shares {
            set("cpu.shares", s.to_string())?;
        }
    }
    if h.has("blkio") {
        for t in &l.io.throttles {
            set(
                t.kind.v1_file(),
                format!("{}:{} {}", t.major, t.minor, t.rate),
            )?;
        }
        // Only schedulers with a weight (CFQ, BFQ) have the file; without, like Docker, the
        // weight cannot apply (Docker already warns when it creates the container).
        if let Some(w) = l.io.weight {
            for file in ["blkio.weight", "blkio.bfq.weight"] {
                if dir.join(file).exists() {
                    set(file, w.to_string())?;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Re-applies limits to already created directories (`bulkhead update`).
pub fn update(dirs: &[PathBuf], limits: &HostLimits) -> Result<(), CgroupError> {
    for h in hierarchies()? {
        for d in dirs.iter().filter(|d| d.starts_with(&h.mount)) {
            apply_limits(&h, d, limits)?;
        }
    }
    Ok(())
}

/// Kills every process left in the directories made by [`join`] (cgroup v2's `cgroup.kill`,
/// where the kernel has it; a v1 hierarchy has no such file and is skipped).
pub fn kill_all(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = fs::write(d.join("cgroup.kill"), "1");
    }
}

/// Removes the leaf directories made by [`join`] (they must be empty: the monitor is gone).
/// Retries briefly because an exiting process leaves its cgroup a moment after it is reaped.
pub fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        for _ in 0..50 {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// Host-side statistics of the VM's group, in the shape of runc's `events --stats` data.
pub fn stats(dirs: &[PathBuf]) -> crate::stats::Stats {
    let read = |d: &PathBuf, f: &str| {
        fs::read_to_string(d.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let mut mem_usage = None;
    let mut mem_limit = None;
    let mut cpu_total = None;
    let mut pids = None;
    for d in dirs {
        mem_usage = mem_usage
            .or_else(|| read(d, "memory.usage_in_bytes"))
            .or_else(|| read(d, "memory.current"));
        mem_limit = mem_limit
            .or_else(|| read(d, "memory.limit_in_bytes"))
            .or_else(|| read(d, "memory.max"));
        cpu_total = cpu_total.or_else(|| read(d, "cpuacct.usage"));
        if cpu_total.is_none() {
            cpu_total = fs::read_to_string(d.join("cpu.stat")).ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us * 1000)
            });
        }
        pids = pids.or_else(|| read(d, "pids.current"));
    }
    use crate::stats::*;
    Stats {
        cpu: Cpu {
            usage: CpuUsage {
                total: cpu_total.unwrap_or(0),
            },
        },
        memory: Memory {
            usage: MemoryUsage {
                usage: mem_usage.unwrap_or(0),
                limit: mem_limit.unwrap_or(0),
            },
        },
        pids: Pids {
            current: pids.unwrap_or(0),
        },
        guest: None,
    }
}

/// Default mount point, for messages and tests.
pub fn cgroup_root() -> &'static Path {
    Path::new(CGROUP_ROOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths() {
        assert_eq!(
            resolve_path(Some("/docker/abc"), false, "x").unwrap(),
            PathBuf::from("docker/abc")
        );
        assert_eq!(
            resolve_path(Some("libpod_parent/c"), false, "x").unwrap(),
            PathBuf::from("libpod_parent/c")
        );
        assert_eq!(
            resolve_path(None, false, "c1").unwrap(),
            PathBuf::from("c1")
        );
        for bad in ["/a/../../etc", "/", "//"] {
            assert!(resolve_path(Some(bad), false, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn systemd_paths() {
        let p = |s| systemd_path(s).unwrap();
        assert_eq!(
            p("system.slice:docker:abc"),
            PathBuf::from("system.slice/docker-abc.scope")
        );
        assert_eq!(
            p("machine.slice:libpod:abc"),
            PathBuf::from("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            p("user-1000.slice:cri:x"),
            PathBuf::from("user.slice/user-1000.slice/cri-x.scope")
        );
        assert_eq!(
            p(":docker:abc"),
            PathBuf::from("system.slice/docker-abc.scope")
        );
        assert_eq!(
            p("a-b-c.slice::n"),
            PathBuf::from("a.slice/a-b.slice/a-b-c.slice/n.scope")
        );
        assert_eq!(
            p("system.slice:p:inner.slice"),
            PathBuf::from("system.slice/inner.slice")
        );
        assert_eq!(
            resolve_path(None, true, "c1").unwrap(),
            PathBuf::from("system.slice/bulkhead-c1.scope")
        );
        for bad in [
            "/docker/abc",
            "a:b",
            "nosuffix:p:n",
            "a--b.slice:p:n",
            "s.slice:p:",
            "s.slice:p:a/b",
        ] {
            assert!(systemd_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_v1_hybrid() {
        let text = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let hs = parse_mountinfo(text);
        assert_eq!(hs.len(), 4);
        assert!(hs[0].v2);
        assert_eq!(hs[1].controllers, vec!["name=systemd"]);
        assert_eq!(hs[2].controllers, vec!["cpu", "cpuacct"]);
        assert!(hs[3].has("memory"));
    }

    /// cgroup v2 files get the VM's limits (this CI host has v1 controllers only, so the v2
    /// writes are checked on a directory laid out like a v2 group).
    #[test]
    fn v2_limits_are_written_in_v2_files() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let h = Hierarchy {
            mount: d.path().to_path_buf(),
            controllers: Vec::new(),
            v2: true,
        };
        let limits = HostLimits {
            memory: Some(256 << 20),
            pids: Some(10),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(1024),
            io: IoLimits {
                weight: Some(500),
                throttles: vec![
                    Throttle {
                        kind: ThrottleKind::ReadBps,
                        major: 253,
                        minor: 0,
                        rate: 1 << 20,
                    },
                    Throttle {
                        kind: ThrottleKind::WriteIops,
                        major: 253,
                        minor: 0,
                        rate: 100,
                    },
                ],
            },
        };
        fs::write(d.path().join("io.weight"), "default 100\n").unwrap();
        apply_limits(&h, d.path(), &limits).unwrap();
        let read = |f: &str| fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("pids.max"), (10 + HOST_PIDS_OVERHEAD).to_string());
        assert_eq!(read("cpu.max"), "50000 100000");
        // runc's shares→weight conversion: 1024 shares is weight 39.
        assert_eq!(read("cpu.weight"), "39");
        // io.max takes one key per write (the kernel merges them); a file stands in here, so
        // it holds the last write.
        assert_eq!(read("io.max"), "253:0 wiops=100");
        assert_eq!(read("io.weight"), "default 4950");
    }

    /// The spec's blockIO reaches cgroup v1's blkio files (this host's kind), every device and
    /// kind in its own file.
    #[test]
    fn blkio_limits_from_the_spec_are_written_in_v1_files() {
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            mount: d.path().to_path_buf(),
            controllers: vec!["blkio".to_string()],
            v2: false,
        };
        let res: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "blockIO": {
                "weight": 300,
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 2097152}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 50}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 60}]
            }
        }))
        .unwrap();
        let cfg = crate::config::Config::default();
        let size = crate::config::VmSize {
            vcpus: 1,
            memory_mib: 128,
        };
        let limits = HostLimits::new(Some(&res), &size, &cfg);
        fs::write(d.path().join("blkio.weight"), "500\n").unwrap();
        apply_limits(&h, d.path(), &limits).unwrap();
        let read = |f: &str| fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(read("blkio.throttle.read_bps_device"), "8:0 1048576");
        assert_eq!(read("blkio.throttle.write_bps_device"), "8:16 2097152");
        assert_eq!(read("blkio.throttle.read_iops_device"), "8:0 50");
        assert_eq!(read("blkio.throttle.write_iops_device"), "8:0 60");
        assert_eq!(read("blkio.weight"), "300");
    }

    /// `create` and `update` share one rule: a memory limit becomes the VM's memory plus the
    /// host overhead, whatever the limit, since the guest enforces the limit itself.
    #[test]
    fn host_limits_cover_the_whole_vm() {
        let cfg = crate::config::Config::default();
        let size = crate::config::VmSize {
            vcpus: 2,
            memory_mib: 512,
        };
        let res: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 64 << 20},
            "pids": {"limit": 20},
            "cpu": {"quota": 200000, "period": 100000}
        }))
        .unwrap();
        let l = HostLimits::new(Some(&res), &size, &cfg);
        assert_eq!(
            l.memory,
            Some((512 + i64::from(cfg.host_overhead_mib)) << 20)
        );
        assert_eq!(l.pids, Some(20));
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(200000), Some(100000)));
        assert_eq!(HostLimits::new(None, &size, &cfg), HostLimits::default());
    }

    /// Our own cgroup in hierarchy `h`, from /proc/self/cgroup (tests nest under it so they stay
    /// inside whatever limits the test runner is under).
    fn own_path(h: &Hierarchy) -> PathBuf {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
            let ctls: Vec<String> = ctl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            let same = if h.v2 {
                ctls.is_empty()
            } else {
                !ctls.is_empty() && ctls.iter().all(|c| h.has(c))
            };
            if same {
                return PathBuf::from(path.trim_start_matches('/'));
            }
        }
        PathBuf::new()
    }

    /// Real cgroups on this host: create, limit, join a child process, stats, remove.
    #[test]
    fn join_limit_and_remove_on_this_host() {
        if !bulkhead_test_support::require(&[bulkhead_test_support::Need::Root]) {
            return;
        }
        let hs = hierarchies().expect("this host's cgroup hierarchies");
        assert!(!hs.is_empty(), "no cgroup hierarchy on this host");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let leaf = PathBuf::from(format!("bulkhead-test-{}/c", std::process::id()));
        let disk = bulkhead_test_support::a_disk();
        let limits = HostLimits {
            memory: Some(256 << 20),
            pids: Some(10),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            // A real disk, so the kernel checks the device and the format.
            io: IoLimits {
                weight: None,
                throttles: vec![Throttle {
                    kind: ThrottleKind::ReadBps,
                    major: disk.0,
                    minor: disk.1,
                    rate: 10 << 20,
                }],
            },
        };
        let mut all = Vec::new();
        for h in &hs {
            let rel = own_path(h).join(&leaf);
            let dirs = join(std::slice::from_ref(h), &rel, child.id() as i32, &limits).unwrap();
            assert_eq!(dirs, vec![h.mount.join(&rel)]);
            let procs = fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == child.id().to_string()),
                "{}",
                dirs[0].display()
            );
            if h.has("memory") {
                let v = fs::read_to_string(dirs[0].join("memory.limit_in_bytes")).unwrap();
                assert_eq!(v.trim(), (256u64 << 20).to_string());
            }
            if h.has("pids") {
                let v = fs::read_to_string(dirs[0].join("pids.max")).unwrap();
                assert_eq!(v.trim(), (10 + HOST_PIDS_OVERHEAD).to_string());
            }
            let want = format!("{}:{} {}", disk.0, disk.1, 10 << 20);
            if h.has("blkio") {
                let v = fs::read_to_string(dirs[0].join("blkio.throttle.read_bps_device")).unwrap();
                assert_eq!(v.trim(), want);
            }
            if h.v2 && dirs[0].join("io.max").exists() {
                let v = fs::read_to_string(dirs[0].join("io.max")).unwrap();
                assert!(
                    v.starts_with(&format!("{}:{} rbps={}", disk.0, disk.1, 10 << 20)),
                    "{v}"
                );
            }
            all.extend(dirs);
        }
        let s = stats(&all);
        assert!(s.pids.current >= 1);
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&all);
        for d in &all {
            assert!(!d.exists(), "{}", d.display());
            remove(&[d.parent().unwrap().to_path_buf()]);
        }
    }
}

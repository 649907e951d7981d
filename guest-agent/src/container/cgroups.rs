//! The container's cgroup v2 group inside the guest: creation under the agent's own cgroup,
//! `linux.resources`, the freezer, `cgroup.kill`, statistics and removal.
//!
//! Values are converted from the OCI (cgroup v1 flavoured) fields the way runc converts them
//! for cgroup v2, so `docker run -m/--cpus/--pids-limit` mean the same as under runc.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::device_filter;

/// Controllers we enable for containers when the parent offers them.
const CONTROLLERS: [&str; 7] = ["cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma"];

/// How long freezing or emptying a group may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup2 is not mounted")]
    NotMounted,
    #[error("read {0}")]
    Read(String, #[source] std::io::Error),
    #[error("write {0}")]
    Write(String, #[source] std::io::Error),
    #[error("create {0}")]
    Create(String, #[source] std::io::Error),
    #[error("remove {0}")]
    Remove(String, #[source] std::io::Error),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("resource key {0:?} is not a cgroup file")]
    Key(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{0}")]
    Bpf(&'static str, #[source] nix::errno::Errno),
}

/// Limit value meaning "no limit" (cgroup's `max`), as the agent protocol reports it.
pub const NO_LIMIT: u64 = u64::MAX;

/// The container's counters; `None` where the controller is not enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// Per device, from `io.stat`.
    pub io: Vec<IoStats>,
}

/// `cpu.stat` (microseconds); the throttling counters are 0 without the cpu controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// The memory controller's files; limits are [`NO_LIMIT`] when unlimited, swap numbers 0
/// without swap accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// `memory.current`.
    pub usage: u64,
    /// `memory.max`.
    pub limit: u64,
    /// `memory.peak` (Linux 5.19+; else 0).
    pub max_usage: u64,
    pub swap_usage: u64,
    pub swap_limit: u64,
    /// `oom` and `oom_kill` of `memory.events`.
    pub oom_events: u64,
    pub oom_kill_events: u64,
    /// Every line of `memory.stat`.
    pub stat: std::collections::BTreeMap<String, u64>,
}

/// `pids.current` and `pids.max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    pub limit: u64,
}

/// One device of `io.stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ios: u64,
    pub write_ios: u64,
}

/// `key value` lines (cpu.stat, memory.stat, memory.events) as a map.
fn keyed(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single number, or `max` as [`NO_LIMIT`].
fn number(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(NO_LIMIT),
        v => v.parse().ok(),
    }
}

/// `io.stat` lines: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0`.
fn io_stats(text: &str) -> Vec<IoStats> {
    text.lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut s = IoStats {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..IoStats::default()
            };
            for f in fields {
                let Some((k, v)) = f.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.read_bytes = v,
                    "wbytes" => s.write_bytes = v,
                    "rios" => s.read_ios = v,
                    "wios" => s.write_ios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

/// A container's group.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: OwnedFd,
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| CgroupError::Read(path.display().to_string(), e))
}

/// Writes an existing control file. Never with `O_CREAT`: cgroupfs cannot create files, and a
/// missing one (e.g. `memory.swap.max` in a kernel without swap) must read as "not found", which
/// is what the callers match on, not the `EACCES` that creating it would give.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| CgroupError::Write(path.display().to_string(), e))
}

/// Where cgroup2 is mounted, from `/proc/self/mountinfo`.
fn mount_point() -> Result<PathBuf, CgroupError> {
    let info = read(Path::new("/proc/self/mountinfo"))?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split(' ').next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(unescape(left.split(' ').nth(4)?)))
        })
        .ok_or(CgroupError::NotMounted)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(u8::is_ascii_digit));
        match oct.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The agent's own group: cgroup2 mount + the `0::` line of `/proc/self/cgroup`.
fn own_group() -> Result<PathBuf, CgroupError> {
    let mount = mount_point()?;
    let own = read(Path::new("/proc/self/cgroup"))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Ok(mount.join(rel))
}

/// The agent's group with the container controllers enabled for its children; done once per
/// agent process (the agent does not move between groups), which saves a dozen file reads on
/// every create.
fn parent_group() -> Result<&'static Path, CgroupError> {
    static PARENT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = PARENT.get() {
        return Ok(p);
    }
    let parent = own_group()?;
    enable_controllers(&parent)?;
    Ok(PARENT.get_or_init(|| parent))
}

/// Finds the agent's group and enables the controllers for containers, and loads the device
/// programs of the engines' default rules, before any container exists: a guest restored from a
/// template then starts with this done (on PVM hosts ~0.1 s of emulated guest-kernel work for
/// the former and ~0.3 s for Docker's program, which every create paid).
pub fn prepare() -> Result<(), CgroupError> {
    parent_group()?;
    device_filter::preload()
}

fn enable_controllers(parent: &Path) -> Result<(), CgroupError> {
    let available = read(&parent.join("cgroup.controllers"))?;
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if !enable.is_empty() {
        // EBUSY: the agent's group has processes and is not the root; then children get
        // no controllers and resource writes fail with a clear "write <file>" error.
        match write(&parent.join("cgroup.subtree_control"), &enable.join(" ")) {
            Err(CgroupError::Write(_, e)) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => other?,
        }
    }
    Ok(())
}

impl Cgroup {
    /// Creates `<agent's group>/<id's file name>`, enabling the controllers the agent's group
    /// offers.
    pub fn create(id: &str) -> Result<Cgroup, CgroupError> {
        let path = parent_group()?.join(&*bulkhead_protocol::id_file_name(id));
        fs::create_dir(&path).map_err(|e| CgroupError::Create(path.display().to_string(), e))?;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path);
        match dir {
            Ok(dir) => Ok(Cgroup {
                path,
                dir: dir.into(),
            }),
            Err(e) => {
                let _ = fs::remove_dir(&path);
                Err(CgroupError::Create(path.display().to_string(), e))
            }
        }
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the directory, for `CLONE_INTO_CGROUP`.
    pub fn fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// Writes `linux.resources`; device rules become the group's device program.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let devices = device_filter::program(resources.devices().as_deref().unwrap_or_default())?;
        for (file, value) in writes(resources)? {
            match write(&self.path.join(&file), &value) {
                // Without swap accounting (no swap in the guest) there is no swap to limit.
                Err(CgroupError::Write(_, e))
                    if file == "memory.swap.max" && e.kind() == ErrorKind::NotFound => {}
                other => other?,
            }
        }
        if let Some(prog) = devices {
            device_filter::attach(self.fd(), &prog)?;
        }
        Ok(())
    }

    /// Pids in the group (as seen from the agent).
    pub fn procs(&self) -> Result<Vec<Pid>, CgroupError> {
        let text = read(&self.path.join("cgroup.procs"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .map(Pid::from_raw)
            .collect())
    }

    fn events_say(&self, key: &str) -> Result<bool, CgroupError> {
        let events = read(&self.path.join("cgroup.events"))?;
        Ok(events.lines().any(|l| l == key))
    }

    fn wait_until(&self, key: &str, what: &'static str) -> Result<(), CgroupError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut nap = Duration::from_millis(1);
        while !self.events_say(key)? {
            if Instant::now() > deadline {
                return Err(CgroupError::Timeout(what));
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Freezes or thaws the group and waits until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        write(
            &self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        if frozen {
            self.wait_until("frozen 1", "freeze")
        } else {
            self.wait_until("frozen 0", "thaw")
        }
    }

    /// True while the group is frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        Ok(read(&self.path.join("cgroup.freeze"))?.trim() == "1")
    }

    /// SIGKILLs everything in the group (`cgroup.kill`, Linux 5.14+; else one by one, frozen).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match write(&self.path.join("cgroup.kill"), "1") {
            Err(CgroupError::Write(_, e)) if e.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
        self.signal_each(libc::SIGKILL)
    }

    /// Sends `sig` to every process, with the group frozen meanwhile so none can fork away.
    pub fn signal_each(&self, sig: libc::c_int) -> Result<(), CgroupError> {
        let was_frozen = self.is_frozen()?;
        if !was_frozen {
            self.freeze(true)?;
        }
        let procs = self.procs();
        if let Ok(procs) = &procs {
            for pid in procs {
                // SAFETY: kill takes plain integers; a pid that just exited gives ESRCH.
                unsafe { libc::kill(pid.as_raw(), sig) };
            }
        }
        if !was_frozen {
            self.freeze(false)?;
        }
        procs.map(drop)
    }

    /// Memory, CPU, pid and I/O counters.
    pub fn stats(&self) -> Stats {
        let file = |name: &str| fs::read_to_string(self.path.join(name)).ok();
        let cpu = keyed(&file("cpu.stat").unwrap_or_default());
        let get =
            |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let memory = file("memory.current").and_then(|cur| {
            let events = keyed(&file("memory.events").unwrap_or_default());
            Some(MemoryStats {
                usage: number(&cur)?,
                limit: file("memory.max")
                    .and_then(|v| number(&v))
                    .unwrap_or(NO_LIMIT),
                max_usage: file("memory.peak").and_then(|v| number(&v)).unwrap_or(0),
                swap_usage: file("memory.swap.current")
                    .and_then(|v| number(&v))
                    .unwrap_or(0),
                swap_limit: file("memory.swap.max")
                    .and_then(|v| number(&v))
                    .unwrap_or(0),
                oom_events: get(&events, "oom"),
                oom_kill_events: get(&events, "oom_kill"),
                stat: keyed(&file("memory.stat").unwrap_or_default()),
            })
        });
        let pids = file("pids.current").and_then(|cur| {
            Some(PidsStats {
                current: number(&cur)?,
                limit: file("pids.max")
                    .and_then(|v| number(&v))
                    .unwrap_or(NO_LIMIT),
            })
        });
        Stats {
            cpu: CpuStats {
                usage_usec: get(&cpu, "usage_usec"),
                user_usec: get(&cpu, "user_usec"),
                system_usec: get(&cpu, "system_usec"),
                nr_periods: get(&cpu, "nr_periods"),
                nr_throttled: get(&cpu, "nr_throttled"),
                throttled_usec: get(&cpu, "throttled_usec"),
            },
            memory,
            pids,
            io: io_stats(&file("io.stat").unwrap_or_default()),
        }
    }

    /// Removes the group once its processes are gone (killing them first).
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        self.wait_until("populated 0", "processes to exit")?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(CgroupError::Remove(self.path.display().to_string(), e)),
            }
        }
    }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// runc's cgroup v1 → v2 swap conversion: v1 limits memory+swap, v2 swap alone.
fn swap_max(swap: i64, memory: i64) -> Result<Option<String>, CgroupError> {
    if memory == -1 && swap == 0 {
        return Ok(Some("max".into()));
    }
    match swap {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        _ if memory <= 0 => Err(CgroupError::Invalid("swap limit needs a memory limit")),
        _ if swap < memory => Err(CgroupError::Invalid(
            "memory+swap limit should be >= memory limit",
        )),
        _ => Ok(Some((swap - memory).to_string())),
    }
}

/// The (file, value) writes for `r`, in order.
pub fn writes(r: &LinuxResources) -> Result<Vec<(String, String)>, CgroupError> {
    let mut out: Vec<(String, String)> = Vec::new();
    if let Some(m) = r.memory() {
        let mem = m.limit().unwrap_or(0);
        if let Some(swap) = swap_max(m.swap().unwrap_or(0), mem)? {
            out.push(("memory.swap.max".into(), swap));
        }
        if mem != 0 {
            out.push(("memory.max".into(), limit(mem)));
        }
        if let Some(low) = m.reservation().filter(|v| *v != 0) {
            out.push(("memory.low".into(), limit(low)));
        }
        if m.swappiness().is_some() {
            return Err(CgroupError::Invalid(
                "memory swappiness is not supported by cgroup v2",
            ));
        }
        if m.disable_oom_killer() == Some(true) {
            return Err(CgroupError::Invalid(
                "disabling the OOM killer is not supported by cgroup v2",
            ));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            let shares = shares.clamp(2, 262_144);
            out.push((
                "cpu.weight".into(),
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            ));
        }
        let quota = c.quota().unwrap_or(0);
        let period = c.period().unwrap_or(0);
        if quota != 0 || period != 0 {
            let mut value = if quota > 0 {
                quota.to_string()
            } else {
                "max".into()
            };
            if period != 0 {
                value.push_str(&format!(" {period}"));
            }
            out.push(("cpu.max".into(), value));
        }
        if let Some(burst) = c.burst() {
            out.push(("cpu.max.burst".into(), burst.to_string()));
        }
        if let Some(idle) = c.idle() {
            out.push(("cpu.idle".into(), idle.to_string()));
        }
        if c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(CgroupError::Invalid(
                "realtime cpu limits are not supported by cgroup v2",
            ));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            out.push(("cpuset.cpus".into(), cpus.into()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            out.push(("cpuset.mems".into(), mems.into()));
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() != 0 {
            out.push(("pids.max".into(), limit(p.limit())));
        }
    }
    // blockIO is not the guest's: its devices are the host's (`major:minor` of host disks, which
    // the guest does not have; its files are virtio-fs), so the host applies it to the VM's
    // host group (shim/src/cgroups/io.rs) and the guest writes nothing for it.
    for h in r.hugepage_limits().iter().flatten() {
        if h.page_size().is_empty() || !h.page_size().bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CgroupError::Key(h.page_size().clone()));
        }
        out.push((format!("hugetlb.{}.max", h.page_size()), limit(h.limit())));
    }
    if r.network().is_some() {
        return Err(CgroupError::Invalid(
            "network classes are not supported by cgroup v2",
        ));
    }
    for (dev, limits) in r.rdma().iter().flatten() {
        let mut value = dev.clone();
        if let Some(h) = limits.hca_handles() {
            value.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = limits.hca_objects() {
            value.push_str(&format!(" hca_object={o}"));
        }
        out.push(("rdma.max".into(), value));
    }
    if let Some(unified) = r.unified() {
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for key in keys {
            if key.is_empty() || key.contains('/') || key.starts_with('.') {
                return Err(CgroupError::Key(key.clone()));
            }
            out.push((key.clone(), unified.get(key).cloned().unwrap_or_default()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn docker_limits_convert_like_runc_and_block_io_is_left_to_the_host() {
        let r = res(
            r#"{"memory":{"limit":268435456,"swap":536870912,"reservation":0},
                "cpu":{"shares":1024,"quota":150000,"period":100000,"cpus":"0-1"},
                "pids":{"limit":100},
                "blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]},
                "hugepageLimits":[{"pageSize":"2MB","limit":0}],
                "unified":{"memory.high":"200000000"}}"#,
        );
        let w = writes(&r).unwrap();
        let want = [
            ("memory.swap.max", "268435456"),
            ("memory.max", "268435456"),
            ("cpu.weight", "39"),
            ("cpu.max", "150000 100000"),
            ("cpuset.cpus", "0-1"),
            ("pids.max", "100"),
            ("hugetlb.2MB.max", "0"),
            ("memory.high", "200000000"),
        ];
        let got: Vec<(&str, &str)> = w.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unlimited_and_invalid_values() {
        let w = writes(&res(
            r#"{"memory":{"limit":-1},"cpu":{"quota":-1,"period":50000},"pids":{"limit":-1}}"#,
        ))
        .unwrap();
        let got: Vec<(&str, &str)> = w.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("memory.swap.max", "max"),
                ("memory.max", "max"),
                ("cpu.max", "max 50000"),
                ("pids.max", "max")
            ]
        );
        for bad in [
            r#"{"memory":{"swap":100}}"#,
            r#"{"memory":{"limit":200,"swap":100}}"#,
            r#"{"cpu":{"realtimeRuntime":5}}"#,
            r#"{"unified":{"../x":"1"}}"#,
            r#"{"hugepageLimits":[{"pageSize":"../2MB","limit":1}]}"#,
        ] {
            assert!(writes(&res(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn stat_files_parse() {
        let m = keyed("usage_usec 120\nuser_usec 100\nbad\nsystem_usec x\n");
        assert_eq!(m.get("usage_usec"), Some(&120));
        assert_eq!(m.get("system_usec"), None);
        assert_eq!(number("max\n"), Some(NO_LIMIT));
        assert_eq!(number("42\n"), Some(42));
        let io = io_stats("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\nbad line\n");
        assert_eq!(
            io,
            [IoStats {
                major: 8,
                minor: 0,
                read_bytes: 1,
                write_bytes: 2,
                read_ios: 3,
                write_ios: 4
            }]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\0"), r"/a\0");
    }
}

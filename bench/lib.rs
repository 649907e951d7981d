//! Helpers shared by the benchmarks: clocks, medians, and what `/proc` says about a process.
//!
//! Benchmarks here print ratios against a reference (QEMU, runc) measured in the same run on the
//! same machine, because absolute times on PVM-backed KVM say more about the host than about us.

use std::path::PathBuf;

/// Nanoseconds on CLOCK_MONOTONIC (the clock `bulkhead-vmm` stamps its first `KVM_RUN` with).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// A `kB` field (e.g. `VmRSS`) of `/proc/<pid>/status`, in bytes.
pub fn status_field_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kb_field(&text, field)
}

fn parse_kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// One mapping from `/proc/<pid>/smaps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// First address after it.
    pub end: u64,
    /// Resident bytes.
    pub rss: u64,
    /// The path or `[name]` column, empty for anonymous memory.
    pub name: String,
}

impl Vma {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// The mappings of process `pid`.
pub fn smaps(pid: u32) -> Option<Vec<Vma>> {
    Some(parse_smaps(
        &std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?,
    ))
}

fn parse_smaps(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        let Some(first) = cols.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let name = cols.nth(4).unwrap_or("").to_string();
                vmas.push(Vma {
                    start,
                    end,
                    rss: 0,
                    name,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(vma), Some(kb)) = (vmas.last_mut(), cols.next()) {
                vma.rss = kb.parse::<u64>().unwrap_or(0) * 1024;
            }
        }
    }
    vmas
}

/// Summed user and system CPU time of all waited-for children so far, in seconds.
pub fn children_cpu_seconds() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (secs(u.user_time()), secs(u.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// A workspace binary next to the running benchmark (`target/<profile>/<name>`), if built.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.exists().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn parses_status_and_smaps() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\nVmHWM:\t 4096 kB\n";
        assert_eq!(parse_kb_field(status, "VmRSS"), Some(2 << 20));
        assert_eq!(parse_kb_field(status, "VmSwap"), None);
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:                9000 kB
55d000000000-55d000001000 r-xp 00000000 08:01 1234   /usr/bin/bulkhead-vmm
Size:                  4 kB
Rss:                   4 kB
";
        let v = parse_smaps(smaps);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].start, 0x7f00_0000_0000);
        assert_eq!(v[0].size(), 128 << 20);
        assert_eq!(v[0].rss, 9000 * 1024);
        assert_eq!(v[0].name, "");
        assert_eq!(v[1].name, "/usr/bin/bulkhead-vmm");
        assert_eq!(v[1].rss, 4096);
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(status_field_bytes(pid, "VmRSS").unwrap() > 0);
        assert!(!smaps(pid).unwrap().is_empty());
    }
}

//! `bulkhead update`: new resource limits, applied to the host group (here, with the rule
//! `create` used: the locked-down monitor sees its cgroup read-only, so a guest that took it
//! over can neither raise its own host limits nor keep them from being lowered) and then in
//! the guest (by the monitor).

use std::io::Read;

use oci_spec::runtime::{LinuxPids, LinuxResources};

use super::{io, usage, Ctx, Result};
use crate::cli::UpdateArgs;
use crate::control::Request;
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &UpdateArgs) -> Result<()> {
    let st = ctx.check(&args.id, Status::can_inspect)?;
    let resources = resources(args)?;
    // The host group first, whatever the monitor then answers (or if it never does): the
    // VM's size and cgroup directories come from `state.json`, which the monitor wrote before
    // its lock-down and cannot change since. Its memory limit covers the VM's fixed size, so
    // it never squeezes the guest before the guest has shrunk.
    let config = crate::config::Config::load()?;
    let size = st.vm.unwrap_or(crate::config::VmSize {
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
    });
    let limits = crate::cgroups::HostLimits::new(Some(&resources), &size, &config);
    crate::cgroups::update(&st.cgroup_dirs, &limits)?;
    ctx.call(
        &args.id,
        &Request::Update {
            resources: Box::new(resources),
        },
    )?;
    Ok(())
}

/// The `linux.resources` from --resources (file or `-`) with flag overrides on top.
pub fn resources(args: &UpdateArgs) -> Result<LinuxResources> {
    let mut r = match args.resources.as_deref() {
        None => LinuxResources::default(),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(io("read resources from stdin"))?;
            parse(&s)?
        }
        Some(path) => parse(&std::fs::read_to_string(path).map_err(io(format!("read {path}")))?)?,
    };
    let bytes = |v: &Option<String>| v.as_deref().map(parse_bytes).transpose();
    let (limit, reservation, swap) = (
        bytes(&args.memory)?,
        bytes(&args.memory_reservation)?,
        bytes(&args.memory_swap)?,
    );
    if limit.is_some() || reservation.is_some() || swap.is_some() {
        let mut m = r.memory().unwrap_or_default();
        if limit.is_some() {
            m.set_limit(limit);
        }
        if reservation.is_some() {
            m.set_reservation(reservation);
        }
        if swap.is_some() {
            m.set_swap(swap);
        }
        r.set_memory(Some(m));
    }
    let cpu_flags = args.cpu_quota.is_some()
        || args.cpu_period.is_some()
        || args.cpu_share.is_some()
        || args.cpuset_cpus.is_some()
        || args.cpuset_mems.is_some();
    if cpu_flags {
        let mut c = r.cpu().clone().unwrap_or_default();
        if args.cpu_quota.is_some() {
            c.set_quota(args.cpu_quota);
        }
        if args.cpu_period.is_some() {
            c.set_period(args.cpu_period);
        }
        if args.cpu_share.is_some() {
            c.set_shares(args.cpu_share);
        }
        if args.cpuset_cpus.is_some() {
            c.set_cpus(args.cpuset_cpus.clone());
        }
        if args.cpuset_mems.is_some() {
            c.set_mems(args.cpuset_mems.clone());
        }
        r.set_cpu(Some(c));
    }
    if let Some(limit) = args.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(limit);
        r.set_pids(Some(p));
    }
    if let Some(w) = args.blkio_weight {
        let mut b = r.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        r.set_block_io(Some(b));
    }
    Ok(r)
}

fn parse(s: &str) -> Result<LinuxResources> {
    serde_json::from_str(s).map_err(|e| usage(format!("resources: {e}")))
}

/// `64m`, `1g`, `1024`, `-1` → bytes (runc's units, powers of 1024).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let bad = || usage(format!("invalid size {s:?}"));
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(0.0..9.0e18).contains(&n) {
        return Err(bad());
    }
    Ok((n * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r.json");
        std::fs::write(&f, r#"{"memory":{"limit":1},"pids":{"limit":5}}"#).unwrap();
        let args = UpdateArgs {
            id: "c".into(),
            resources: Some(f.display().to_string()),
            memory: Some("64m".into()),
            memory_reservation: None,
            memory_swap: None,
            cpu_quota: Some(50000),
            cpu_period: None,
            cpu_share: None,
            cpuset_cpus: None,
            cpuset_mems: None,
            pids_limit: None,
            blkio_weight: None,
        };
        let r = resources(&args).unwrap();
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(5));
        assert_eq!(r.cpu().as_ref().and_then(|c| c.quota()), Some(50000));
        // Not a LinuxResources object: refused before it reaches the guest.
        std::fs::write(&f, r#"{"memory":{"limit":"lots"}}"#).unwrap();
        assert!(resources(&args).is_err());
    }
}

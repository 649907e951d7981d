//! `bulkhead update`: new resource limits, applied in the guest and to the host group (which
//! keeps its stated overheads on top).

use std::io::Read;

use serde_json::{json, Value};

use super::{io, usage, Ctx, Result};
use crate::cgroups::HostLimits;
use crate::cli::UpdateArgs;
use crate::control::{Client, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &UpdateArgs) -> Result<()> {
    let (st, status) = ctx.load(&args.id)?;
    if status == Status::Stopped {
        return Err(usage("container not running"));
    }
    let resources = resources(args)?;
    Client::connect(&ctx.store.dir(&args.id)?)?.call(&Request::Update {
        resources: resources.clone(),
    })?;
    let config = crate::config::Config::load()?;
    let limits = host_limits(&resources, &config);
    crate::cgroups::update(&st.cgroup_dirs, &limits)?;
    Ok(())
}

/// The `linux.resources` JSON from --resources (file or `-`) with flag overrides on top.
pub fn resources(args: &UpdateArgs) -> Result<Value> {
    let mut r = match args.resources.as_deref() {
        None => json!({}),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(io("read resources from stdin"))?;
            parse(&s)?
        }
        Some(path) => parse(&std::fs::read_to_string(path).map_err(io(format!("read {path}")))?)?,
    };
    let mut set = |ptr: &str, v: Value| {
        let (obj, key) = ptr.split_once('/').unwrap_or((ptr, ""));
        if !r.get(obj).is_some_and(Value::is_object) {
            r[obj] = json!({});
        }
        r[obj][key] = v;
    };
    if let Some(m) = &args.memory {
        set("memory/limit", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.memory_reservation {
        set("memory/reservation", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.memory_swap {
        set("memory/swap", json!(parse_bytes(m)?));
    }
    if let Some(q) = args.cpu_quota {
        set("cpu/quota", json!(q));
    }
    if let Some(p) = args.cpu_period {
        set("cpu/period", json!(p));
    }
    if let Some(s) = args.cpu_share {
        set("cpu/shares", json!(s));
    }
    if let Some(c) = &args.cpuset_cpus {
        set("cpu/cpus", json!(c));
    }
    if let Some(m) = &args.cpuset_mems {
        set("cpu/mems", json!(m));
    }
    if let Some(p) = args.pids_limit {
        set("pids/limit", json!(p));
    }
    if let Some(w) = args.blkio_weight {
        set("blockIO/weight", json!(w));
    }
    Ok(r)
}

fn parse(s: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_str(s).map_err(|e| usage(format!("resources: invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(usage("resources: not a JSON object"));
    }
    Ok(v)
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

fn host_limits(r: &Value, cfg: &crate::config::Config) -> HostLimits {
    let i = |p: &str| r.pointer(p).and_then(Value::as_i64);
    let memory = i("/memory/limit").filter(|m| *m > 0).map(|m| {
        let mib = (m as u64).div_ceil(1 << 20) as i64
            + i64::from(cfg.guest_overhead_mib)
            + i64::from(cfg.host_overhead_mib);
        mib << 20
    });
    HostLimits {
        memory,
        pids: i("/pids/limit").filter(|p| *p > 0),
        cpu_quota: i("/cpu/quota"),
        cpu_period: r.pointer("/cpu/period").and_then(Value::as_u64),
        cpu_shares: r.pointer("/cpu/shares").and_then(Value::as_u64),
    }
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
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["pids"]["limit"], 5);
        assert_eq!(r["cpu"]["quota"], 50000);
        let l = host_limits(&r, &crate::config::Config::default());
        assert_eq!(l.memory, Some((64 + 64 + 64) << 20));
    }
}

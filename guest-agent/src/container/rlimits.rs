//! `process.rlimits`, set with `prlimit64` in the new process before it drops privileges (raising
//! a hard limit needs `CAP_SYS_RESOURCE`, which the agent has in the guest).

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use super::error::{AtStep, ChildResult, Step};
use super::sys;

/// One limit: (resource, soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::c_int,
    pub soft: u64,
    pub hard: u64,
}

fn resource(t: PosixRlimitType) -> libc::c_int {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// Converts the spec's list.
pub fn plan(list: &[PosixRlimit]) -> Vec<Rlimit> {
    list.iter()
        .map(|r| Rlimit {
            resource: resource(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect()
}

/// Sets every limit (child side).
pub fn apply(list: &[Rlimit]) -> ChildResult<()> {
    for (i, r) in list.iter().enumerate() {
        sys::setrlimit(r.resource, r.soft, r.hard).step_at(Step::Rlimit, i)?;
    }
    Ok(())
}

/// The spec's name of a resource, for error messages.
pub fn name(resource: libc::c_int) -> &'static str {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    usize::try_from(resource)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("rlimit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_map_to_resources() {
        let list: Vec<PosixRlimit> = serde_json::from_str(
            r#"[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512},{"type":"RLIMIT_CORE","hard":0,"soft":0}]"#,
        )
        .unwrap();
        let plan = plan(&list);
        assert_eq!(plan[0].resource, libc::RLIMIT_NOFILE as libc::c_int);
        assert_eq!((plan[0].soft, plan[0].hard), (512, 1024));
        assert_eq!(name(plan[0].resource), "RLIMIT_NOFILE");
        assert_eq!(name(plan[1].resource), "RLIMIT_CORE");
    }
}

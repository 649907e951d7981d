//! `linux.seccomp` → a BPF program, with libseccomp's and runc's semantics where they matter:
//!
//! - syscall names this table does not know are skipped (libseccomp does the same for names
//!   the running kernel's arch lacks), so one profile serves every kernel;
//! - an entry whose `args` name the same argument twice becomes one rule per condition (OR),
//!   otherwise its conditions form one rule (AND) — exactly runc's reading;
//! - conditional rules of a syscall are tried in profile order before its unconditional action;
//! - syscalls numbered above every syscall the profile names get `ENOSYS` instead of the default
//!   action (runc's stub), so new calls make glibc fall back instead of failing with `EPERM`;
//! - x32 calls follow the x86_64 rules when the profile lists `SCMP_ARCH_X32`; any other
//!   architecture (i386 through `int 0x80`) is killed — the guest kernel has no 32-bit ABI.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::bpf::{self, Cmp, Cond, Entry, Rule};
use super::error::{AtStep, ChildResult, Step};
use super::sys;
use super::syscalls;

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone)]
pub struct SeccompProgram {
    pub filter: Vec<libc::sock_filter>,
    pub flags: libc::c_uint,
}

/// Profiles we cannot compile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("action {0} is not supported")]
    Action(&'static str),
    #[error("flag {0} is not supported")]
    Flag(&'static str),
    #[error("argument index {0} is out of range")]
    ArgIndex(usize),
    #[error("filter is longer than the kernel allows")]
    TooLong,
}

const ERRNO_DEFAULT: u32 = libc::EPERM as u32;

/// The `SECCOMP_RET_*` value of `action`.
fn ret(action: LinuxSeccompAction, errno: Option<u32>) -> Result<u32, SeccompError> {
    let data = errno.unwrap_or(ERRNO_DEFAULT) & libc::SECCOMP_RET_DATA;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::Action("SCMP_ACT_NOTIFY")),
    })
}

fn cond(arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<Cond, SeccompError> {
    let index = arg.index();
    let idx = u8::try_from(index)
        .ok()
        .filter(|i| *i < 6)
        .ok_or(SeccompError::ArgIndex(index))?;
    let v = arg.value();
    let cmp = match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => Cmp::Eq(v),
        LinuxSeccompOperator::ScmpCmpNe => Cmp::Ne(v),
        LinuxSeccompOperator::ScmpCmpLt => Cmp::Lt(v),
        LinuxSeccompOperator::ScmpCmpLe => Cmp::Le(v),
        LinuxSeccompOperator::ScmpCmpGt => Cmp::Gt(v),
        LinuxSeccompOperator::ScmpCmpGe => Cmp::Ge(v),
        LinuxSeccompOperator::ScmpCmpMaskedEq => Cmp::MaskedEq {
            mask: v,
            value: arg.value_two().unwrap_or(0),
        },
    };
    Ok(Cond { arg: idx, cmp })
}

/// Compiles `profile` into a filter.
pub fn compile(profile: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let default = ret(profile.default_action(), profile.default_errno_ret())?;
    let mut flags = 0;
    for flag in profile.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Flag("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"))
            }
        } as libc::c_uint;
    }
    let x32 = profile
        .architectures()
        .iter()
        .flatten()
        .any(|a| *a == Arch::ScmpArchX32);

    let mut entries: Vec<Entry> = Vec::new();
    let mut highest = None;
    for sc in profile.syscalls().iter().flatten() {
        let action = ret(sc.action(), sc.errno_ret())?;
        let args = sc.args().clone().unwrap_or_default();
        let conds = args.iter().map(cond).collect::<Result<Vec<_>, _>>()?;
        let repeated = conds
            .iter()
            .enumerate()
            .any(|(i, c)| conds.iter().skip(i + 1).any(|d| d.arg == c.arg));
        let rules: Vec<Rule> = if conds.is_empty() {
            Vec::new()
        } else if repeated {
            conds
                .iter()
                .map(|c| Rule {
                    conds: vec![*c],
                    ret: action,
                })
                .collect()
        } else {
            vec![Rule { conds, ret: action }]
        };
        for name in sc.names() {
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            highest = highest.max(Some(nr));
            let entry = match entries.iter_mut().find(|e| e.nr == nr) {
                Some(e) => e,
                None => {
                    entries.push(Entry {
                        nr,
                        rules: Vec::new(),
                        fallback: default,
                    });
                    let last = entries.len() - 1;
                    &mut entries[last]
                }
            };
            if rules.is_empty() {
                // The first unconditional action of a syscall wins.
                if entry.fallback == default {
                    entry.fallback = action;
                }
            } else {
                entry.rules.extend(rules.iter().cloned());
            }
        }
    }
    let permissive = matches!(
        profile.default_action(),
        LinuxSeccompAction::ScmpActAllow | LinuxSeccompAction::ScmpActLog
    );
    let filter = bpf::compile(&bpf::Program {
        entries: &entries,
        default,
        bad_arch: libc::SECCOMP_RET_KILL_PROCESS,
        x32,
        enosys_above: if permissive { None } else { highest },
    })
    .ok_or(SeccompError::TooLong)?;
    Ok(SeccompProgram { filter, flags })
}

impl SeccompProgram {
    /// Installs the filter on the calling process (child side).
    pub fn load(&self) -> ChildResult<()> {
        sys::seccomp_filter(self.flags, &self.filter).step(Step::Seccomp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::bpf::{run, ARCH_X86_64, X32_BIT};

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    fn nr(name: &str) -> u32 {
        syscalls::number(name).unwrap()
    }

    fn docker() -> SeccompProgram {
        let profile: LinuxSeccomp =
            serde_json::from_str(include_str!("testdata/docker-default-seccomp.json")).unwrap();
        compile(&profile).unwrap()
    }

    #[test]
    fn dockers_default_profile_decides_like_libseccomp() {
        let p = docker();
        // The filter stays a search tree over ranges: short (188 instructions; one leaf per
        // syscall made it 897), and each decision takes few steps.
        assert!(p.filter.len() < 250, "{} instructions", p.filter.len());
        let f = &p.filter;
        let call = |name: &str, args: [u64; 6]| run(f, ARCH_X86_64, nr(name), args);
        for allowed in [
            "read",
            "write",
            "mkdir",
            "execve",
            "exit_group",
            "arch_prctl",
            "chroot",
        ] {
            assert_eq!(call(allowed, [0; 6]), ALLOW, "{allowed}");
        }
        for denied in ["mount", "unshare", "setns", "reboot", "kexec_load", "bpf"] {
            assert_eq!(call(denied, [0; 6]), EPERM, "{denied}");
        }
        // clone: allowed unless it asks for new namespaces.
        assert_eq!(call("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            call("clone", [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            EPERM
        );
        // clone3 answers ENOSYS so glibc falls back to clone.
        assert_eq!(
            call("clone3", [0; 6]),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        // socket: everything but AF_VSOCK (40).
        assert_eq!(call("socket", [libc::AF_INET as u64, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call("socket", [40, 0, 0, 0, 0, 0]), EPERM);
        // personality: a handful of values, compared on all 64 bits.
        for ok in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(call("personality", [ok, 0, 0, 0, 0, 0]), ALLOW, "{ok:#x}");
        }
        assert_eq!(call("personality", [0x1_0000_0000, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("personality", [1, 0, 0, 0, 0, 0]), EPERM);
        // Calls newer than every syscall in the profile: ENOSYS; x32 follows x86_64; i386 dies.
        assert_eq!(
            run(f, ARCH_X86_64, 1000, [0; 6]),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(run(f, ARCH_X86_64, nr("read") | X32_BIT, [0; 6]), ALLOW);
        assert_eq!(
            run(f, 0x4000_0003, 3, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn repeated_arguments_are_alternatives() {
        let profile: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[
                 {"names":["mkdir","mkdirat","no_such_syscall"],"action":"SCMP_ACT_ERRNO"},
                 {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
                  "args":[{"index":1,"value":9,"op":"SCMP_CMP_EQ"},{"index":1,"value":15,"op":"SCMP_CMP_EQ"}]},
                 {"names":["tgkill"],"action":"SCMP_ACT_KILL_PROCESS",
                  "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":2,"value":9,"op":"SCMP_CMP_EQ"}]},
                 {"names":["getpid"],"action":"SCMP_ACT_TRAP"}]}"#,
        )
        .unwrap();
        let p = compile(&profile).unwrap();
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG as libc::c_uint);
        let f = &p.filter;
        let call = |name: &str, args: [u64; 6]| run(f, ARCH_X86_64, nr(name), args);
        assert_eq!(call("mkdir", [0; 6]), EPERM);
        assert_eq!(call("mkdirat", [0; 6]), EPERM);
        let eacces = libc::SECCOMP_RET_ERRNO | 13;
        assert_eq!(call("kill", [1, 9, 0, 0, 0, 0]), eacces);
        assert_eq!(call("kill", [1, 15, 0, 0, 0, 0]), eacces);
        assert_eq!(call("kill", [1, 2, 0, 0, 0, 0]), ALLOW);
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(call("tgkill", [1, 0, 9, 0, 0, 0]), kill);
        assert_eq!(call("tgkill", [2, 0, 9, 0, 0, 0]), ALLOW);
        assert_eq!(call("getpid", [0; 6]), libc::SECCOMP_RET_TRAP);
        // A permissive default has no ENOSYS stub; without x32 listed, x32 calls die.
        assert_eq!(run(f, ARCH_X86_64, 1000, [0; 6]), ALLOW);
        assert_eq!(run(f, ARCH_X86_64, X32_BIT, [0; 6]), kill);
    }

    #[test]
    fn unsupported_profiles_are_refused() {
        let bad: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        assert_eq!(
            compile(&bad).unwrap_err(),
            SeccompError::Action("SCMP_ACT_NOTIFY")
        );
        let bad: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        assert_eq!(compile(&bad).unwrap_err(), SeccompError::ArgIndex(6));
    }
}

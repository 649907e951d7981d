//! Turning a prepared process into the workload: the part shared by the container's init and
//! by exec'd processes — rlimits, cwd, `args[0]` lookup, stdio, seccomp, capabilities, user,
//! `no_new_privs`, umask, signal mask — and finally `execve`.
//!
//! The plan is built in the agent ([`ProcessPlan::new`]); [`prepare`] and [`exec`] run in the
//! cloned child and only make system calls.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::Arc;

use nix::errno::Errno;
use oci_spec::runtime::Process;

use super::caps::CapSets;
use super::error::{AtStep, ChildResult, ContainerError, Failure, Step};
use super::lookpath::{ExeBuf, LookError};
use super::rlimits::{self, Rlimit};
use super::seccomp::SeccompProgram;
use super::spec::{clean_absolute, cstring, reject_unsupported_process, SpecError};
use super::stdio::ChildStdio;
use super::sys;
use super::user::{self, UserPlan};

/// Everything about one process, decided in the agent.
#[derive(Debug)]
pub struct ProcessPlan {
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// The `PATH` value of `env`, for the lookup of `args[0]`.
    path: Option<CString>,
    /// Absolute, lexically clean.
    pub cwd: CString,
    pub user: UserPlan,
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
    /// Decimal text for `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<CString>,
    pub seccomp: Option<Arc<SeccompProgram>>,
    pub console_size: Option<(u16, u16)>,
}

/// Container-wide settings an exec'd process inherits when its own spec leaves them out.
#[derive(Debug, Clone, Default)]
pub struct Inherited {
    pub caps: Option<CapSets>,
    pub rlimits: Option<Vec<Rlimit>>,
    pub seccomp: Option<Arc<SeccompProgram>>,
}

impl ProcessPlan {
    /// Builds the plan. `home(uid)` looks up the home directory for a missing `HOME`.
    pub fn new(
        p: &Process,
        inherited: &Inherited,
        home: impl FnOnce(u32) -> Option<String>,
    ) -> Result<ProcessPlan, ContainerError> {
        reject_unsupported_process(p)?;
        let args = p.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(SpecError::NoArgs.into());
        }
        if !p.cwd().is_absolute() {
            return Err(SpecError::NotAbsolute("process.cwd").into());
        }
        let uid = p.user().uid();
        let env = user::with_home(p.env().clone().unwrap_or_default(), || home(uid));
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .map(|v| cstring("process.env", v))
            .transpose()?;
        let caps = match (p.capabilities(), inherited.caps) {
            (None, Some(caps)) => caps,
            (c, _) => CapSets::new(c.as_ref()),
        };
        let rlimits = match (p.rlimits(), &inherited.rlimits) {
            (None, Some(list)) => list.clone(),
            (list, _) => rlimits::plan(list.as_deref().unwrap_or_default()),
        };
        Ok(ProcessPlan {
            args: args
                .into_iter()
                .map(|a| cstring("process.args", a))
                .collect::<Result<_, _>>()?,
            env: env
                .into_iter()
                .map(|e| cstring("process.env", e))
                .collect::<Result<_, _>>()?,
            path,
            cwd: clean_absolute("process.cwd", p.cwd())?,
            user: UserPlan::new(p.user()),
            caps,
            rlimits,
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            oom_score_adj: p
                .oom_score_adj()
                .map(|v| cstring("process.oomScoreAdj", v.to_string()))
                .transpose()?,
            seccomp: inherited.seccomp.clone(),
            console_size: p.console_size().map(|b| {
                (
                    u16::try_from(b.height()).unwrap_or(u16::MAX),
                    u16::try_from(b.width()).unwrap_or(u16::MAX),
                )
            }),
        })
    }

    /// The null-terminated argv and envp arrays `execve` takes; they borrow from the plan.
    pub fn vectors(&self) -> Vectors<'_> {
        let ptrs = |list: &[CString]| {
            list.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Vectors {
            argv: ptrs(&self.args),
            envp: ptrs(&self.env),
            _plan: std::marker::PhantomData,
        }
    }

    /// `args[0]`, for messages.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// argv/envp pointer arrays into a [`ProcessPlan`].
pub struct Vectors<'a> {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _plan: std::marker::PhantomData<&'a ProcessPlan>,
}

/// Writes `value` to `/proc/self/oom_score_adj` (child side; the agent's `/proc` or the
/// container's, whichever is mounted at `/proc` at the time).
pub fn write_oom_score_adj(value: &CStr) -> ChildResult<()> {
    let fd = sys::openat(
        libc::AT_FDCWD,
        c"/proc/self/oom_score_adj",
        libc::O_WRONLY,
        0,
    )
    .step(Step::OomScoreAdj)?;
    let done = sys::write_all(fd, value.to_bytes()).step(Step::OomScoreAdj);
    sys::close(fd);
    done
}

/// Closes every descriptor from 3 up except those in `keep` (sorted), so a child does not hold
/// other containers' sync sockets or the agent's connections while it waits to exec.
pub fn close_others(keep: &[RawFd]) -> ChildResult<()> {
    let mut next: u32 = 3;
    for fd in keep {
        let Ok(fd) = u32::try_from(*fd) else { continue };
        if fd > next {
            sys::close_range(next, fd - 1).step(Step::CloseFds)?;
        }
        next = next.max(fd + 1);
    }
    sys::close_range(next, u32::MAX).step(Step::CloseFds)
}

/// The first thing a cloned child does: installs its stdio as 0–2 and closes every other
/// descriptor but the sync socket, so it holds nothing of the agent's or of other containers'
/// (a pipe end held here would delay another stream's end-of-file).
/// `claim_tty` false leaves a terminal installed but not yet controlling (the init's, which
/// may still be swapped for one of the container's devpts).
pub fn adopt_stdio(
    p: &ProcessPlan,
    stdio: &ChildStdio,
    sock: RawFd,
    claim_tty: bool,
) -> ChildResult<()> {
    stdio.install(p.console_size, claim_tty)?;
    close_others(&[sock])
}

/// Everything between "the filesystem is ready" and "about to exec" (child side). Leaves the
/// resolved executable in `exe`.
pub fn prepare(p: &ProcessPlan, exe: &mut ExeBuf) -> ChildResult<()> {
    // As root first; a directory only the target user may enter is retried after the switch.
    let cwd_later = match sys::chdir(&p.cwd) {
        Ok(()) => false,
        Err(Errno::EACCES | Errno::EPERM) => true,
        Err(e) => return Err(Failure::of(Step::Cwd, e)),
    };
    let name = p.args.first().map_or(c"", CString::as_c_str);
    exe.look(name, p.path.as_deref()).map_err(|e| {
        let (code, errno) = e.encode();
        Failure {
            step: Step::LookPath,
            index: code,
            errno,
        }
    })?;
    rlimits::apply(&p.rlimits)?;
    if let Some(seccomp) = p.seccomp.as_deref().filter(|_| !p.no_new_privs) {
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we have it.
        seccomp.load()?;
    }
    p.caps.apply_bounding()?;
    p.user.apply()?;
    p.caps.apply_sets()?;
    if cwd_later {
        sys::chdir(&p.cwd).step(Step::Cwd)?;
    }
    if p.no_new_privs {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).step(Step::NoNewPrivs)?;
    }
    sys::umask(p.user.umask);
    sys::default_sigpipe();
    crate::reaper::unblock_all_signals().step(Step::Exec)
}

/// Loads a `no_new_privs` seccomp filter (as late as possible, so the filter need not allow
/// the set-up calls) and execs. Returns only on failure.
pub fn exec(p: &ProcessPlan, vectors: &Vectors<'_>, exe: &ExeBuf) -> Failure {
    if let Some(seccomp) = p.seccomp.as_deref().filter(|_| p.no_new_privs) {
        if let Err(f) = seccomp.load() {
            return f;
        }
    }
    Failure::of(
        Step::Exec,
        sys::execve(exe.path(), &vectors.argv, &vectors.envp),
    )
}

/// The agent-side error for a child's failure in [`prepare`] or [`exec`].
pub fn error(p: &ProcessPlan, f: &Failure) -> ContainerError {
    if let Some(e) = exec_error(&p.name(), f) {
        return e;
    }
    let i = f.index as usize;
    let what = match f.step {
        Step::Rlimit => p
            .rlimits
            .get(i)
            .map(|r| rlimits::name(r.resource).to_string())
            .unwrap_or_default(),
        Step::Cwd => p.cwd.to_string_lossy().into_owned(),
        Step::Bounding | Step::Ambient => format!("{i}"),
        Step::Stdio => format!("fd {i}"),
        _ => String::new(),
    };
    ContainerError::Setup {
        step: f.step.verb(),
        what,
        source: f.errno,
    }
}

/// The agent-side error for a child's failure at `Step::LookPath` or `Step::Exec`; `name` is
/// the process's `args[0]`.
pub fn exec_error(name: &str, f: &Failure) -> Option<ContainerError> {
    let name = name.to_string();
    match f.step {
        Step::LookPath => Some(match LookError::decode(f.index, f.errno) {
            LookError::NotFound => ContainerError::NotFound(name),
            LookError::Permission => ContainerError::PermissionDenied(name),
            LookError::IsDir => ContainerError::IsDirectory(name),
            LookError::Stat(errno) => ContainerError::Stat { name, errno },
        }),
        Step::Exec => Some(ContainerError::Exec {
            path: name,
            errno: f.errno,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_env_path_home_and_defaults() {
        let p: Process = serde_json::from_str(
            r#"{"user":{"uid":1000,"gid":1000,"additionalGids":[10,20]},
                "args":["sh","-c","echo hi"],"cwd":"/work/../tmp/",
                "env":["PATH=/usr/bin:/bin","A=b"],"oomScoreAdj":-500,
                "consoleSize":{"height":24,"width":80},"noNewPrivileges":true}"#,
        )
        .unwrap();
        let plan = ProcessPlan::new(&p, &Inherited::default(), |uid| {
            assert_eq!(uid, 1000);
            Some("/home/u".into())
        })
        .unwrap();
        assert_eq!(plan.path.as_deref(), Some(c"/usr/bin:/bin"));
        assert_eq!(plan.env.last().unwrap().as_c_str(), c"HOME=/home/u");
        assert_eq!(plan.cwd.as_c_str(), c"/tmp");
        assert_eq!(plan.user.groups, [10, 20]);
        assert_eq!(plan.user.umask, 0o022);
        assert_eq!(plan.oom_score_adj.as_deref(), Some(c"-500"));
        assert_eq!(plan.console_size, Some((24, 80)));
        assert!(plan.no_new_privs);
        // No capabilities object: no capabilities.
        assert_eq!(plan.caps.effective, 0);
        let v = plan.vectors();
        assert_eq!(v.argv.len(), 4);
        assert!(v.argv[3].is_null());
        assert_eq!(plan.name(), "sh");
    }

    #[test]
    fn bad_processes_are_refused() {
        let no_args: Process =
            serde_json::from_str(r#"{"user":{"uid":0,"gid":0},"cwd":"/"}"#).unwrap();
        assert!(matches!(
            ProcessPlan::new(&no_args, &Inherited::default(), |_| None),
            Err(ContainerError::Spec(SpecError::NoArgs))
        ));
        let rel: Process =
            serde_json::from_str(r#"{"user":{"uid":0,"gid":0},"args":["x"],"cwd":"rel"}"#).unwrap();
        assert!(matches!(
            ProcessPlan::new(&rel, &Inherited::default(), |_| None),
            Err(ContainerError::Spec(SpecError::NotAbsolute(_)))
        ));
    }

    #[test]
    fn exec_errors_use_runcs_wording() {
        let p: Process =
            serde_json::from_str(r#"{"user":{"uid":0,"gid":0},"args":["foo"],"cwd":"/"}"#).unwrap();
        let plan = ProcessPlan::new(&p, &Inherited::default(), |_| None).unwrap();
        let (code, errno) = LookError::NotFound.encode();
        let f = Failure {
            step: Step::LookPath,
            index: code,
            errno,
        };
        assert_eq!(
            exec_error(&plan.name(), &f).unwrap().to_string(),
            "exec: \"foo\": executable file not found in $PATH"
        );
        let (code, errno) = LookError::Permission.encode();
        let f = Failure {
            step: Step::LookPath,
            index: code,
            errno,
        };
        assert_eq!(
            exec_error(&plan.name(), &f).unwrap().to_string(),
            "exec: \"foo\": permission denied"
        );
        let f = Failure::of(Step::Exec, Errno::ENOEXEC);
        assert_eq!(
            exec_error(&plan.name(), &f).unwrap().to_string(),
            "exec foo: exec format error"
        );
        assert!(exec_error(&plan.name(), &Failure::of(Step::Mount, Errno::EPERM)).is_none());
    }
}

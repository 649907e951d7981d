//! Errors of the container module and the small failure record a cloned child sends back.

use nix::errno::Errno;

use super::cgroups::CgroupError;
use super::seccomp::SeccompError;
use super::spec::SpecError;

/// Everything that can go wrong creating or driving a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec asks for something invalid or unsupported.
    #[error("invalid spec")]
    Spec(#[from] SpecError),
    /// The seccomp profile could not be compiled.
    #[error("seccomp profile")]
    Seccomp(#[from] SeccompError),
    /// The container's cgroup could not be set up or used.
    #[error("cgroup")]
    Cgroup(#[from] CgroupError),
    /// A setup step inside the new process failed (`what` names the object, e.g. a path).
    #[error("{step} {what}")]
    Setup {
        step: &'static str,
        what: String,
        #[source]
        source: Errno,
    },
    /// runc's wording: args[0] has no '/' and is not in any `$PATH` directory.
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotFound(String),
    /// runc's wording: args[0] exists but is not executable.
    #[error("exec: \"{0}\": permission denied")]
    PermissionDenied(String),
    /// runc's wording: args[0] is a directory.
    #[error("exec: \"{0}\": is a directory")]
    IsDirectory(String),
    /// runc's wording: args[0] contains a '/' and cannot be stat'ed.
    #[error("exec: \"{name}\": stat {name}: {}", errno_text(*.errno))]
    Stat { name: String, errno: Errno },
    /// `execve` itself failed after the lookup succeeded (runc: `exec <path>: <reason>`).
    #[error("exec {path}: {}", errno_text(*.errno))]
    Exec { path: String, errno: Errno },
    /// Creating a process failed.
    #[error("clone")]
    Clone(#[source] Errno),
    /// Talking to the new process over the sync socket failed.
    #[error("sync with container process")]
    Sync(#[source] Errno),
    /// The new process died before it reported back.
    #[error("container process exited during setup with status {0}")]
    Died(i32),
    /// The process sent a message that makes no sense.
    #[error("container process sent a bad message")]
    Protocol,
    /// `start` was called twice, or after `destroy`.
    #[error("container already started")]
    AlreadyStarted,
    /// The container's init is gone (exec, start).
    #[error("container not running")]
    NotRunning,
    /// Exec into a paused container would freeze the new process at birth.
    #[error("container is paused")]
    Paused,
    /// A file the agent needs could not be read or written.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// Go's (and so runc's) lower-case strerror text.
pub fn errno_text(errno: Errno) -> String {
    let text = errno.desc();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Which setup step a child was at when it failed; travels over the sync socket as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    JoinNamespace = 1,
    MountPrivate,
    BindRoot,
    OpenRoot,
    MountTarget,
    Mount,
    MountAttr,
    CopyUp,
    Device,
    DeviceLink,
    Console,
    Sysctl,
    Hostname,
    Domainname,
    OomScoreAdj,
    PivotRoot,
    MaskPath,
    ReadonlyPath,
    RootReadonly,
    Rlimit,
    Cwd,
    Stdio,
    Terminal,
    Seccomp,
    Bounding,
    KeepCaps,
    Groups,
    Gid,
    Uid,
    Capset,
    Ambient,
    NoNewPrivs,
    LookPath,
    Exec,
    Clone,
    Chroot,
    CloseFds,
}

impl Step {
    const ALL: [Step; 37] = [
        Step::JoinNamespace,
        Step::MountPrivate,
        Step::BindRoot,
        Step::OpenRoot,
        Step::MountTarget,
        Step::Mount,
        Step::MountAttr,
        Step::CopyUp,
        Step::Device,
        Step::DeviceLink,
        Step::Console,
        Step::Sysctl,
        Step::Hostname,
        Step::Domainname,
        Step::OomScoreAdj,
        Step::PivotRoot,
        Step::MaskPath,
        Step::ReadonlyPath,
        Step::RootReadonly,
        Step::Rlimit,
        Step::Cwd,
        Step::Stdio,
        Step::Terminal,
        Step::Seccomp,
        Step::Bounding,
        Step::KeepCaps,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::Capset,
        Step::Ambient,
        Step::NoNewPrivs,
        Step::LookPath,
        Step::Exec,
        Step::Clone,
        Step::Chroot,
        Step::CloseFds,
    ];

    /// Decodes a step number sent by a child; `None` for garbage.
    pub fn from_u32(n: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == n)
    }

    /// The verb used in error messages.
    pub fn verb(self) -> &'static str {
        match self {
            Step::JoinNamespace => "join namespace",
            Step::MountPrivate => "make mounts private",
            Step::BindRoot => "bind rootfs",
            Step::OpenRoot => "open rootfs",
            Step::MountTarget => "create mount point",
            Step::Mount => "mount",
            Step::MountAttr => "set mount attributes on",
            Step::CopyUp => "copy up (tmpcopyup) into",
            Step::Device => "create device",
            Step::DeviceLink => "create /dev symlink",
            Step::Console => "bind console",
            Step::Sysctl => "write sysctl",
            Step::Hostname => "set hostname",
            Step::Domainname => "set domainname",
            Step::OomScoreAdj => "write oom_score_adj",
            Step::PivotRoot => "pivot_root",
            Step::MaskPath => "mask path",
            Step::ReadonlyPath => "make read-only",
            Step::RootReadonly => "make rootfs read-only",
            Step::Rlimit => "set rlimit",
            Step::Cwd => "chdir to cwd",
            Step::Stdio => "set up stdio",
            Step::Terminal => "set controlling terminal",
            Step::Seccomp => "load seccomp filter",
            Step::Bounding => "drop bounding capability",
            Step::KeepCaps => "keep capabilities",
            Step::Groups => "setgroups",
            Step::Gid => "setgid",
            Step::Uid => "setuid",
            Step::Capset => "set capabilities",
            Step::Ambient => "raise ambient capability",
            Step::NoNewPrivs => "set no_new_privs",
            Step::LookPath => "look up executable",
            Step::Exec => "exec",
            Step::Clone => "clone",
            Step::Chroot => "enter container root",
            Step::CloseFds => "close inherited descriptors",
        }
    }
}

/// A child's failure: the step, an index into the plan's list for that step, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub index: u32,
    pub errno: Errno,
}

impl Failure {
    /// A failure at `step` for list entry `index`.
    pub fn at(step: Step, index: usize, errno: Errno) -> Failure {
        Failure {
            step,
            index: index as u32,
            errno,
        }
    }

    /// A failure at a step that has no list.
    pub fn of(step: Step, errno: Errno) -> Failure {
        Failure::at(step, 0, errno)
    }
}

/// Shorthand for the child's result type.
pub type ChildResult<T> = Result<T, Failure>;

/// Adds a step to a raw errno result.
pub trait AtStep<T> {
    /// Tags the error with `step`.
    fn step(self, step: Step) -> ChildResult<T>;
    /// Tags the error with `step` and list entry `index`.
    fn step_at(self, step: Step, index: usize) -> ChildResult<T>;
}

impl<T> AtStep<T> for Result<T, Errno> {
    fn step(self, step: Step) -> ChildResult<T> {
        self.map_err(|e| Failure::of(step, e))
    }
    fn step_at(self, step: Step, index: usize) -> ChildResult<T> {
        self.map_err(|e| Failure::at(step, index, e))
    }
}

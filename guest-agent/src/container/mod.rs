//! Containers inside the guest: an OCI runtime spec turned into a running container, as runc
//! does it — namespaces, mounts, `pivot_root`, devices, users, capabilities, rlimits, seccomp and
//! a cgroup v2 group — with the agent (PID 1 of the micro-VM) as the parent of every container
//! process, so its reaper collects their statuses.
//!
//! Two phases like runc: [`Container::create`] clones the init, which sets everything up and
//! waits just before `execve`; [`Container::start`] releases it. The work is split so that the
//! agent decides everything (the "plans", ordinary Rust) and the cloned child only executes
//! system calls (see `sys` for why). Paths the container sees are always resolved inside its
//! rootfs (`rootfs_path`).
//!
//! Statuses: the pids this module returns (init, exec'd processes) are the caller's to
//! `Reaper::wait` for; this module waits only for the helpers it creates itself and for
//! processes whose creation failed.

mod bpf;
mod caps;
mod cgroups;
mod copyup;
mod create;
mod device_filter;
mod devices;
mod error;
mod exec;
mod launch;
mod lookpath;
mod mounts;
mod rlimits;
mod rootfs_path;
mod seccomp;
mod spec;
mod stdio;
mod sync;
mod sys;
mod syscalls;
mod user;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Spec};

// The API the agent's server uses.
#[allow(unused_imports)]
pub use cgroups::{CgroupError, CpuStats, IoStats, MemoryStats, PidsStats, Stats, NO_LIMIT};
pub use error::ContainerError;
#[allow(unused_imports)]
pub use seccomp::SeccompError;
pub use spec::SpecError;
pub use stdio::Stdio;

use crate::reaper::Reaper;
use cgroups::Cgroup;
use create::InitPlan;
use launch::{Inherited, ProcessPlan};
use stdio::ChildStdio;
use sync::Msg;

/// Does now what every container needs and no container decides (the guest's cgroup set-up),
/// so that a guest restored from a template, which is snapshotted once the agent listens,
/// starts with it done. Best effort: a failure is reported again by the first create.
pub fn prepare_guest() -> Result<(), ContainerError> {
    Ok(cgroups::prepare()?)
}

/// A created (and maybe started) container.
pub struct Container {
    id: String,
    init: Pid,
    pidfd: OwnedFd,
    /// The agent's end of the init's sync socket, until `start`.
    sync: Option<OwnedFd>,
    /// `args[0]` of the init, for exec errors at start.
    init_name: String,
    /// `None` once destroyed.
    cgroup: Option<Cgroup>,
    /// The namespaces an exec'd process joins.
    exec_flags: libc::c_int,
    /// The init entered its root with `chroot`, so exec'd processes must too.
    no_pivot: bool,
    inherited: Inherited,
    reaper: Reaper,
    /// The master of the init's terminal from the container's devpts, until taken.
    console: Option<OwnedFd>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("init", &self.init)
            .field("started", &self.sync.is_none())
            .field("cgroup", &self.cgroup.as_ref().map(Cgroup::path))
            .finish_non_exhaustive()
    }
}

/// Knobs for tests.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CreateOptions {
    /// Enter the root with `MS_MOVE` + `chroot` even where `pivot_root` works.
    pub force_no_pivot: bool,
}

impl Container {
    /// Phase 1: creates container `id` from `spec` with its root filesystem at `rootfs` (a guest
    /// path), leaving the init blocked just before it execs `process.args`. A missing or
    /// non-executable `args[0]` is reported here, with runc's wording, as runc does.
    pub fn create(
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: Stdio,
        reaper: &Reaper,
    ) -> Result<Container, ContainerError> {
        Self::create_with(id, spec, rootfs, stdio, reaper, CreateOptions::default())
    }

    pub(crate) fn create_with(
        id: &str,
        spec: &Spec,
        rootfs: &Path,
        stdio: Stdio,
        reaper: &Reaper,
        options: CreateOptions,
    ) -> Result<Container, ContainerError> {
        spec::check_id(id)?;
        spec::reject_unsupported(spec)?;
        let process = spec.process().as_ref().ok_or(SpecError::MissingProcess)?;
        let ns = spec::namespaces(spec)?;
        let seccomp = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(seccomp::compile)
            .transpose()?
            .map(Arc::new);
        let root_dir = File::open(rootfs).map_err(|e| ContainerError::Io("open rootfs", e))?;
        let inherited = Inherited {
            seccomp,
            ..Inherited::default()
        };
        let process = ProcessPlan::new(process, &inherited, |uid| {
            user::home_dir(root_dir.as_raw_fd(), uid)
        })?;
        let inherited = Inherited {
            caps: Some(process.caps),
            rlimits: Some(process.rlimits.clone()),
            seccomp: inherited.seccomp,
        };
        let init_name = process.name();
        let mut plan = InitPlan::new(spec, rootfs, ns, process)?;
        plan.force_no_pivot = options.force_no_pivot;
        let exec_flags = plan.ns.exec_flags;

        let cgroup = Cgroup::create(id)?;
        let made = (|| {
            if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
                cgroup.apply(r)?;
            }
            let child_stdio = ChildStdio::new(&stdio)?;
            let (sock, child_sock) = sync::pair()?;
            let init =
                create::clone_init(&plan, &child_stdio, cgroup.fd(), &sock, child_sock, reaper)?;
            Ok::<_, ContainerError>((init, sock))
        })();
        drop(stdio);
        let (init, sock) = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        Ok(Container {
            id: id.to_string(),
            init: init.pid,
            pidfd: init.pidfd,
            sync: Some(sock),
            init_name,
            cgroup: Some(cgroup),
            exec_flags,
            no_pivot: init.no_pivot,
            inherited,
            reaper: reaper.clone(),
            console: init.console,
        })
    }

    /// The master of the init's terminal when the init made it in the container's own devpts
    /// (runc's way: `tty` in the container says `/dev/pts/0`); it replaces the pty the agent
    /// passed in, whose slave the init no longer uses. `None` without a terminal, or when the
    /// container has no devpts and kept the agent's pty.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The init's pid in the agent's pid namespace.
    pub fn init_pid(&self) -> Pid {
        self.init
    }

    /// Phase 2: lets the init exec. An `execve` failure comes back as the error (runc's
    /// `exec <path>: <reason>`); the init then exits with status 1.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        let sock = self.sync.take().ok_or(ContainerError::AlreadyStarted)?;
        sync::send(sock.as_raw_fd(), Msg::Start, None).map_err(|_| ContainerError::NotRunning)?;
        match sync::recv(&sock)? {
            None => Ok(()),
            Some((Msg::Failed(f), _)) => Err(launch::exec_error(&self.init_name, &f).unwrap_or(
                ContainerError::Setup {
                    step: f.step.verb(),
                    what: String::new(),
                    source: f.errno,
                },
            )),
            Some(_) => Err(ContainerError::Protocol),
        }
    }

    fn cgroup(&self) -> Result<&Cgroup, ContainerError> {
        self.cgroup.as_ref().ok_or(ContainerError::NotRunning)
    }

    /// Pids of every process in the container (from its cgroup), in the agent's pid namespace.
    pub fn pids(&self) -> Result<Vec<Pid>, ContainerError> {
        Ok(self.cgroup()?.procs()?)
    }

    /// Freezes every process (cgroup v2 freezer).
    pub fn pause(&self) -> Result<(), ContainerError> {
        Ok(self.cgroup()?.freeze(true)?)
    }

    /// Thaws the container.
    pub fn resume(&self) -> Result<(), ContainerError> {
        Ok(self.cgroup()?.freeze(false)?)
    }

    /// True while paused.
    pub fn is_paused(&self) -> Result<bool, ContainerError> {
        Ok(self.cgroup()?.is_frozen()?)
    }

    /// Applies new resource limits.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        Ok(self.cgroup()?.apply(resources)?)
    }

    /// Memory, CPU and pid counters of the container's cgroup.
    pub fn stats(&self) -> Result<Stats, ContainerError> {
        Ok(self.cgroup()?.stats())
    }

    /// Sends `sig` to every process in the container (`SIGKILL` through `cgroup.kill`).
    pub fn signal_all(&self, sig: Signal) -> Result<(), ContainerError> {
        let cgroup = self.cgroup()?;
        if sig == Signal::SIGKILL {
            Ok(cgroup.kill_all()?)
        } else {
            Ok(cgroup.signal_each(sig as libc::c_int)?)
        }
    }

    /// Kills everything in the container and removes its cgroup. Its mounts live only in its
    /// own mount namespace, which the kernel drops with the last process. Idempotent.
    pub fn destroy(&mut self) -> Result<(), ContainerError> {
        self.sync = None;
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove()?;
        }
        self.cgroup = None;
        Ok(())
    }
}

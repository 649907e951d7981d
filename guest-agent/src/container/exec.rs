//! Running another process in a container (`docker exec`).
//!
//! An intermediate process joins all of the container's namespaces at once with `setns` on the
//! init's pidfd (a pid namespace only applies to children), then clones the new process with
//! `CLONE_PARENT` — so it is the agent's child, reaped by the agent's reaper — and
//! `CLONE_INTO_CGROUP`, so it is in the container's cgroup from its first instruction. The new
//! process then applies its own user, capabilities, rlimits, seccomp, cwd, env and terminal.

use std::convert::Infallible;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::unistd::Pid;
use oci_spec::runtime::Process;

use super::create::spawn;
use super::error::{AtStep, ChildResult, ContainerError, Step};
use super::launch::{self, ProcessPlan, Vectors};
use super::lookpath::ExeBuf;
use super::stdio::{ChildStdio, Stdio};
use super::sync::{self, Msg};
use super::sys;
use super::user;
use super::Container;

/// The exec'd process after the clone (child side).
fn exec_main(
    plan: &ProcessPlan,
    stdio: &ChildStdio,
    sock: RawFd,
    vectors: &Vectors<'_>,
) -> ChildResult<Infallible> {
    launch::adopt_stdio(plan, stdio, sock, true)?;
    let mut exe = ExeBuf::default();
    launch::prepare(plan, &mut exe)?;
    Err(launch::exec(plan, vectors, &exe))
}

impl Container {
    /// The container's own `/dev/pts/ptmx` (non-blocking), found through the init's root, for
    /// an exec'd process's terminal (see [`super::stdio::open_container_ptmx`]); `None` when
    /// the container has no devpts of its own.
    pub fn ptmx(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::FromRawFd;
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(format!("/proc/{}/root", self.init))
            .ok()?;
        let fd = super::stdio::open_container_ptmx(root.as_raw_fd())?;
        // SAFETY: a new descriptor that nothing else owns.
        Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// Starts `process` inside the running container; returns its pid (a child of the agent,
    /// whose status the caller collects with `Reaper::wait`).
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<Pid, ContainerError> {
        let cgroup = self.cgroup.as_ref().ok_or(ContainerError::NotRunning)?;
        if cgroup.is_frozen()? {
            return Err(ContainerError::Paused);
        }
        // The init's root: for HOME from its /etc/passwd, and to chroot into without pivot_root.
        let root = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(format!("/proc/{}/root", self.init))
            .map_err(|_| ContainerError::NotRunning)?;
        // The pidfd proves the pid was not reused between the open and now.
        sys::pidfd_send_signal(self.pidfd.as_raw_fd(), 0)
            .map_err(|_| ContainerError::NotRunning)?;
        let plan = ProcessPlan::new(process, &self.inherited, |uid| {
            user::home_dir(root.as_raw_fd(), uid)
        })?;
        let child_stdio = ChildStdio::new(&stdio)?;
        let (sock, child_sock) = sync::pair()?;
        let cs = child_sock.as_raw_fd();
        let cgroup_fd = cgroup.fd();
        let pidfd = self.pidfd.as_raw_fd();
        let root_fd = root.as_raw_fd();
        let mut keep: Vec<RawFd> = vec![cs, cgroup_fd, pidfd, root_fd];
        keep.extend(child_stdio.fds());
        keep.sort_unstable();
        let vectors = plan.vectors();
        let (ns_flags, no_pivot) = (self.exec_flags, self.no_pivot);

        let (mid, _) = spawn(0, None, cs, || {
            launch::close_others(&keep)?;
            if let Some(oom) = &plan.oom_score_adj {
                launch::write_oom_score_adj(oom)?;
            }
            sys::setns(pidfd, ns_flags).step(Step::JoinNamespace)?;
            if no_pivot {
                sys::fchdir(root_fd).step(Step::Chroot)?;
                sys::chroot(c".").step(Step::Chroot)?;
            }
            let flags = libc::CLONE_PARENT as u64;
            let (pid, _) = spawn(flags, Some(cgroup_fd), cs, || {
                exec_main(&plan, &child_stdio, cs, &vectors)
            })
            .step(Step::Clone)?;
            sync::send(cs, Msg::Pid(pid), None).step(Step::Clone)?;
            sys::exit(0)
        })
        .map_err(ContainerError::Clone)?;
        drop(child_sock);
        drop(stdio);

        let first = sync::recv(&sock);
        self.reaper.wait(Pid::from_raw(mid));
        let pid = match first? {
            Some((Msg::Pid(pid), _)) => Pid::from_raw(pid),
            Some((Msg::Failed(f), _)) => return Err(launch::error(&plan, &f)),
            None => return Err(ContainerError::Died(-1)),
            Some(_) => return Err(ContainerError::Protocol),
        };
        match sync::recv(&sock) {
            Ok(None) => Ok(pid),
            Ok(Some((Msg::Failed(f), _))) => {
                self.reaper.wait(pid);
                Err(launch::error(&plan, &f))
            }
            other => {
                let _ = sys::kill(pid.as_raw(), libc::SIGKILL);
                self.reaper.wait(pid);
                Err(other.err().unwrap_or(ContainerError::Protocol))
            }
        }
    }
}

//! Running another process in a container (`docker exec`).
//!
//! The agent's thread enters the container's pid namespace for its children (`setns` on the
//! init's pidfd: a pid namespace only applies to children), clones the new process with
//! `CLONE_INTO_CGROUP` — in the container's cgroup from its first instruction, the agent's
//! child, reaped by the agent's reaper — and returns to its own pid namespace. The new process
//! joins the container's other namespaces at once (`setns` on the pidfd), then applies its own
//! user, capabilities, rlimits, seccomp, cwd, env and terminal.

use std::convert::Infallible;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use nix::errno::Errno;
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

/// The agent's own pid namespace, which the thread returns to after each exec's clone: opened
/// once, not per exec (two guest syscalls less each time).
fn own_pid_ns() -> Result<RawFd, ContainerError> {
    static OWN: OnceLock<File> = OnceLock::new();
    if let Some(f) = OWN.get() {
        return Ok(f.as_raw_fd());
    }
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/self/ns/pid")
        .map_err(|e| {
            ContainerError::Clone(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
    Ok(OWN.get_or_init(|| f).as_raw_fd())
}

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
        let pidfd = self.pidfd.as_raw_fd();
        let root_fd = root.as_raw_fd();
        let vectors = plan.vectors();
        let (ns_flags, no_pivot) = (self.exec_flags, self.no_pivot);
        let join_pid = ns_flags & libc::CLONE_NEWPID != 0;
        let join_rest = ns_flags & !libc::CLONE_NEWPID;
        let mut keep: Vec<RawFd> = vec![cs, pidfd, root_fd];
        keep.extend(child_stdio.fds());
        keep.sort_unstable();

        // A pid namespace applies only to the children of whoever joins it. This thread joins
        // it for its next child only and returns to its own at once, so the process is cloned
        // straight into the container's pid namespace: no intermediate process, whose fork and
        // exit cost ~0.3 s of emulated guest kernel per exec on PVM hosts.
        let own_pid_ns = if join_pid {
            let own = own_pid_ns()?;
            sys::setns(pidfd, libc::CLONE_NEWPID).map_err(|e| match e {
                // The init ended since the check above.
                Errno::ESRCH => ContainerError::NotRunning,
                e => ContainerError::Clone(e),
            })?;
            Some(own)
        } else {
            None
        };
        // The child is in the container's pid namespace from its birth, so the first thing it
        // does is drop the agent's descriptors: until then a container process allowed to
        // ptrace it (CAP_SYS_PTRACE) could reach them through its /proc entry. (An intermediate
        // process that closed them before cloning closed that window entirely, at ~0.3 s per
        // exec; runc's exec has the same short window.)
        let cloned = spawn(0, Some(cgroup.fd()), cs, || {
            launch::close_others(&keep)?;
            if let Some(oom) = &plan.oom_score_adj {
                launch::write_oom_score_adj(oom)?;
            }
            if join_rest != 0 {
                sys::setns(pidfd, join_rest).step(Step::JoinNamespace)?;
            }
            if no_pivot {
                sys::fchdir(root_fd).step(Step::Chroot)?;
                sys::chroot(c".").step(Step::Chroot)?;
            }
            exec_main(&plan, &child_stdio, cs, &vectors)
        });
        if let Some(own) = own_pid_ns {
            // Joining one's own active pid namespace cannot be refused to root. Were it
            // refused, every later child of the agent would start in this container: end the
            // VM rather than run on like that.
            if let Err(e) = sys::setns(own, libc::CLONE_NEWPID) {
                eprintln!("bulkhead-agent: cannot return to its own pid namespace: {e}");
                std::process::abort();
            }
        }
        let (pid, _) = cloned.map_err(ContainerError::Clone)?;
        let pid = Pid::from_raw(pid);
        drop(child_sock);
        drop(stdio);

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

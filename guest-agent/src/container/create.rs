//! Creating a container: the init process is cloned straight into its namespaces and cgroup,
//! builds its root filesystem, drops privileges and waits on the sync socket for `start`.
//!
//! Order inside the init (runc's, minus what a VM makes moot): join namespaces given by path →
//! mounts private → bind the rootfs onto itself → the spec's mounts → `/dev` → cwd → sysctls →
//! hostname → oom_score_adj → `pivot_root` (or `MS_MOVE` + `chroot` when the agent's root is
//! the initramfs, where `pivot_root` is refused) → masked and read-only paths → read-only root →
//! the process's own settings (see `launch`) → "ready" → wait → exec.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::devices::{self, DevicePlan};
use super::error::{AtStep, ChildResult, ContainerError, Failure, Step};
use super::launch::{self, ProcessPlan};
use super::lookpath::ExeBuf;
use super::mounts::{self, MountStep};
use super::rootfs_path::{self, Create, FdPath};
use super::spec::{self, clean_absolute, clean_relative, cstring, Namespaces, SpecError};
use super::stdio::{claim_terminal, open_container_ptmx, ChildStdio};
use super::sync::{self, Msg};
use super::sys::{self, Forked, MountAttr};

/// Everything the init does, decided before the clone.
pub struct InitPlan {
    pub ns: Namespaces,
    rootfs: CString,
    propagation: libc::c_ulong,
    pub mounts: Vec<MountStep>,
    devices: Option<DevicePlan>,
    sysctls: Vec<(CString, CString)>,
    hostname: Option<CString>,
    domainname: Option<CString>,
    /// The cwd relative to the rootfs, created if missing (runc does).
    cwd_rel: CString,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    root_readonly: bool,
    pub process: ProcessPlan,
    /// Use `MS_MOVE` + `chroot` even where `pivot_root` would work (tests).
    pub force_no_pivot: bool,
}

fn propagation(value: Option<&str>) -> Result<libc::c_ulong, SpecError> {
    Ok(match value.unwrap_or("rprivate") {
        "" | "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "private" => libc::MS_PRIVATE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        other => return Err(SpecError::MountOption(other.to_string())),
    })
}

impl InitPlan {
    /// Plans the init of `spec` with rootfs `rootfs` (an absolute guest path).
    pub fn new(
        spec: &Spec,
        rootfs: &Path,
        ns: Namespaces,
        process: ProcessPlan,
    ) -> Result<InitPlan, ContainerError> {
        if !rootfs.is_absolute() {
            return Err(SpecError::NotAbsolute("rootfs").into());
        }
        let linux = spec.linux().clone().unwrap_or_default();
        let propagation = propagation(linux.rootfs_propagation().as_deref())?;
        let mounts = mounts::plan(spec, propagation & libc::MS_PRIVATE != 0)?;
        let devices = DevicePlan::new(spec, &mounts)?;
        let paths = |field, list: &Option<Vec<String>>| -> Result<Vec<CString>, SpecError> {
            list.iter()
                .flatten()
                .map(|p| clean_absolute(field, Path::new(p)))
                .collect()
        };
        let name = |field, v: &Option<String>| {
            v.as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| cstring(field, s))
                .transpose()
        };
        let cwd = Path::new(std::str::from_utf8(process.cwd.to_bytes()).unwrap_or("/"));
        Ok(InitPlan {
            sysctls: spec::sysctls(spec, &ns)?,
            ns,
            rootfs: cstring("rootfs", rootfs.as_os_str().as_encoded_bytes())?,
            propagation,
            mounts,
            devices,
            hostname: name("hostname", spec.hostname())?,
            domainname: name("domainname", spec.domainname())?,
            cwd_rel: clean_relative("process.cwd", cwd)?,
            masked: paths("linux.maskedPaths", linux.masked_paths())?,
            readonly: paths("linux.readonlyPaths", linux.readonly_paths())?,
            root_readonly: spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
            process,
            force_no_pivot: false,
        })
    }

    /// The agent-side error for a child's failure.
    pub fn error(&self, f: &Failure) -> ContainerError {
        let i = f.index as usize;
        let lossy = |c: &CString| c.to_string_lossy().into_owned();
        let what = match f.step {
            Step::MountTarget | Step::Mount | Step::MountAttr | Step::CopyUp => self
                .mounts
                .get(i)
                .map(|m| format!("/{}", lossy(&m.dest)))
                .unwrap_or_default(),
            Step::Device => self
                .devices
                .as_ref()
                .map(|d| d.describe(i))
                .unwrap_or_default(),
            Step::DeviceLink => devices::link_name(i),
            Step::Sysctl => self.sysctls.get(i).map(|s| lossy(&s.0)).unwrap_or_default(),
            Step::MaskPath => self.masked.get(i).map(lossy).unwrap_or_default(),
            Step::ReadonlyPath => self.readonly.get(i).map(lossy).unwrap_or_default(),
            Step::BindRoot | Step::OpenRoot | Step::PivotRoot => lossy(&self.rootfs),
            Step::JoinNamespace => format!("{i}"),
            _ => return launch::error(&self.process, f),
        };
        ContainerError::Setup {
            step: f.step.verb(),
            what,
            source: f.errno,
        }
    }

    /// The init's work up to "ready", once its stdio is in place (child side). Returns whether
    /// the root was entered with `chroot`, and the master of the container's own terminal for
    /// the agent (see [`InitPlan::terminal`]).
    fn build(&self, stdio: &ChildStdio, exe: &mut ExeBuf) -> ChildResult<(bool, Option<RawFd>)> {
        sys::mount(None, c"/", None, self.propagation, None).step(Step::MountPrivate)?;
        sys::umask(0);
        let bind = libc::MS_BIND | libc::MS_REC;
        sys::mount(Some(&self.rootfs), &self.rootfs, None, bind, None).step(Step::BindRoot)?;
        let root = sys::openat2(
            libc::AT_FDCWD,
            &self.rootfs,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .step(Step::OpenRoot)?;
        mounts::apply(root, &self.mounts)?;
        let master = self.terminal(root, stdio)?;
        if let Some(devices) = &self.devices {
            // `/dev/console` is a bind of the terminal: ours on fd 0 or the agent's by path.
            let own = FdPath::new(0);
            let console = match master {
                Some(_) => Some(own.as_cstr()),
                None => stdio.terminal(),
            };
            devices.apply(root, console)?;
        }
        if !self.cwd_rel.as_bytes().is_empty() {
            rootfs_path::resolve(root, self.cwd_rel.as_bytes(), Create::Dir).step(Step::Cwd)?;
        }
        for (i, (path, value)) in self.sysctls.iter().enumerate() {
            let fd =
                sys::openat(libc::AT_FDCWD, path, libc::O_WRONLY, 0).step_at(Step::Sysctl, i)?;
            sys::write_all(fd, value.to_bytes()).step_at(Step::Sysctl, i)?;
            sys::close(fd);
        }
        if let Some(h) = &self.hostname {
            sys::sethostname(h.to_bytes()).step(Step::Hostname)?;
        }
        if let Some(d) = &self.domainname {
            sys::setdomainname(d.to_bytes()).step(Step::Domainname)?;
        }
        if let Some(oom) = &self.process.oom_score_adj {
            launch::write_oom_score_adj(oom)?;
        }
        let no_pivot = self.enter_root()?;
        for (i, path) in self.masked.iter().enumerate() {
            mask(path).step_at(Step::MaskPath, i)?;
        }
        for (i, path) in self.readonly.iter().enumerate() {
            readonly(path).step_at(Step::ReadonlyPath, i)?;
        }
        if self.root_readonly {
            let attr = MountAttr {
                attr_set: 1, // MOUNT_ATTR_RDONLY
                ..MountAttr::default()
            };
            sys::mount_setattr(libc::AT_FDCWD, c"/", 0, &attr).step(Step::RootReadonly)?;
        }
        launch::prepare(&self.process, exe)?;
        Ok((no_pivot, master))
    }

    /// The init's terminal, made as runc makes it: a pty of the container's own devpts (just
    /// mounted), so `tty` in the container says `/dev/pts/0` and the pty's names mean the same
    /// inside and out; its slave becomes fds 0–2 and the controlling terminal, and the master
    /// goes to the agent with "ready". A container without a devpts at `/dev/pts` keeps the
    /// agent's pty (already installed). `None` also for a process without a terminal.
    fn terminal(&self, root: RawFd, stdio: &ChildStdio) -> ChildResult<Option<RawFd>> {
        if !stdio.is_terminal() {
            return Ok(None);
        }
        let size = self.process.console_size;
        let Some(master) = open_container_ptmx(root) else {
            claim_terminal(0, size)?;
            return Ok(None);
        };
        let slave = sys::pty_peer(master).step(Step::Terminal)?;
        for target in 0..3 {
            sys::dup2(slave, target).step_at(Step::Stdio, target as usize)?;
        }
        sys::close(slave);
        claim_terminal(0, size)?;
        Ok(Some(master))
    }

    /// Makes the rootfs `/`: `pivot_root`, or `MS_MOVE` + `chroot` where the current root is the
    /// initramfs (`pivot_root` says EINVAL). Returns true for the latter.
    fn enter_root(&self) -> ChildResult<bool> {
        sys::chdir(&self.rootfs).step(Step::PivotRoot)?;
        if !self.force_no_pivot {
            match sys::pivot_root(c".", c".") {
                Ok(()) => {
                    // The old root now sits on top of the new one: detach it. The cwd stays
                    // the new root.
                    sys::umount_detach(c".").step(Step::PivotRoot)?;
                    return Ok(false);
                }
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(Failure::of(Step::PivotRoot, e)),
            }
        }
        sys::mount(Some(c"."), c"/", None, libc::MS_MOVE, None).step(Step::PivotRoot)?;
        // The cwd is the moved rootfs, which becomes the root.
        sys::chroot(c".").step(Step::PivotRoot)?;
        Ok(true)
    }
}

/// Hides `path`: `/dev/null` over a file, an empty read-only tmpfs over a directory; a missing
/// path needs no hiding.
fn mask(path: &std::ffi::CStr) -> Result<(), Errno> {
    match sys::mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR) => {
            sys::mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY, None)
        }
        Err(e) => Err(e),
    }
}

/// Makes `path` read-only with a bind mount onto itself; other mount flags stay as they were.
fn readonly(path: &std::ffi::CStr) -> Result<(), Errno> {
    match sys::mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let attr = MountAttr {
        attr_set: 1, // MOUNT_ATTR_RDONLY
        ..MountAttr::default()
    };
    sys::mount_setattr(libc::AT_FDCWD, path, 0, &attr)
}

/// The init's whole life after the clone (child side). `join_here`: setns the namespaces given
/// by path (false when an intermediate process already did).
fn init_main(
    plan: &InitPlan,
    join_here: bool,
    stdio: &ChildStdio,
    sock: RawFd,
    vectors: &launch::Vectors<'_>,
) -> ChildResult<Infallible> {
    if join_here {
        for (i, (fd, nstype)) in plan.ns.join.iter().enumerate() {
            sys::setns(fd.as_raw_fd(), *nstype).step_at(Step::JoinNamespace, i)?;
        }
    }
    launch::adopt_stdio(&plan.process, stdio, sock, false)?;
    let mut exe = ExeBuf::default();
    let (no_pivot, console_master) = plan.build(stdio, &mut exe)?;
    sync::send(sock, Msg::Ready { no_pivot }, console_master).step(Step::Exec)?;
    if let Some(master) = console_master {
        sys::close(master);
    }
    let mut buf = [0u8; 16];
    match sys::read(sock, &mut buf) {
        Ok(16) => {}
        // The agent dropped the container before starting it.
        _ => sys::exit(0),
    }
    Err(launch::exec(&plan.process, vectors, &exe))
}

/// Clones a child running `body` with `flags` (and into `cgroup`); returns (pid, pidfd or -1)
/// in the caller. A failure of `body` is sent on `sock` and the child exits with status 1.
pub fn spawn(
    flags: u64,
    cgroup: Option<RawFd>,
    sock: RawFd,
    body: impl FnOnce() -> ChildResult<Infallible>,
) -> Result<(libc::pid_t, RawFd), Errno> {
    // SAFETY: the child only runs `body`, whose code makes raw system calls on data prepared
    // before the clone, then exits; a panic is caught and ends the child too.
    match unsafe { sys::clone3(flags, cgroup)? } {
        Forked::Parent { pid, pidfd } => Ok((pid, pidfd)),
        Forked::Child => {
            let code = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
                Ok(Err(f)) => {
                    let _ = sync::send(sock, Msg::Failed(f), None);
                    1
                }
                Ok(Ok(never)) => match never {},
                Err(_) => 2,
            };
            sys::exit(code)
        }
    }
}

/// What `clone_init` hands back.
pub struct Init {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub no_pivot: bool,
    /// The master of the init's terminal when the init made it in the container's devpts.
    pub console: Option<OwnedFd>,
}

/// Clones the init and waits until it is ready (or failed). `sock` is the agent's end of the
/// sync pair, `child_sock` the child's (closed here after the clone).
pub fn clone_init(
    plan: &InitPlan,
    stdio: &ChildStdio,
    cgroup: RawFd,
    sock: &OwnedFd,
    child_sock: OwnedFd,
    reaper: &crate::reaper::Reaper,
) -> Result<Init, ContainerError> {
    let vectors = plan.process.vectors();
    let cs = child_sock.as_raw_fd();
    let pidfd_flag = libc::CLONE_PIDFD as u64;

    let (pid, pidfd) = if plan.ns.join_pid {
        // A pid namespace can only be entered by a child of a process that joined it: join
        // everything in an intermediate process, which clones the init as the agent's child.
        let mut keep: Vec<RawFd> = vec![cs, cgroup];
        keep.extend(stdio.fds());
        keep.extend(plan.ns.join.iter().map(|(fd, _)| fd.as_raw_fd()));
        keep.sort_unstable();
        let (mid, _) = spawn(0, None, cs, || {
            launch::close_others(&keep)?;
            for (i, (fd, nstype)) in plan.ns.join.iter().enumerate() {
                sys::setns(fd.as_raw_fd(), *nstype).step_at(Step::JoinNamespace, i)?;
            }
            let flags = libc::CLONE_PARENT as u64 | plan.ns.create | pidfd_flag;
            let (pid, pidfd) = spawn(flags, Some(cgroup), cs, || {
                init_main(plan, false, stdio, cs, &vectors)
            })
            .step(Step::Clone)?;
            sync::send(cs, Msg::Pid(pid), Some(pidfd)).step(Step::Clone)?;
            sys::exit(0)
        })
        .map_err(ContainerError::Clone)?;
        drop(child_sock);
        let got = sync::recv(sock);
        reaper.wait(Pid::from_raw(mid));
        match got? {
            Some((Msg::Pid(pid), Some(pidfd))) => (Pid::from_raw(pid), pidfd),
            Some((Msg::Failed(f), _)) => return Err(plan.error(&f)),
            None => return Err(ContainerError::Died(-1)),
            Some(_) => return Err(ContainerError::Protocol),
        }
    } else {
        let flags = plan.ns.create | pidfd_flag;
        let (pid, pidfd) = spawn(flags, Some(cgroup), cs, || {
            init_main(plan, true, stdio, cs, &vectors)
        })
        .map_err(ContainerError::Clone)?;
        drop(child_sock);
        // SAFETY: clone3 with CLONE_PIDFD stored a new descriptor owned by nobody else.
        (Pid::from_raw(pid), unsafe { OwnedFd::from_raw_fd(pidfd) })
    };

    let fail = |e: ContainerError| {
        let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        reaper.wait(pid);
        e
    };
    match sync::recv(sock) {
        Ok(Some((Msg::Ready { no_pivot }, console))) => Ok(Init {
            pid,
            pidfd,
            no_pivot,
            console,
        }),
        Ok(Some((Msg::Failed(f), _))) => Err(fail(plan.error(&f))),
        Ok(None) => {
            let status = reaper.wait(pid);
            Err(ContainerError::Died(status.code()))
        }
        Ok(Some(_)) => Err(fail(ContainerError::Protocol)),
        Err(e) => Err(fail(e)),
    }
}

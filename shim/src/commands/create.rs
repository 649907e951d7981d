//! `bulkhead create`: validate the bundle on the host, fork the sandbox monitor, wait until it
//! reports the container created, write its pid to `--pid-file`.

use std::time::SystemTime;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::{Ctx, Result};
use crate::cli::CreateArgs;
use crate::config::{Config, VmSize};
use crate::monitor::{self, Plan, StdioPlan};
use crate::sandbox::SandboxFactory;
use crate::spec::Bundle;

/// Creates the container; returns the monitor's pid (a child of this process).
pub fn run<F: SandboxFactory>(ctx: &Ctx, factory: &F, args: &CreateArgs) -> Result<Pid> {
    create(ctx, factory, args, false)
}

/// `own_terminal`: a foreground `run` may hand its own terminal to a terminal process.
pub fn create<F: SandboxFactory>(
    ctx: &Ctx,
    factory: &F,
    args: &CreateArgs,
    own_terminal: bool,
) -> Result<Pid> {
    crate::state::validate_id(&args.id)?;
    let bundle = Bundle::load(&args.bundle)?;
    if !factory.can_share_host_network() {
        bundle.check_own_network()?;
        if let Some(Some(netns)) = bundle.namespace("network") {
            crate::network::refuse_carried(&netns).map_err(crate::sandbox::SandboxError::from)?;
        }
    }
    let config = Config::load()?;
    let size = VmSize::choose(&config, &bundle.annotations(), &bundle.size_hints())?;
    let cgroup = crate::cgroups::resolve_path(
        bundle.cgroups_path().as_deref(),
        ctx.global.systemd_cgroup,
        &args.id,
    )?;
    let stdio = match (bundle.terminal(), &args.console_socket) {
        (true, Some(sock)) => {
            StdioPlan::ConsoleSocket(std::path::absolute(sock).unwrap_or(sock.clone()))
        }
        (true, None) if own_terminal => StdioPlan::OwnTerminal,
        (true, None) => {
            return Err(super::usage(
                "cannot allocate tty if runc will detach without setting console socket",
            ))
        }
        (false, Some(_)) => {
            return Err(super::usage(
                "cannot use console socket if runc will not detach or allocate tty",
            ))
        }
        (false, None) => StdioPlan::Inherited,
    };
    if let Some(dir) = config.console_log(&args.id).parent() {
        let _ = crate::private::create_dir_all(dir);
    }
    let state_dir = ctx.store.create_dir(&args.id)?;
    let plan = Plan {
        id: args.id.clone(),
        bundle,
        config,
        size,
        store: ctx.store.clone(),
        state_dir,
        stdio,
        cgroup,
        created: crate::logging::rfc3339(SystemTime::now()),
    };
    crate::logging::debug(&format!("create {}: vm {:?}", args.id, plan.size));
    let forked = crate::process::fork_with_ready(move |ready| monitor::run(plan, factory, ready));
    let (pid, ready) = match forked {
        Ok(x) => x,
        Err(e) => {
            cleanup(ctx, &args.id);
            return Err(e.into());
        }
    };
    if let Err(e) = crate::process::wait_ready(ready) {
        // The monitor undoes its own work; reap it and make sure nothing is left.
        let _ = waitpid(pid, None);
        cleanup(ctx, &args.id);
        return Err(e.into());
    }
    if let Some(pid_file) = &args.pid_file {
        if let Err(e) = crate::process::write_pid_file(pid_file, pid.as_raw()) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            cleanup(ctx, &args.id);
            return Err(e.into());
        }
    }
    Ok(pid)
}

/// Removes what a failed create (or a deleted container) may have left: share mounts,
/// cgroups, the state directory.
pub fn cleanup(ctx: &Ctx, id: &str) {
    if let Ok(st) = ctx.store.load(id) {
        // Whatever is left in the container's host groups (the monitor is gone: a process it
        // started and could not signal, such as its root virtio-fs server under an
        // unprivileged monitor) ends now; a group with a process in it cannot be removed.
        crate::cgroups::kill_all(&st.cgroup_dirs);
        crate::cgroups::remove(&st.cgroup_dirs);
    }
    if let Ok(dir) = ctx.store.dir(id) {
        crate::share::remove_share_dir(&dir.join(crate::share::SHARE_DIR));
    }
    let _ = ctx.store.remove(id);
}

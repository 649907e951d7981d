//! `bulkhead delete [--force] ID`: remove a stopped container (or kill it first with --force);
//! runs poststop hooks and removes the cgroups, share and state directory.

use std::time::Duration;

use super::{Ctx, Result};
use crate::control::{Client, Request};
use crate::hooks::{self, Phase};
use crate::state::{StateError, Status};

/// Time a killed monitor gets to shut its VM down before it is killed itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(ctx: &Ctx, id: &str, force: bool) -> Result<()> {
    let (st, status) = match ctx.store.load(id).map(|s| {
        let status = s.current_status();
        (s, status)
    }) {
        Ok(x) => x,
        // A half-written state directory (create died between mkdir and the first save) is
        // removable with --force, so nothing stays behind.
        Err(StateError::Corrupt { .. }) if force => {
            super::create::cleanup(ctx, id);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match status {
        Status::Stopped => {}
        // runc deletes a created container without --force by killing it.
        Status::Created | Status::Creating => stop(ctx, id, st.pid, st.monitor_start_time),
        Status::Running | Status::Paused if force => stop(ctx, id, st.pid, st.monitor_start_time),
        Status::Running | Status::Paused => {
            return Err(super::usage(format!(
                "cannot delete container {id} that is not stopped: {status}"
            )))
        }
    }
    if let Ok(bundle) = crate::spec::Bundle::load(&st.bundle) {
        let mut stopped = st.clone();
        stopped.status = Status::Stopped;
        if let Err(e) = hooks::run(
            &bundle.spec,
            Phase::Poststop,
            &stopped.oci_json().to_string(),
        ) {
            crate::logging::warn(&e.to_string());
        }
    }
    super::create::cleanup(ctx, id);
    Ok(())
}

/// Kills the container through its monitor and waits for the monitor to exit; a monitor that
/// does not exit in time is killed (which ends its VM: the vCPUs are its threads).
fn stop(ctx: &Ctx, id: &str, pid: i32, start_time: u64) {
    if let Ok(dir) = ctx.store.dir(id) {
        if let Ok(mut c) = Client::connect(&dir) {
            let _ = c.call(&Request::Kill {
                signal: libc::SIGKILL,
                all: true,
            });
        }
    }
    if !crate::process::wait_exit(pid, start_time, STOP_TIMEOUT)
        && crate::state::process_alive(pid, start_time)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        crate::process::wait_exit(pid, start_time, STOP_TIMEOUT);
    }
}

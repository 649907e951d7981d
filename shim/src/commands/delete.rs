//! `bulkhead delete [--force] ID`: remove a stopped container (or kill it first with --force);
//! runs poststop hooks and removes the cgroups, share and state directory.

use std::time::Duration;

use super::{Ctx, Result};
use crate::control::Request;
use crate::hooks::{self, Phase};
use crate::lifecycle::Delete;
use crate::state::{State, StateError, Status};

/// Time a killed monitor gets to shut its VM down before it is killed itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(ctx: &Ctx, id: &str, force: bool) -> Result<()> {
    let (st, status) = match ctx.load(id) {
        Ok(x) => x,
        // A half-written state directory (create died between mkdir and the first save) is
        // removable with --force, so nothing stays behind.
        Err(super::Error::State(StateError::Corrupt { .. })) if force => {
            super::create::cleanup(ctx, id);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if status.can_delete(id, force)? == Delete::StopFirst {
        stop(ctx, &st, status);
    }
    if let Ok(bundle) = crate::spec::Bundle::load(&st.bundle) {
        let mut stopped = st.clone();
        stopped.status = Status::Stopped;
        if let Err(e) = hooks::run(
            &bundle.spec,
            Phase::Poststop,
            &stopped.oci_json().to_string(),
        ) {
            crate::logging::warn(&bulkhead_protocol::error_chain(&e));
        }
        // The monitor has exited, so its taps are gone; its redirects stay on the engine's
        // interfaces in a namespace that outlives the container.
        if let Some(Some(netns)) = bundle.namespace("network") {
            if let Err(e) = crate::network::release_stale_redirects(&netns) {
                crate::logging::debug(&format!("network namespace {}: {e}", netns.display()));
            }
        }
    }
    super::create::cleanup(ctx, id);
    Ok(())
}

/// Kills the container through its monitor and waits for the monitor to exit; a monitor that
/// does not exit in time is killed (which ends its VM: the vCPUs are its threads). A container
/// still being created has no init to kill yet: its monitor is killed at once (its mounts go
/// with its mount namespace; the cgroups and state go in `cleanup`).
fn stop(ctx: &Ctx, st: &State, status: Status) {
    let (pid, start_time) = (st.pid, st.monitor_start_time);
    let asked = status != Status::Creating
        && ctx
            .call(
                &st.id,
                &Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                },
            )
            .is_ok();
    if !(asked && crate::process::wait_exit(pid, start_time, STOP_TIMEOUT))
        && crate::state::process_alive(pid, start_time)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        crate::process::wait_exit(pid, start_time, STOP_TIMEOUT);
    }
}

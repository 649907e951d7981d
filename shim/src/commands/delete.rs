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
    } else {
        // "stopped" is what the monitor last wrote (its live file), and a monitor the guest
        // took over could write it while it runs on; its pid is from `state.json`, the
        // host's. A monitor still there is given the time to finish its teardown, then killed:
        // no container outlives its delete.
        end_monitor(st.pid, st.monitor_start_time, true);
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
    end_monitor(pid, start_time, asked);
}

/// Makes sure the monitor `pid` (started at `start_time`) is gone: with `ending` (it was
/// asked to stop, or says it has) it gets [`STOP_TIMEOUT`] to exit by itself first; one still
/// there is SIGKILLed and waited for.
fn end_monitor(pid: i32, start_time: u64, ending: bool) {
    if !(ending && crate::process::wait_exit(pid, start_time, STOP_TIMEOUT))
        && crate::state::process_alive(pid, start_time)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        crate::process::wait_exit(pid, start_time, STOP_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{State, Store, OCI_VERSION};
    use std::os::unix::process::ExitStatusExt;

    /// A monitor that says "stopped" in its live file while it runs (what one the guest took
    /// over could write) is still ended by `delete`: its pid comes from `state.json`.
    #[test]
    fn a_monitor_that_claims_to_have_stopped_does_not_outlive_its_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("root"));
        store.create_dir("liar").unwrap();
        let mut monitor = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = monitor.id() as i32;
        let mut st = State {
            oci_version: OCI_VERSION.into(),
            id: "liar".into(),
            status: Status::Running,
            pid,
            bundle: tmp.path().join("no-bundle"),
            rootfs: tmp.path().join("no-bundle/rootfs"),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
            monitor_start_time: crate::state::process_start_time(pid).unwrap(),
            cgroup_dirs: Vec::new(),
            vm: None,
            exit_status: None,
        };
        store.save(&st).unwrap();
        st.status = Status::Stopped;
        st.exit_status = Some(0);
        store.save_live(&st).unwrap();
        let ctx = Ctx {
            global: crate::cli::GlobalOpts {
                root: store.root().to_path_buf(),
                log: None,
                log_format: crate::cli::LogFormat::Text,
                debug: false,
                systemd_cgroup: false,
                rootless: None,
                criu: None,
            },
            store,
        };
        assert_eq!(ctx.load("liar").unwrap().1, Status::Stopped, "it says so");
        run(&ctx, "liar", false).unwrap();
        let end = monitor.wait().unwrap();
        assert_eq!(end.signal(), Some(libc::SIGKILL), "{end:?}");
        assert!(!tmp.path().join("root/liar").exists());
    }
}

//! `bulkhead start`: release the init of a created container, then run poststart hooks.

use super::{Ctx, Error, Result};
use crate::control::{Client, Request};
use crate::hooks::{self, Phase};
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let (st, status) = ctx.load(id)?;
    match status {
        Status::Created => {}
        Status::Stopped => return Err(super::usage("cannot start a container that has stopped")),
        Status::Running | Status::Paused => {
            return Err(super::usage("cannot start an already running container"))
        }
        Status::Creating => {
            return Err(super::usage(
                "cannot start a container that is still being created",
            ))
        }
    }
    let dir = ctx.store.dir(id)?;
    Client::connect(&dir)?.call(&Request::Start)?;
    // poststart hooks run in the runtime after the init was released, as in runc.
    if let Ok(bundle) = crate::spec::Bundle::load(&st.bundle) {
        let mut now = ctx.store.load(id)?;
        now.status = now.current_status();
        if let Err(e) = hooks::run(&bundle.spec, Phase::Poststart, &now.oci_json().to_string()) {
            let _ = Client::connect(&dir).and_then(|mut c| {
                c.call(&Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                })
            });
            return Err(Error::Hook(e));
        }
    }
    Ok(())
}

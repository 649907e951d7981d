//! `bulkhead start`: release the init of a created container, then run poststart hooks. A
//! container still being created is waited for (by its monitor) instead of refused.

use super::{Ctx, Error, Result};
use crate::control::Request;
use crate::hooks::{self, Phase};
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let st = ctx.check(id, Status::can_start)?;
    ctx.call(id, &Request::Start)?;
    // poststart hooks run in the runtime after the init was released, as in runc.
    if let Ok(bundle) = crate::spec::Bundle::load(&st.bundle) {
        let mut now = ctx.store.load(id)?;
        now.status = now.current_status();
        if let Err(e) = hooks::run(&bundle.spec, Phase::Poststart, &now.oci_json().to_string()) {
            let _ = ctx.call(
                id,
                &Request::Kill {
                    signal: libc::SIGKILL,
                    all: true,
                },
            );
            return Err(Error::Hook(e));
        }
    }
    Ok(())
}

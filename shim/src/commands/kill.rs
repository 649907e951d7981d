//! `bulkhead kill [--all] ID [SIGNAL]`.

use super::{Ctx, Result};
use crate::cli::KillArgs;
use crate::control::Request;
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &KillArgs) -> Result<()> {
    let signal = match &args.signal {
        Some(s) => crate::signal::parse(s)?,
        None => libc::SIGTERM,
    };
    ctx.check(&args.id, Status::can_kill)?;
    ctx.call(
        &args.id,
        &Request::Kill {
            signal,
            all: args.all,
        },
    )?;
    Ok(())
}

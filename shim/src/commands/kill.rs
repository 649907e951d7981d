//! `bulkhead kill [--all] ID [SIGNAL]`.

use super::{Ctx, Result};
use crate::cli::KillArgs;
use crate::control::{Client, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &KillArgs) -> Result<()> {
    let signal = match &args.signal {
        Some(s) => crate::signal::parse(s)?,
        None => libc::SIGTERM,
    };
    let (_, status) = ctx.load(&args.id)?;
    if status == Status::Stopped {
        return Err(super::usage("container not running"));
    }
    Client::connect(&ctx.store.dir(&args.id)?)?.call(&Request::Kill {
        signal,
        all: args.all,
    })?;
    Ok(())
}

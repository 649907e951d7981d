//! `bulkhead resume`: thaw a paused container.

use super::{Ctx, Result};
use crate::control::{Client, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let (_, status) = ctx.load(id)?;
    if status != Status::Paused {
        return Err(super::usage("container not paused"));
    }
    Client::connect(&ctx.store.dir(id)?)?.call(&Request::Resume)?;
    Ok(())
}

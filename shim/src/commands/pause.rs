//! `bulkhead pause`: freeze the container's processes (inside the guest).

use super::{Ctx, Result};
use crate::control::{Client, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    let (_, status) = ctx.load(id)?;
    if status != Status::Running {
        return Err(super::usage("container not running"));
    }
    Client::connect(&ctx.store.dir(id)?)?.call(&Request::Pause)?;
    Ok(())
}

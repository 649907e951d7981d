//! `bulkhead pause`: freeze the container's processes (inside the guest).

use super::{Ctx, Result};
use crate::control::Request;
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.check(id, Status::can_pause)?;
    ctx.call(id, &Request::Pause)?;
    Ok(())
}

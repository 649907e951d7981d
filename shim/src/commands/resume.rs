//! `bulkhead resume`: thaw a paused container.

use super::{Ctx, Result};
use crate::control::Request;
use crate::state::Status;

pub fn run(ctx: &Ctx, id: &str) -> Result<()> {
    ctx.check(id, Status::can_resume)?;
    ctx.call(id, &Request::Resume)?;
    Ok(())
}

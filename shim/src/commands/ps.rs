//! `bulkhead ps`: the container's processes. Pids are the guest's: the container's processes do
//! not exist on the host (the host side of a container is its monitor).

use super::{Ctx, Result};
use crate::cli::{ListFormat, PsArgs};
use crate::control::{ControlError, Done, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &PsArgs) -> Result<()> {
    ctx.check(&args.id, Status::can_inspect)?;
    let Done::Pids { pids } = ctx.call(&args.id, &Request::Pids)? else {
        return Err(ControlError::Unexpected("pids").into());
    };
    match args.format {
        ListFormat::Json => println!(
            "{}",
            serde_json::to_string(&pids).unwrap_or_else(|_| "[]".into())
        ),
        ListFormat::Table => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
    }
    Ok(())
}

//! `bulkhead ps`: the container's processes. Pids are the guest's: the container's processes do
//! not exist on the host (the host side of a container is its monitor).

use super::{Ctx, Result};
use crate::cli::{ListFormat, PsArgs};
use crate::control::{Client, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &PsArgs) -> Result<()> {
    let (_, status) = ctx.load(&args.id)?;
    if status == Status::Stopped {
        return Err(super::usage("container not running"));
    }
    let data = Client::connect(&ctx.store.dir(&args.id)?)?.call(&Request::Pids)?;
    let pids: Vec<i32> = data
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
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

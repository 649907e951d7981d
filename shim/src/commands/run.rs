//! `bulkhead run`: create + start; in the foreground it waits for the container, forwarding
//! signals to it, exits with its status and deletes it (unless --keep).

use nix::sys::wait::{waitpid, WaitStatus};

use super::{Ctx, Result};
use crate::cli::RunArgs;
use crate::console::RawTerminal;
use crate::sandbox::SandboxFactory;

pub fn run<F: SandboxFactory>(ctx: &Ctx, factory: &F, args: &RunArgs) -> Result<i32> {
    let foreground = !args.create.detach;
    // Signals are blocked before the monitor is forked so none is lost in between.
    let signals = foreground.then(crate::process::block_forwarded);
    let raw = foreground.then(RawTerminal::stdin).flatten();
    let pid = super::create::create(ctx, factory, &args.create, foreground)?;
    if let Err(e) = super::start::run(ctx, &args.create.id) {
        let _ = super::delete::run(ctx, &args.create.id, true);
        let _ = waitpid(pid, None);
        return Err(e);
    }
    let Some(signals) = signals else { return Ok(0) };
    std::thread::spawn(move || {
        while let Some(sig) = crate::process::next_signal(&signals) {
            // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
            unsafe { libc::kill(pid.as_raw(), sig) };
        }
    });
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break crate::signal::killed_status(s as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    drop(raw);
    if !args.keep {
        super::delete::run(ctx, &args.create.id, true)?;
    }
    Ok(code)
}

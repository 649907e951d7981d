//! Bulkhead's runc-compatible OCI runtime: CLI, sandbox monitor, exec proxies.
//!
//! Module map: [`cli`] parses runc's command line; [`commands`] holds one file per subcommand;
//! [`state`] is the state store; [`monitor`] is the per-container sandbox monitor process and
//! [`control`] its socket protocol; [`sandbox`] is the seam to what runs the container, with
//! [`vm`] the one real implementation; [`spec`], [`share`], [`cgroups`], [`hooks`], [`console`],
//! [`mountpoints`], [`config`], [`logging`], [`signal`] and [`process`] are the pieces they are
//! built from.

pub mod cgroups;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod hooks;
pub mod logging;
pub mod monitor;
pub mod mountpoints;
pub mod process;
pub mod sandbox;
pub mod share;
pub mod signal;
pub mod spec;
pub mod state;
pub mod trace_bridge;
pub mod vm;

use clap::Parser;

/// Parses the process arguments and runs the command with `factory` booting sandboxes.
/// Returns the process exit status.
pub fn main_with(factory: &dyn sandbox::SandboxFactory) -> i32 {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    run(cli, factory)
}

/// Runs a parsed command line.
pub fn run(cli: cli::Cli, factory: &dyn sandbox::SandboxFactory) -> i32 {
    logging::init(logging::Logger {
        file: cli.global.log.clone(),
        format: cli.global.log_format,
        debug: cli.global.debug,
    });
    trace_bridge::install(cli.global.log.is_some(), cli.global.debug);
    match commands::dispatch(cli, factory) {
        Ok(code) => code,
        Err(e) => {
            logging::error(&e.to_string());
            1
        }
    }
}

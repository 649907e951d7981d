//! Bulkhead's runc-compatible OCI runtime: CLI, sandbox monitor, exec proxies.
//!
//! Module map (`docs/ARCHITECTURE.md` walks one `docker run` through them): [`cli`] parses
//! runc's command line; [`commands`] holds one file per subcommand; [`lifecycle`] is the one
//! owner of the OCI lifecycle rules; [`state`] is the state store; [`monitor`] is the
//! per-container sandbox monitor process and [`control`] its socket protocol; [`sandbox`] is
//! the seam to what runs the container, with [`vm`] the one real implementation; [`error`] is
//! the error that crosses those seams with its kind; [`template`] keeps the snapshots VMs
//! are restored from; [`spec`], [`share`], [`cgroups`], [`private`],
//! [`stats`], [`hooks`], [`console`], [`mountpoints`], [`config`], [`logging`], [`signal`] and
//! [`process`] are the pieces they are built from.

pub mod cgroups;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod error;
pub mod hooks;
pub mod lifecycle;
pub mod logging;
pub mod monitor;
pub mod mountpoints;
pub mod network;
pub mod private;
pub mod process;
pub mod sandbox;
pub mod share;
pub mod signal;
pub mod spec;
pub mod state;
pub mod stats;
pub mod template;
pub mod trace_bridge;
pub mod vm;

use clap::Parser;

/// Parses the process arguments and runs the command with `factory` booting sandboxes.
/// Returns the process exit status.
pub fn main_with<F: sandbox::SandboxFactory>(factory: &F) -> i32 {
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
pub fn run<F: sandbox::SandboxFactory>(cli: cli::Cli, factory: &F) -> i32 {
    logging::init(logging::Logger {
        file: cli.global.log.clone(),
        format: cli.global.log_format,
        debug: cli.global.debug,
    });
    trace_bridge::install(cli.global.log.is_some(), cli.global.debug);
    match commands::dispatch(cli, factory) {
        Ok(code) => code,
        Err(e) => {
            logging::error(&bulkhead_protocol::error_chain(&e));
            1
        }
    }
}

//! `bulkhead-agent`: PID 1 in the guest. Mounts the basics, then serves the host over vsock.
//!
//!     bulkhead-agent                      as the guest's /init: vsock ports 1024 and 1025
//!     bulkhead-agent --listen-unix DIR    on the host, for tests: DIR/1024 and DIR/1025

#[allow(dead_code)] // Container::id and ::is_paused are not needed by the server
mod container;
mod init;
mod network;
mod process;
mod reaper;
mod refresh;
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};

use server::listen::Transport;
use server::{OnShutdown, Server};

/// Writes one line to stderr (the serial console in the guest) with a single write: console
/// output is slow in the guest, so the agent only logs errors and its start.
pub fn log(msg: &str) {
    let line = format!("bulkhead-agent: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Where to serve, from the command line. The kernel passes init unknown boot parameters as
/// arguments, so as PID 1 anything else is ignored.
fn transport(args: &[String], pid1: bool) -> Result<Transport, String> {
    match args {
        [flag, dir] if flag == "--listen-unix" => Ok(Transport::Unix(PathBuf::from(dir))),
        _ if pid1 => Ok(Transport::Vsock),
        _ => Err("not PID 1: use --listen-unix DIR to serve on Unix sockets".into()),
    }
}

fn main() {
    // Before any thread exists, so every thread inherits the mask and only the reaper
    // collects children.
    if let Err(e) = reaper::block_sigchld_and_sigpipe() {
        log(&e.to_string());
        std::process::exit(1);
    }
    let pid1 = std::process::id() == 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let transport = match transport(&args, pid1) {
        Ok(t) => t,
        Err(e) => {
            log(&e);
            std::process::exit(2);
        }
    };
    // Never reboot the machine the agent is tested on: only PID 1 of a guest does that.
    let on_shutdown = if pid1 && transport == Transport::Vsock {
        init::reboot_on_panic();
        if let Err(e) = init::setup() {
            fail(&e);
        }
        if let Err(e) = container::prepare_guest() {
            log(&bulkhead_protocol::error_chain(&e));
        }
        OnShutdown::Reboot
    } else {
        init::ensure_stdio(Path::new("/dev/null"));
        // Orphans of container setup come to the agent, as they do to PID 1 in the guest.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        OnShutdown::Exit
    };
    let result = reaper::Reaper::start()
        .map_err(|e| bulkhead_protocol::error_chain(&e))
        .and_then(|reaper| {
            Server::new(transport, reaper, on_shutdown)
                .map_err(|e| bulkhead_protocol::error_chain(&e))
        });
    let server = match result {
        Ok(s) => s,
        Err(e) => {
            log(&e);
            finish(on_shutdown, 1)
        }
    };
    log("ready");
    match server.run() {
        Ok(next) => finish(next, 0),
        Err(e) => {
            log(&bulkhead_protocol::error_chain(&e));
            finish(on_shutdown, 1)
        }
    }
}

fn fail(e: &dyn std::error::Error) -> ! {
    log(&bulkhead_protocol::error_chain(e));
    init::power_off()
}

fn finish(on_shutdown: OnShutdown, code: i32) -> ! {
    match on_shutdown {
        OnShutdown::Reboot => init::power_off(),
        OnShutdown::Exit => std::process::exit(code),
    }
}

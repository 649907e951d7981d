//! `bulkhead-agent`: PID 1 in the guest. Mounts the basics, then serves the host over vsock.

// The server that uses these lands next; until then only the types are shared.
#[allow(dead_code, unused_imports)]
mod process;
#[allow(dead_code)]
mod reaper;

fn main() {
    // Before any thread exists, so every thread inherits the mask and only the reaper
    // collects children.
    if let Err(e) = reaper::block_sigchld() {
        eprintln!("bulkhead-agent: {e}");
        std::process::exit(1);
    }
}

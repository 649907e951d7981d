//! `bulkhead-agent`: PID 1 in the guest. Mounts the basics, then serves the host over vsock.

#[allow(dead_code)] // until init wires it up
mod reaper;

fn main() {}

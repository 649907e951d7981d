//! `bulkhead-agent`: PID 1 in the guest. Mounts the basics, then serves the host over vsock.

fn main() {}

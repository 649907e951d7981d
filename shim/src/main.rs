//! `bulkhead`: the runc-compatible OCI runtime CLI.

fn main() {}

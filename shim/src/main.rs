//! `bulkhead`: the runc-compatible OCI runtime CLI. Everything lives in the library.

fn main() {
    std::process::exit(bulkhead_shim::main_with(&bulkhead_shim::vm::VmFactory));
}

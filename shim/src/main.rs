//! `bulkhead`: the runc-compatible OCI runtime CLI. Everything lives in the library.

fn main() {
    // A container's virtio-fs server is this binary started again by its monitor: it never
    // returns.
    bulkhead_vmm::devices::virtio::fs::server::main_if_requested();
    std::process::exit(bulkhead_shim::main_with(&bulkhead_shim::vm::VmFactory));
}

//! `containerd-shim-bulkhead-v2`: containerd's runtime `io.containerd.bulkhead.v2`.
//!
//! containerd starts it per container, talks containerd's task API to it over ttrpc, and it
//! runs each container with the `bulkhead` runtime CLI, which boots (or restores) the
//! container's micro-VM: the same binary, monitor and agent as under Docker and podman, so no
//! second copy of the lifecycle exists. See docs/DESIGN-NOTES.md, "containerd shim v2".

mod exits;
mod process;
mod rootfs;
mod runtime;
mod service;
mod stats;
mod stdio;
mod table;
mod task;

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.bulkhead.v2";

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<service::Service>(RUNTIME_ID, None).await;
}

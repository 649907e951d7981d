//! Device-level tests: the driver side is simulated with virtio-queue's mock rings, the device
//! and its confined worker thread are real, and so is the shared directory (a temporary one).

mod client;
mod escape;
mod harness;
mod malformed;
mod open_files;
mod ops;
mod sandbox;
mod setid;

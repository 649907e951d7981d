//! Device-level tests: the driver side is simulated with virtio-queue's mock rings, the host
//! side with real Unix sockets, and the event loop is the real event manager.

mod guest;
mod harness;
mod host;
mod malformed;
mod notify;
mod restore;

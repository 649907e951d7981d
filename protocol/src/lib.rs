//! The host ↔ guest-agent API, shared by the shim and the agent so the two can never drift.
//!
//! - [`api`]: the call messages, generated from `proto/agent.proto` (read it first: it documents
//!   every call and the life of a process);
//! - [`rpc`] and [`frame`]: the ttrpc wire format — frames, request/response envelopes, methods,
//!   status codes — used by both ends;
//! - [`stream`]: the header of the per-stream stdio connections (stdio never rides in a call);
//! - [`dev`]: the entries the agent makes in a container's `/dev`;
//! - [`client`]: the host-side client (hybrid-vsock or Unix-socket transport, a timeout on every
//!   call).
//!
//! The agent listens on vsock port [`CONTROL_PORT`] for calls and [`STREAM_PORT`] for stdio.

/// The protobuf runtime the messages are built on (so users need not pin the same version).
pub use protobuf;

pub mod client;
pub mod dev;
pub mod frame;
pub mod rpc;
pub mod stream;

#[cfg(test)]
mod ttrpc_compat;

/// Messages of the agent API (generated from `proto/agent.proto`).
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_attributes,
    unused_mut,
    unused_results
)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc envelope messages (generated from `proto/ttrpc.proto`).
#[allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_attributes,
    unused_mut,
    unused_results
)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));
}

/// vsock port of the agent's ttrpc service.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port for stdio stream connections.
pub const STREAM_PORT: u32 = 1025;
/// Version of the API's meaning; reported by the Version call.
pub const PROTOCOL_VERSION: u32 = 1;
/// Where the agent mounts a container's virtio-fs share (`CreateContainerRequest.share_tag`);
/// a relative `rootfs` is taken inside it, and spec paths the host rewrites point below it.
pub const GUEST_SHARE_DIR: &str = "/run/bulkhead/share";
/// Longest process or container id.
pub const MAX_ID_LEN: usize = 1024;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id length {0} is not within 1..=1024")]
    Length(usize),
    #[error("id is not utf-8")]
    Utf8,
    #[error("id contains {0:?}")]
    Char(char),
    #[error("id may not be . or ..")]
    Dots,
}

/// Checks a process or container id: 1..=[`MAX_ID_LEN`] bytes of `[A-Za-z0-9_.+-]` (runc's
/// rule for container ids), not `.` or `..`. Ids appear in guest paths, so nothing else is let in.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(IdError::Length(id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return Err(IdError::Char(c));
    }
    if id == "." || id == ".." {
        return Err(IdError::Dots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        assert!(validate_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(validate_id(""), Err(IdError::Length(0)));
        assert_eq!(
            validate_id(&"a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::Length(MAX_ID_LEN + 1))
        );
        assert_eq!(validate_id("a b"), Err(IdError::Char(' ')));
        assert_eq!(validate_id("../x"), Err(IdError::Char('/')));
        assert_eq!(validate_id(".."), Err(IdError::Dots));
    }
}

//! The host ↔ guest-agent API, shared by the shim and the agent so the two can never drift.
//!
//! - [`api`]: the call messages, generated from `proto/agent.proto` (read it first: it documents
//!   every call and the life of a process);
//! - [`rpc`] and [`frame`]: the ttrpc wire format — frames, request/response envelopes, methods,
//!   status codes — used by both ends;
//! - [`stream`]: the header of the per-stream stdio connections (stdio never rides in a call);
//! - [`dev`]: the entries the agent makes in a container's `/dev`;
//! - [`client`] (feature `client`, host only): the agent client — async on tokio, with a
//!   blocking facade — over hybrid vsock or Unix sockets, a deadline on every call;
//! - [`error_chain`]: how every Bulkhead program turns an error and its sources into one line.
//!
//! The agent listens on vsock port [`CONTROL_PORT`] for calls and [`STREAM_PORT`] for stdio.

/// The protobuf runtime the messages are built on (so users need not pin the same version).
pub use protobuf;

#[cfg(feature = "client")]
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

/// An error and its sources as one line, `outer: inner: innermost` — what a user reads, since
/// each of our error types says only its own part and keeps the cause as its source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        // A transparent wrapper repeats its source's text: say it once.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Ids up to this long name files and directories as they are.
const MAX_PLAIN_NAME: usize = 128;
/// How much of a longer id its file name keeps before the hash.
const NAME_PREFIX: usize = 95;

/// The file or directory name that stands for a (valid) id: the id itself when it is at most
/// 128 bytes, else its first 95 bytes, `-` and 32 hex digits of its SHA-256. Ids may be 1024
/// bytes long, file names only 255 (and our names add suffixes such as `.console.log`), so every
/// name derived from an id goes through here: the state directory, log files, default host
/// cgroups, the guest's cgroup.
pub fn id_file_name(id: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if id.len() <= MAX_PLAIN_NAME {
        return std::borrow::Cow::Borrowed(id);
    }
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let prefix = id.get(..NAME_PREFIX).unwrap_or("");
    std::borrow::Cow::Owned(format!("{prefix}-{hex}"))
}

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

    #[test]
    fn long_ids_get_short_distinct_file_names() {
        assert_eq!(id_file_name("abc"), "abc");
        let plain = "p".repeat(MAX_PLAIN_NAME);
        assert_eq!(id_file_name(&plain), plain);
        let a = format!("{}a", "x".repeat(1023));
        let b = format!("{}b", "x".repeat(1023));
        let (na, nb) = (id_file_name(&a), id_file_name(&b));
        assert_ne!(na, nb);
        assert_eq!(na.len(), MAX_PLAIN_NAME);
        assert!(na.starts_with(&"x".repeat(NAME_PREFIX)));
        assert_eq!(id_file_name(&a), na, "names are stable");
    }

    #[test]
    fn error_chains_read_as_one_line() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Same(#[source] std::io::Error);
        let io = || std::io::Error::from_raw_os_error(libc_enoent());
        assert_eq!(error_chain(&Outer(io())), format!("outer: {}", io()));
        // A wrapper that shows its source's text does not repeat it.
        assert_eq!(error_chain(&Same(io())), io().to_string());
    }

    fn libc_enoent() -> i32 {
        2
    }
}

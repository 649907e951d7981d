//! The one error that crosses the shim's seams: from the guest agent (its status code), the
//! lifecycle rules and the monitor's host-side steps, over the control socket, to the CLI —
//! keeping its [`Kind`], so no caller ever has to tell "not found" from "permission denied" by
//! reading the text. The text is the user's: runc's wording where engines match it.

use bulkhead_protocol::rpc::Code;
use serde::{Deserialize, Serialize};

/// What kind of failure it was. Mirrors the google.rpc codes the agent answers with, minus the
/// ones that never reach a user (`Ok`, `Cancelled`, `Aborted`, …: they become [`Kind::Internal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The request (a spec, a process, an id, a flag) is wrong.
    InvalidArgument,
    /// Something named does not exist: a container, a process, an executable.
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// The request does not fit the container's state (runc's "container not running", …).
    FailedPrecondition,
    /// A limit was hit (pids, memory, connections).
    ResourceExhausted,
    /// The VM or its agent is gone or not reachable.
    Unavailable,
    /// The guest did not answer in time.
    DeadlineExceeded,
    /// Not something this runtime does.
    Unsupported,
    /// A bug or a host failure.
    Internal,
}

impl From<Code> for Kind {
    fn from(code: Code) -> Kind {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Kind::InvalidArgument,
            Code::NotFound => Kind::NotFound,
            Code::AlreadyExists => Kind::AlreadyExists,
            Code::PermissionDenied | Code::Unauthenticated => Kind::PermissionDenied,
            Code::FailedPrecondition => Kind::FailedPrecondition,
            Code::ResourceExhausted => Kind::ResourceExhausted,
            Code::Unavailable => Kind::Unavailable,
            Code::DeadlineExceeded => Kind::DeadlineExceeded,
            Code::Unimplemented => Kind::Unsupported,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::DataLoss => Kind::Internal,
        }
    }
}

/// A failure with its kind and its one-line message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: crate::logging::one_line(&message.into()),
        }
    }

    /// Any error with its sources, as one line, with the kind the caller knows it to be.
    pub fn from_error(kind: Kind, e: &dyn std::error::Error) -> Failure {
        Failure::new(kind, bulkhead_protocol::error_chain(e))
    }
}

/// Errors that know their own kind; every error the monitor can answer with is one.
pub trait HasKind: std::error::Error {
    fn kind(&self) -> Kind;

    /// The error as a [`Failure`] for the wire.
    fn failure(&self) -> Failure
    where
        Self: Sized,
    {
        Failure::from_error(self.kind(), self)
    }
}

impl HasKind for Failure {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn failure(&self) -> Failure {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_codes_keep_their_kind() {
        assert_eq!(Kind::from(Code::NotFound), Kind::NotFound);
        assert_eq!(Kind::from(Code::PermissionDenied), Kind::PermissionDenied);
        assert_eq!(
            Kind::from(Code::FailedPrecondition),
            Kind::FailedPrecondition
        );
        assert_eq!(Kind::from(Code::Unknown), Kind::Internal);
    }

    #[test]
    fn failures_travel_as_json_and_stay_one_line() {
        let f = Failure::new(Kind::NotFound, "first\nsecond");
        assert_eq!(f.message, "first: second");
        let wire = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Failure>(&wire).unwrap(), f);
        assert!(wire.contains("\"kind\":\"not_found\""), "{wire}");
    }
}

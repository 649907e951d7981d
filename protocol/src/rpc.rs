//! The ttrpc call layer: which methods exist, the request/response envelopes, status codes.
//!
//! A request frame carries a `ttrpc.Request` naming service and method with the call message as
//! bytes; the response frame with the same stream id carries a `ttrpc.Response` with a status
//! (code 0 is success) and the result message. Both ends use these helpers, so the method table
//! and the envelope can never disagree.

use std::time::Duration;

use protobuf::Message;

use crate::frame::{self, Frame, FrameError, KIND_REQUEST, KIND_RESPONSE};
use crate::wire;

/// The ttrpc service name of the agent API.
pub const SERVICE: &str = "bulkhead.agent.v1.Agent";

macro_rules! methods {
    ($($name:ident),* $(,)?) => {
        /// Every call of the agent API (see proto/agent.proto).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method { $($name),* }

        impl Method {
            /// All methods, in proto order.
            pub const ALL: &'static [Method] = &[$(Method::$name),*];

            /// The method name on the wire.
            pub fn name(self) -> &'static str {
                match self { $(Method::$name => stringify!($name)),* }
            }

            /// The method with this wire name.
            pub fn from_name(name: &str) -> Option<Method> {
                match name { $(stringify!($name) => Some(Method::$name),)* _ => None }
            }
        }
    };
}

methods!(
    Version,
    CreateProcess,
    StartProcess,
    SignalProcess,
    WaitProcess,
    ResizeTerminal,
    CloseStdin,
    RemoveProcess,
    CreateContainer,
    StartContainer,
    ListProcesses,
    PauseContainer,
    ResumeContainer,
    UpdateContainer,
    Stats,
    RemoveContainer,
    Shutdown,
    Refresh,
    ConfigureNetwork,
);

/// google.rpc status codes, as carried in `ttrpc.Status.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a wire value; values this side does not know become [`Code::Unknown`].
    pub fn from_i32(value: i32) -> Code {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        usize::try_from(value)
            .ok()
            .and_then(|i| ALL.get(i).copied())
            .unwrap_or(Unknown)
    }
}

/// A failed call as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }
}

/// Errors of the call layer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("framing")]
    Frame(#[from] FrameError),
    #[error("encode message")]
    Encode(#[source] protobuf::Error),
    #[error("decode message")]
    Decode(#[source] protobuf::Error),
    #[error("unexpected frame type {0}")]
    UnexpectedKind(u8),
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
}

/// A decoded request: which call, and its still-encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub stream_id: u32,
    pub method: Method,
    pub payload: Vec<u8>,
    /// How long the caller said it would wait; `None` when it did not say.
    pub timeout: Option<Duration>,
}

/// Appends a request frame for `method` with message `msg` to `out`.
pub fn encode_request<M: Message>(
    stream_id: u32,
    method: Method,
    msg: &M,
    timeout: Option<Duration>,
    out: &mut Vec<u8>,
) -> Result<(), RpcError> {
    let req = wire::Request {
        service: SERVICE.to_owned(),
        method: method.name().to_owned(),
        payload: msg.write_to_bytes().map_err(RpcError::Encode)?,
        timeout_nano: timeout.map_or(0, |t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    let bytes = req.write_to_bytes().map_err(RpcError::Encode)?;
    frame::encode(stream_id, KIND_REQUEST, 0, &bytes, out)?;
    Ok(())
}

/// Decodes a request frame. On [`RpcError::UnknownMethod`] the server should still answer the
/// stream id with [`Code::Unimplemented`].
pub fn decode_request(frame: &Frame) -> Result<Call, RpcError> {
    if frame.kind != KIND_REQUEST {
        return Err(RpcError::UnexpectedKind(frame.kind));
    }
    let req = wire::Request::parse_from_bytes(&frame.payload).map_err(RpcError::Decode)?;
    let method = match Method::from_name(&req.method) {
        Some(m) if req.service == SERVICE => m,
        _ => {
            return Err(RpcError::UnknownMethod(format!(
                "/{}/{}",
                req.service, req.method
            )))
        }
    };
    let timeout = u64::try_from(req.timeout_nano)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos);
    Ok(Call {
        stream_id: frame.stream_id,
        method,
        payload: req.payload,
        timeout,
    })
}

/// Appends a response frame to `out`: the encoded result message on success, the status on
/// failure.
pub fn encode_response(
    stream_id: u32,
    result: Result<&[u8], &Status>,
    out: &mut Vec<u8>,
) -> Result<(), RpcError> {
    let mut resp = wire::Response::new();
    match result {
        Ok(payload) => {
            resp.payload = payload.to_vec();
            resp.status.mut_or_insert_default().code = Code::Ok as i32;
        }
        Err(status) => {
            let s = resp.status.mut_or_insert_default();
            s.code = status.code as i32;
            s.message = status.message.clone();
        }
    }
    let bytes = resp.write_to_bytes().map_err(RpcError::Encode)?;
    frame::encode(stream_id, KIND_RESPONSE, 0, &bytes, out)?;
    Ok(())
}

/// Decodes a response frame into the encoded result message or the agent's error status.
pub fn decode_response(frame: &Frame) -> Result<Result<Vec<u8>, Status>, RpcError> {
    if frame.kind != KIND_RESPONSE {
        return Err(RpcError::UnexpectedKind(frame.kind));
    }
    let resp = wire::Response::parse_from_bytes(&frame.payload).map_err(RpcError::Decode)?;
    let code = resp
        .status
        .as_ref()
        .map_or(Code::Ok, |s| Code::from_i32(s.code));
    if code == Code::Ok {
        return Ok(Ok(resp.payload));
    }
    let message = resp
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default();
    Ok(Err(Status { code, message }))
}

/// Decodes a call or result message.
pub fn decode_message<M: Message>(payload: &[u8]) -> Result<M, RpcError> {
    M::parse_from_bytes(payload).map_err(RpcError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;
    use crate::frame::Decoder;

    fn one_frame(bytes: &[u8]) -> Frame {
        let mut dec = Decoder::new();
        dec.push(bytes);
        dec.next_frame().unwrap().unwrap()
    }

    #[test]
    fn method_names_round_trip() {
        assert_eq!(Method::ALL.len(), 19);
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(*m));
        }
        assert_eq!(Method::from_name("Nope"), None);
    }

    #[test]
    fn request_round_trip() {
        let mut msg = api::StartProcessRequest::new();
        msg.id = "p1".into();
        let mut out = Vec::new();
        encode_request(
            7,
            Method::StartProcess,
            &msg,
            Some(Duration::from_secs(2)),
            &mut out,
        )
        .unwrap();
        let call = decode_request(&one_frame(&out)).unwrap();
        assert_eq!(call.stream_id, 7);
        assert_eq!(call.method, Method::StartProcess);
        assert_eq!(call.timeout, Some(Duration::from_secs(2)));
        let back: api::StartProcessRequest = decode_message(&call.payload).unwrap();
        assert_eq!(back.id, "p1");
    }

    #[test]
    fn unknown_methods_and_services_are_named() {
        let req = wire::Request {
            service: "other.Service".into(),
            method: "Version".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        frame::encode(1, KIND_REQUEST, 0, &req.write_to_bytes().unwrap(), &mut out).unwrap();
        match decode_request(&one_frame(&out)) {
            Err(RpcError::UnknownMethod(path)) => assert_eq!(path, "/other.Service/Version"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_carry_result_or_status() {
        let mut ok = api::StartProcessResponse::new();
        ok.pid = 42;
        let mut out = Vec::new();
        encode_response(3, Ok(&ok.write_to_bytes().unwrap()), &mut out).unwrap();
        let payload = decode_response(&one_frame(&out)).unwrap().unwrap();
        let back: api::StartProcessResponse = decode_message(&payload).unwrap();
        assert_eq!(back.pid, 42);

        let mut out = Vec::new();
        let status = Status::new(Code::NotFound, "process \"x\" not found");
        encode_response(3, Err(&status), &mut out).unwrap();
        assert_eq!(decode_response(&one_frame(&out)).unwrap(), Err(status));
    }

    #[test]
    fn unknown_codes_become_unknown() {
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::from_i32(12), Code::Unimplemented);
    }

    #[test]
    fn wrong_frame_kinds_are_rejected() {
        let mut out = Vec::new();
        frame::encode(1, KIND_RESPONSE, 0, b"", &mut out).unwrap();
        assert!(matches!(
            decode_request(&one_frame(&out)),
            Err(RpcError::UnexpectedKind(KIND_RESPONSE))
        ));
    }
}

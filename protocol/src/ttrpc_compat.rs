//! Wire compatibility with the `ttrpc` crate: its generated client (from the same proto) calls a
//! server built on our frame and rpc code, so the two implementations agree on every byte.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

use crate::frame::Decoder;
use crate::rpc::{self, Method};

mod agent {
    pub use crate::api::*;
}

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports
)]
mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

#[test]
fn ttrpc_crate_client_talks_to_our_framing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        let mut answered = 0;
        while answered < 2 {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            dec.push(&buf[..n]);
            while let Some(frame) = dec.next_frame().unwrap() {
                let call = rpc::decode_request(&frame).unwrap();
                let mut out = Vec::new();
                match call.method {
                    Method::Version => {
                        let resp = crate::api::VersionResponse {
                            agent_version: "x".into(),
                            protocol_version: crate::PROTOCOL_VERSION,
                            ..Default::default()
                        };
                        let bytes = protobuf::Message::write_to_bytes(&resp).unwrap();
                        rpc::encode_response(call.stream_id, Ok(&bytes), &mut out).unwrap();
                    }
                    _ => {
                        let status = rpc::Status::new(rpc::Code::NotFound, "no such process");
                        rpc::encode_response(call.stream_id, Err(&status), &mut out).unwrap();
                    }
                }
                conn.write_all(&out).unwrap();
                answered += 1;
            }
        }
    });
    let client = ttrpc::Client::connect(&format!("unix://{}", path.display())).unwrap();
    let client = agent_ttrpc::AgentClient::new(client);
    let ctx = || ttrpc::context::with_duration(std::time::Duration::from_secs(5));
    let v = client
        .version(ctx(), &crate::api::VersionRequest::new())
        .unwrap();
    assert_eq!(v.agent_version, "x");
    assert_eq!(v.protocol_version, crate::PROTOCOL_VERSION);
    let err = client
        .wait_process(ctx(), &crate::api::WaitProcessRequest::new())
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
            assert_eq!(s.message(), "no such process");
        }
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

//! The ttrpc frame and message decode path, as both ends run it on what the other side sends
//! (for the host client, a hostile guest): arbitrary bytes split at an arbitrary point go through
//! the frame decoder, then the request or response envelope, then every call message type.
#![no_main]

use bulkhead_protocol::api;
use bulkhead_protocol::frame::Decoder;
use bulkhead_protocol::rpc::{self, Method};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn decode_all(payload: &[u8]) {
    let _ = rpc::decode_message::<api::VersionResponse>(payload);
    let _ = rpc::decode_message::<api::CreateProcessRequest>(payload);
    let _ = rpc::decode_message::<api::StartProcessResponse>(payload);
    let _ = rpc::decode_message::<api::SignalProcessRequest>(payload);
    let _ = rpc::decode_message::<api::WaitProcessResponse>(payload);
    let _ = rpc::decode_message::<api::ResizeTerminalRequest>(payload);
    let _ = rpc::decode_message::<api::CreateContainerRequest>(payload);
    let _ = rpc::decode_message::<api::CreateContainerResponse>(payload);
    let _ = rpc::decode_message::<api::ListProcessesResponse>(payload);
    let _ = rpc::decode_message::<api::UpdateContainerRequest>(payload);
    let _ = rpc::decode_message::<api::RemoveContainerRequest>(payload);
    if let Ok(stats) = rpc::decode_message::<api::StatsResponse>(payload) {
        let _ = stats.write_to_bytes();
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut dec = Decoder::new();
    for piece in [&data[..split], &data[split..]] {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(call) = rpc::decode_request(&frame) {
                        assert!(Method::ALL.contains(&call.method));
                        decode_all(&call.payload);
                    }
                    if let Ok(Ok(payload)) = rpc::decode_response(&frame) {
                        decode_all(&payload);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

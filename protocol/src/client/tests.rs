//! The client against a fake agent speaking the wire format over Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::blocking::Client;
use super::*;
use crate::frame::Decoder;
use crate::rpc::{Call, Code};

enum Action {
    Reply(Vec<u8>),
    Fail(Status),
    Ignore,
    Close,
    Garbage,
}

/// Serves one connection on `dir/1024`, answering each call as `respond` says.
fn fake_agent(
    dir: &Path,
    respond: impl Fn(&Call) -> Action + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(dir.join("1024")).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut dec = Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]);
            while let Some(frame) = dec.next_frame().unwrap() {
                let call = rpc::decode_request(&frame).unwrap();
                let mut out = Vec::new();
                match respond(&call) {
                    Action::Reply(payload) => {
                        let resp = crate::wire::Response {
                            payload,
                            ..Default::default()
                        };
                        let bytes = resp.write_to_bytes().unwrap();
                        crate::frame::encode(call.stream_id, 2, 0, &bytes, &mut out).unwrap();
                    }
                    Action::Fail(status) => {
                        rpc::encode_response(call.stream_id, Err(&status), &mut out).unwrap()
                    }
                    Action::Ignore => {}
                    Action::Close => return,
                    Action::Garbage => out.extend_from_slice(&[0xff; 16]),
                }
                conn.write_all(&out).unwrap();
            }
        }
    })
}

fn version_reply() -> Vec<u8> {
    api::VersionResponse {
        agent_version: "9.9".into(),
        kernel_release: "6.1-test".into(),
        protocol_version: 1,
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

fn quick() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_secs(1),
        retry_interval: Duration::from_millis(20),
    }
}

fn unix(dir: &Path) -> Connector {
    Connector::Unix {
        dir: dir.to_owned(),
    }
}

#[test]
fn calls_get_their_answers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = fake_agent(dir.path(), |call| match call.method {
        Method::Version => Action::Reply(version_reply()),
        _ => Action::Fail(Status::new(Code::NotFound, "process \"p\" not found")),
    });
    let client = Client::connect(unix(dir.path()), quick()).unwrap();
    let v = client.version().unwrap();
    assert_eq!((v.agent_version.as_str(), v.protocol_version), ("9.9", 1));
    match client.start_process("p") {
        Err(ClientError::Agent(s)) => {
            assert_eq!(s.code, Code::NotFound);
            assert_eq!(ClientError::Agent(s).to_string(), "process \"p\" not found");
        }
        other => panic!("{other:?}"),
    }
    drop(client);
    agent.join().unwrap();
}

#[test]
fn a_silent_agent_times_out_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let _agent = fake_agent(dir.path(), |_| Action::Ignore);
    let client = Client::connect(unix(dir.path()), quick()).unwrap();
    let start = Instant::now();
    let err = client.version().unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    assert_eq!(err.to_string(), "agent did not answer within 0.3s");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3));
    // A wait with its own deadline uses that one.
    let start = Instant::now();
    let err = client
        .wait_process("p", Some(Duration::from_millis(100)))
        .unwrap_err();
    assert_eq!(err.to_string(), "agent did not answer within 0.1s");
    assert!(start.elapsed() < Duration::from_millis(250));
}

#[test]
fn an_agent_that_dies_mid_call_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let _agent = fake_agent(dir.path(), |call| match call.method {
        Method::WaitProcess => Action::Close,
        _ => Action::Ignore,
    });
    let mut client = Client::connect(unix(dir.path()), quick()).unwrap();
    client.set_call_timeout(Duration::from_secs(30));
    let start = Instant::now();
    let err = client.wait_process("p", None).unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "agent connection closed");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Later calls fail the same way without waiting.
    assert!(matches!(client.version(), Err(ClientError::Closed)));
}

#[test]
fn a_vanished_vm_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    let vm_dir = vm.clone();
    let _agent = fake_agent(&vm, move |_| {
        std::fs::remove_dir_all(&vm_dir).unwrap();
        let _ = rx.lock().unwrap().recv_timeout(Duration::from_millis(10));
        Action::Close
    });
    let client = Client::connect(unix(&vm), quick()).unwrap();
    let err = client.version().unwrap_err();
    assert!(matches!(err, ClientError::VmGone), "{err:?}");
    assert_eq!(err.to_string(), "vm is gone");
    drop(tx);
}

#[test]
fn concurrent_calls_are_answered_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let pending: std::sync::Mutex<Option<u32>> = Default::default();
    let _agent = fake_agent(dir.path(), move |call| match call.method {
        // Answered only after a later Version call: proves the client multiplexes.
        Method::WaitProcess => {
            *pending.lock().unwrap() = Some(call.stream_id);
            Action::Ignore
        }
        _ => {
            let _ = release_rx.lock().unwrap().try_recv();
            Action::Reply(version_reply())
        }
    });
    let client = std::sync::Arc::new(Client::connect(unix(dir.path()), quick()).unwrap());
    let c2 = client.clone();
    let waiter = std::thread::spawn(move || c2.wait_process("p", Some(Duration::from_millis(800))));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(client.version().unwrap().agent_version, "9.9");
    drop(release_tx);
    // The wait was never answered: it times out on its own deadline, not the version's.
    assert!(matches!(
        waiter.join().unwrap(),
        Err(ClientError::Timeout(_))
    ));
}

#[test]
fn garbage_from_the_agent_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let _agent = fake_agent(dir.path(), |_| Action::Garbage);
    let client = Client::connect(unix(dir.path()), quick()).unwrap();
    let err = client.version().unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}

#[test]
fn connect_waits_for_the_agent_and_gives_up_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        fake_agent(&path, |_| Action::Reply(version_reply()))
    });
    let client = Client::connect(unix(dir.path()), quick()).unwrap();
    assert_eq!(client.version().unwrap().kernel_release, "6.1-test");
    drop(client);
    late.join().unwrap().join().unwrap();

    let empty = tempfile::tempdir().unwrap();
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(400),
        ..quick()
    };
    let start = Instant::now();
    let err = Client::connect(unix(empty.path()), config).err().unwrap();
    assert_eq!(err.to_string(), "agent did not come up within 0.4s");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn streams_start_with_their_header() {
    let dir = tempfile::tempdir().unwrap();
    let _agent = fake_agent(dir.path(), |_| Action::Ignore);
    let streams = UnixListener::bind(dir.path().join("1025")).unwrap();
    let client = Client::connect(unix(dir.path()), quick()).unwrap();
    let mut s = client.open_stream("p1", StreamKind::Stdin).unwrap();
    s.write_all(b"abc").unwrap();
    drop(s);
    let (mut conn, _) = streams.accept().unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    let (header, used) = StreamHeader::decode(&got).unwrap().unwrap();
    assert_eq!(header, StreamHeader::new("p1", StreamKind::Stdin));
    assert_eq!(&got[used..], b"abc");
    assert!(client.open_stream("bad id", StreamKind::Stdout).is_err());
    let _ = UnixStream::pair();
}

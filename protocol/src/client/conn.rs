//! One control connection shared by concurrent calls, owned by one task: callers hand it their
//! encoded request and a reply slot; the task gives each request the next stream id, writes it,
//! reads responses and fills the slot with the same stream id. When the connection ends, every
//! waiting caller is told at once (its slot is filled with why), so nobody sits out a full
//! timeout on a dead agent.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, Decoder, Frame};

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// EOF or a socket error.
    Closed,
    /// The agent sent something that is not a valid frame (text for the log).
    Protocol(String),
    /// A request could not be written within the write deadline: the guest stopped reading,
    /// and a half-written frame leaves the stream unusable.
    WriteTimeout,
}

/// What a waiting caller gets.
pub(crate) enum Reply {
    Frame(Frame),
    Ended(Ended),
}

struct Request {
    frame: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

/// A multiplexed ttrpc connection (cheap to share: calls only queue a request).
pub(crate) struct Conn {
    requests: mpsc::UnboundedSender<Request>,
    ended: Arc<OnceLock<Ended>>,
}

impl Conn {
    /// Takes over `stream` and spawns the task that owns it (on the current tokio runtime).
    /// `write_timeout` bounds how long a request write may block on a guest that stopped
    /// reading.
    pub(crate) fn new(stream: UnixStream, write_timeout: Duration) -> Conn {
        let (requests, rx) = mpsc::unbounded_channel();
        let ended = Arc::new(OnceLock::new());
        tokio::spawn(serve(stream, rx, write_timeout, ended.clone()));
        Conn { requests, ended }
    }

    /// Queues one encoded request frame (its stream id is filled in by the connection task)
    /// and waits for its response, or for the connection's end. Deadlines are the caller's.
    pub(crate) async fn call(&self, request: Vec<u8>) -> Reply {
        let (tx, rx) = oneshot::channel();
        let sent = self.requests.send(Request {
            frame: request,
            reply: tx,
        });
        if sent.is_err() {
            return Reply::Ended(self.why_ended());
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => Reply::Ended(self.why_ended()),
        }
    }

    fn why_ended(&self) -> Ended {
        self.ended.get().cloned().unwrap_or(Ended::Closed)
    }
}

/// The connection task: until the stream ends or every [`Conn`] is dropped.
async fn serve(
    stream: UnixStream,
    mut requests: mpsc::UnboundedReceiver<Request>,
    write_timeout: Duration,
    ended: Arc<OnceLock<Ended>>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut pending: HashMap<u32, oneshot::Sender<Reply>> = HashMap::new();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Client stream ids are odd (ttrpc), wrapping long before u32 runs out.
    let mut next_id: u32 = 1;
    let why = 'conn: loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(Request { mut frame, reply }) = request else {
                    // Every client handle is gone.
                    break Ended::Closed;
                };
                let id = next_id;
                next_id = if id >= u32::MAX - 2 { 1 } else { id + 2 };
                frame::set_stream_id(&mut frame, id);
                // Callers that gave up (their deadline passed) leave closed slots behind.
                pending.retain(|_, slot| !slot.is_closed());
                pending.insert(id, reply);
                match tokio::time::timeout(write_timeout, writer.write_all(&frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Ended::Closed,
                    Err(_) => break Ended::WriteTimeout,
                }
            }
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) => break Ended::Closed,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break Ended::Closed,
                };
                decoder.push(&buf[..n]);
                loop {
                    match decoder.next_frame() {
                        // A response nobody waits for (its caller timed out) is dropped.
                        Ok(Some(frame)) => {
                            if let Some(slot) = pending.remove(&frame.stream_id) {
                                let _ = slot.send(Reply::Frame(frame));
                            }
                        }
                        Ok(None) => break,
                        Err(e) => break 'conn Ended::Protocol(e.to_string()),
                    }
                }
            }
        }
    };
    let _ = ended.set(why.clone());
    requests.close();
    for (_, slot) in pending.drain() {
        let _ = slot.send(Reply::Ended(why.clone()));
    }
    // Requests queued after the end get their answer too.
    while let Ok(Request { reply, .. }) = requests.try_recv() {
        let _ = reply.send(Reply::Ended(why.clone()));
    }
    let _ = writer.shutdown().await;
}

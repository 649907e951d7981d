//! One control connection shared by concurrent calls: callers write their request frame under a
//! lock and wait on a channel; a reader thread hands each response to the caller with the same
//! stream id. When the connection ends, every waiting caller is told at once, so nobody sits out
//! a full timeout on a dead agent.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::frame::{self, Decoder, Frame};

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// EOF or a socket error.
    Closed,
    /// The agent sent something that is not a valid frame (text for the log).
    Protocol(String),
}

/// What a waiting caller gets.
pub(crate) enum Reply {
    Frame(Frame),
    Ended(Ended),
}

/// Outcome of one call at this layer.
pub(crate) enum Outcome {
    Frame(Frame),
    Ended(Ended),
    TimedOut,
    Write(io::Error),
}

#[derive(Default)]
struct State {
    pending: HashMap<u32, SyncSender<Reply>>,
    ended: Option<Ended>,
    next_id: u32,
}

/// A multiplexed ttrpc connection.
pub(crate) struct Conn {
    writer: Mutex<UnixStream>,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// Takes over `stream` and starts its reader thread. `write_timeout` bounds how long a
    /// request write may block on a guest that stopped reading.
    pub(crate) fn new(stream: UnixStream, write_timeout: Duration) -> io::Result<Conn> {
        stream.set_write_timeout(Some(write_timeout))?;
        let reader = stream.try_clone()?;
        let state = Arc::new(Mutex::new(State {
            next_id: 1,
            ..State::default()
        }));
        let shared = state.clone();
        thread::Builder::new()
            .name("agent-conn".into())
            .spawn(move || read_loop(reader, &shared))?;
        Ok(Conn {
            writer: Mutex::new(stream),
            state,
        })
    }

    /// Sends one encoded request frame (its stream id is filled in here) and waits up to
    /// `timeout` (forever with `None`) for its response.
    pub(crate) fn call(&self, mut request: Vec<u8>, timeout: Option<Duration>) -> Outcome {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = {
            let mut st = lock(&self.state);
            if let Some(ended) = &st.ended {
                return Outcome::Ended(ended.clone());
            }
            let id = st.next_id;
            // Client stream ids are odd (ttrpc), wrapping long before u32 runs out.
            st.next_id = if id >= u32::MAX - 2 { 1 } else { id + 2 };
            st.pending.insert(id, tx);
            id
        };
        frame::set_stream_id(&mut request, id);
        let written = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.write_all(&request)
        };
        if let Err(e) = written {
            lock(&self.state).pending.remove(&id);
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Outcome::TimedOut,
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    Outcome::Ended(Ended::Closed)
                }
                _ => Outcome::Write(e),
            };
        }
        let got = match timeout {
            Some(t) => rx.recv_timeout(t),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(Reply::Frame(f)) => Outcome::Frame(f),
            Ok(Reply::Ended(e)) => Outcome::Ended(e),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.state).pending.remove(&id);
                Outcome::TimedOut
            }
            Err(RecvTimeoutError::Disconnected) => Outcome::Ended(Ended::Closed),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Wakes the reader thread, which then exits.
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

fn read_loop(mut stream: UnixStream, state: &Mutex<State>) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let ended = 'conn: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break Ended::Closed,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break Ended::Closed,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    // A response nobody waits for (its caller timed out) is dropped.
                    if let Some(tx) = lock(state).pending.remove(&frame.stream_id) {
                        let _ = tx.try_send(Reply::Frame(frame));
                    }
                }
                Ok(None) => break,
                Err(e) => break 'conn Ended::Protocol(e.to_string()),
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    let mut st = lock(state);
    for (_, tx) in st.pending.drain() {
        let _ = tx.try_send(Reply::Ended(ended.clone()));
    }
    st.ended = Some(ended);
}

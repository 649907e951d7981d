//! Stdio relays between the caller's fds and the agent's stream connections: one task per
//! direction on the monitor's runtime, woken by readiness, never by a timer.
//!
//! Output (guest → host) runs to the stream's EOF; if the host side refuses a write (the engine
//! closed its end), the stream is dropped, and the agent then discards the process's output so
//! the process never blocks on it. Input (host → guest) runs until EOF on the host, passed on as
//! a shutdown of the stream's writing side, or until the process is gone ([`Relays::finish`]):
//! a caller's stdin may never reach EOF.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::hostio::HostIo;

/// The relay tasks of one process.
#[derive(Default)]
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
    inputs: Vec<JoinHandle<()>>,
}

impl Relays {
    /// guest stream → host fd, to EOF.
    pub fn output(&mut self, guest: impl AsyncRead + Unpin + Send + 'static, host: HostIo) {
        self.outputs.push(tokio::spawn(copy_out(guest, host)));
    }

    /// host fd → guest stream, until EOF on the host or [`Relays::finish`].
    pub fn input(&mut self, host: HostIo, guest: impl AsyncWrite + Unpin + Send + 'static) {
        self.inputs.push(tokio::spawn(copy_in(host, guest)));
    }

    /// Waits (up to `timeout`) until every output reached EOF, then stops the input relays.
    pub async fn finish(mut self, timeout: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let _ = tokio::time::timeout(timeout, async {
            for task in outputs {
                let _ = task.await;
            }
        })
        .await;
        // Drop aborts whatever is left (inputs, and outputs that ran out of time).
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for task in self.outputs.iter().chain(&self.inputs) {
            task.abort();
        }
    }
}

const CHUNK: usize = 64 * 1024;

/// Copies the stream to the host fd with plain reads and writes.
///
/// Never `splice(2)` (which `std::io::copy` uses into a pipe): Linux holds the pipe's mutex for
/// the whole splice, including the wait for socket data, so the engine's `read` of the pipe
/// blocks, and a chunk already moved may stay unreadable until the next one arrives (`docker
/// logs` missed a container's first line about one run in three).
async fn copy_out(mut guest: impl AsyncRead + Unpin, host: HostIo) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match guest.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if host.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn copy_in(host: HostIo, mut guest: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match host.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if guest.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = guest.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::super::hostio::Direction;
    use super::*;

    fn host(fd: std::os::fd::OwnedFd, dir: Direction) -> HostIo {
        HostIo::new(fd, dir).unwrap()
    }

    #[tokio::test]
    async fn output_and_input_relays() {
        let (guest_out, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.output(relay_end, host(w, Direction::Write));
        let mut guest_out = guest_out;
        guest_out.write_all(b"hello").await.unwrap();
        drop(guest_out);
        relays.finish(Duration::from_secs(5)).await;
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");

        let (mut guest_in, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.input(host(r, Direction::Read), relay_end);
        File::from(w).write_all(b"typed").unwrap(); // and closed: EOF
        let mut got = String::new();
        guest_in.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "typed");
        drop(relays);
    }

    /// A chunk already in the engine's pipe is readable while the relay waits for the next
    /// one (a `splice`-based copy holds the pipe's lock during that wait).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn output_pipe_stays_readable_between_chunks() {
        let (mut guest_out, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.output(relay_end, host(w, Direction::Write));
        guest_out.write_all(b"first\n").await.unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let n = nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap_or(0);
            buf[..n].to_vec()
        });
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(got, b"first\n", "the pipe was not readable");
        drop(guest_out);
        relays.finish(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn input_stops_when_finished() {
        let (mut guest_in, relay_end) = tokio::net::UnixStream::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap(); // never written, never closed
        let mut relays = Relays::default();
        relays.input(host(r, Direction::Read), relay_end);
        relays.finish(Duration::from_secs(600)).await;
        // The input task is gone, and with it its end of the stream: the guest sees EOF.
        let mut rest = Vec::new();
        guest_in.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

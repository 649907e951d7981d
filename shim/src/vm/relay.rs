//! Stdio relays between the caller's fds and the agent's stream connections.
//!
//! Output (guest → host) is a blocking copy to EOF. Input (host → guest) polls the host fd so it
//! can stop when the process is gone (a caller's stdin may never reach EOF) and, for terminals,
//! notice window-size changes on the host side and forward them to the guest's pty — the monitor
//! is not the pty's session leader, so it gets no SIGWINCH.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often an input relay checks for "process gone" and window-size changes.
const POLL_MS: i32 = 100;

/// Called with (rows, cols) when the host terminal's size changes.
pub type Resize = Box<dyn Fn(u16, u16) + Send>;

/// The relay threads of one process.
pub struct Relays {
    done: Arc<AtomicBool>,
    outputs: usize,
    finished: mpsc::Receiver<()>,
    tx: mpsc::Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Default for Relays {
    fn default() -> Self {
        let (tx, finished) = mpsc::channel();
        Relays {
            done: Arc::new(AtomicBool::new(false)),
            outputs: 0,
            finished,
            tx,
            threads: Vec::new(),
        }
    }
}

impl Relays {
    /// guest stream → host fd, to EOF.
    pub fn output(&mut self, stream: UnixStream, host: OwnedFd) {
        let tx = self.tx.clone();
        self.outputs += 1;
        self.threads.push(std::thread::spawn(move || {
            copy_out(stream, File::from(host));
            let _ = tx.send(());
        }));
    }

    /// host fd → guest stream, until EOF on the host or [`Relays::finish`]; EOF is passed on as
    /// a shutdown of the stream's writing side.
    pub fn input(&mut self, host: OwnedFd, stream: UnixStream, resize: Option<Resize>) {
        let done = self.done.clone();
        self.threads.push(std::thread::spawn(move || {
            pump(host, stream, &done, resize)
        }));
    }

    /// Waits (up to `timeout`) until every output reached EOF, then stops the input relays.
    pub fn finish(mut self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..self.outputs {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if self.finished.recv_timeout(left).is_err() {
                break;
            }
        }
        self.done.store(true, Ordering::SeqCst);
        // Input threads notice `done` within one poll interval; they are detached otherwise.
        self.threads.clear();
        self.outputs = 0;
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Copies the stream to the host fd until EOF or a write error, with plain `read`/`write`.
///
/// Not `std::io::copy`: into a pipe (what engines give as stdout) it uses `splice(2)`, and
/// Linux holds the pipe's mutex for the whole splice, including the wait for socket data. The
/// engine's `read` of the pipe then blocks on that mutex, and when the splicing thread wins the
/// mutex back first after moving a chunk, that chunk sits in the pipe, unreadable, until the
/// next one arrives: `docker logs` missed a container's first line about one run in three.
fn copy_out(mut stream: UnixStream, mut host: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if host.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn pump(host: OwnedFd, mut stream: UnixStream, done: &AtomicBool, resize: Option<Resize>) {
    let mut src = File::from(host);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = None;
    while !done.load(Ordering::SeqCst) {
        if let Some(r) = &resize {
            let now = crate::console::get_winsize(src.as_raw_fd());
            if now.is_some() && now != size {
                size = now;
                if let Some((rows, cols)) = now {
                    r(rows, cols);
                }
            }
        }
        let mut p = libc::pollfd {
            fd: src.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on our stack for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, POLL_MS) };
        if n <= 0 {
            continue;
        }
        match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_input_relays() {
        let (mut guest_out, host_out_stream) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.output(host_out_stream, w);
        guest_out.write_all(b"hello").unwrap();
        drop(guest_out);
        relays.finish(Duration::from_secs(5));
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");

        let (guest_in, host_in_stream) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.input(r, host_in_stream, None);
        File::from(w).write_all(b"typed").unwrap(); // and closed: EOF
        let mut got = String::new();
        (&guest_in).read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed");
    }

    /// A chunk already in the engine's pipe is readable while the relay waits for the next
    /// one (a `splice`-based copy holds the pipe's lock during that wait).
    #[test]
    fn output_pipe_stays_readable_between_chunks() {
        let (mut guest_out, host_out_stream) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut relays = Relays::default();
        relays.output(host_out_stream, w);
        guest_out.write_all(b"first\n").unwrap();
        // Let the relay move the chunk and go back to waiting on the (now empty) stream.
        std::thread::sleep(Duration::from_millis(200));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            let n = nix::unistd::read(r.as_raw_fd(), &mut buf).unwrap_or(0);
            let _ = tx.send(buf[..n].to_vec());
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(guest_out);
        assert_eq!(
            got.as_deref(),
            Ok(&b"first\n"[..]),
            "the pipe was not readable"
        );
        relays.finish(Duration::from_secs(5));
    }

    #[test]
    fn input_stops_when_finished() {
        let (_guest_in, host_in_stream) = UnixStream::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap(); // never written, never closed
        let mut relays = Relays::default();
        relays.input(r, host_in_stream, None);
        let t = std::time::Instant::now();
        let h = relays.threads.pop().unwrap();
        relays.finish(Duration::from_secs(1));
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

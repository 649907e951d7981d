//! The relay between real pipes and socket pairs, driven by a small epoll loop.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollTimeout};

use super::*;

fn nonblocking(fd: &OwnedFd) {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
}

/// Host side of a stream: our end goes into the relay, the test keeps the peer.
fn socket() -> (OwnedFd, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    (ours.into(), peer)
}

/// A relay with only stdout attached; the test keeps the process's write end and the host's
/// peer.
fn stdout_only() -> (Epoll, Relay, OwnedFd, UnixStream) {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut relay = Relay::new(false);
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    nonblocking(&pipe_r);
    relay.attach(GUEST_OUT, pipe_r, FdKind::Pipe, Reg::No);
    let (ours, host) = socket();
    relay.attach(HOST_OUT, ours, FdKind::Socket, Reg::No);
    (epoll, relay, pipe_w, host)
}

/// Runs the relay's epoll loop until `done` or a timeout.
fn drive(
    relay: &mut Relay,
    epoll: &Epoll,
    scratch: &mut [u8],
    mut done: impl FnMut(&Relay) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = [EpollEvent::empty(); 8];
    relay.sync(epoll, 0);
    while !done(relay) {
        assert!(Instant::now() < deadline, "relay did not finish");
        let wait = relay.deadline().map_or(50, |t| {
            t.saturating_duration_since(Instant::now())
                .as_millis()
                .min(50) as u8
        });
        let n = match epoll.wait(&mut events, EpollTimeout::from(wait)) {
            Ok(n) => n,
            // Another test's child exiting: its SIGCHLD, blocked by the thread that spawned
            // it, is handed to a thread that does not block it, and wakes this wait.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for e in &events[..n] {
            let mut io = Io { epoll, scratch };
            relay.on_event(e.data() as usize, e.events(), &mut io);
        }
        let mut io = Io { epoll, scratch };
        relay.on_timer(Instant::now(), &mut io);
        relay.sync(epoll, 0);
    }
}

#[test]
fn output_survives_a_slow_reader_and_drains_before_exit_is_reported() {
    let (epoll, mut relay, pipe_w, mut host) = stdout_only();
    // The "process" writes 4 MiB (more than any socket buffer) and exits.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::File::from(pipe_w);
        w.write_all(&data).unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            // A slow reader: small reads with pauses, so the relay must hold data back.
            std::thread::sleep(Duration::from_micros(50));
            match host.read(&mut buf).unwrap() {
                0 => return got,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let mut scratch = vec![0u8; 256 * 1024];
    // Relay while the process writes, then it exits.
    drive(&mut relay, &epoll, &mut scratch, |_| writer.is_finished());
    writer.join().unwrap();
    let mut io = Io {
        epoll: &epoll,
        scratch: &mut scratch,
    };
    relay.begin_drain(&mut io);
    drive(&mut relay, &epoll, &mut scratch, Relay::drained);
    assert!(relay.drained());
    // Drained means written to the socket; the pipe hit EOF, so the socket was closed too.
    assert_eq!(reader.join().unwrap(), expected);
}

#[test]
fn stdin_eof_reaches_the_process_after_all_data() {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut relay = Relay::new(false);
    let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    nonblocking(&pipe_w);
    relay.attach(GUEST_IN, pipe_w, FdKind::Pipe, Reg::No);
    let (ours, mut host) = socket();
    relay.attach(HOST_IN, ours, FdKind::Socket, Reg::No);
    assert!(relay.prefill(HOST_IN, b"early "));
    let child = std::thread::spawn(move || {
        let mut got = Vec::new();
        std::fs::File::from(pipe_r).read_to_end(&mut got).unwrap();
        got
    });
    host.write_all(b"later").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    drive(&mut relay, &epoll, &mut vec![0u8; 4096], |r| {
        !r.has(GUEST_IN)
    });
    assert_eq!(child.join().unwrap(), b"early later");
    assert!(!relay.has(HOST_IN));
}

#[test]
fn a_vanished_reader_makes_the_pump_discard_instead_of_blocking() {
    let (epoll, mut relay, pipe_w, host) = stdout_only();
    drop(host);
    let writer = std::thread::spawn(move || {
        // Far more than fits in the pipe: only completes if the relay keeps reading.
        let mut w = std::fs::File::from(pipe_w);
        w.write_all(&vec![1u8; 8 << 20]).unwrap();
    });
    drive(&mut relay, &epoll, &mut vec![0u8; 65536], |r| {
        !r.has(GUEST_OUT)
    });
    writer.join().unwrap();
}

#[test]
fn streaming_output_goes_on_a_timer_and_back_when_it_stops() {
    let (epoll, mut relay, pipe_w, mut host) = stdout_only();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        got
    });
    // Busybox-style: 4 KiB writes back to back.
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut expected = data.clone();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::File::from(pipe_w);
        for chunk in data.chunks(4096) {
            w.write_all(chunk).unwrap();
        }
        // Streaming is over; after a pause one more line, then EOF.
        wait.recv().unwrap();
        w.write_all(b"last line\n").unwrap();
    });
    let mut scratch = vec![0u8; 1 << 20];
    let mut batched = false;
    drive(&mut relay, &epoll, &mut scratch, |r| {
        batched |= r.deadline().is_some();
        batched && r.deadline().is_none()
    });
    // The pipe ran dry: back to reading whenever output comes.
    assert!(relay.deadline().is_none());
    go.send(()).unwrap();
    writer.join().unwrap();
    drive(&mut relay, &epoll, &mut scratch, |r| !r.has(GUEST_OUT));
    expected.extend_from_slice(b"last line\n");
    assert_eq!(reader.join().unwrap(), expected);
}

/// A relay with stdin, stdout and stderr attached; the test keeps the process's ends (stdin's
/// read end, stdout's and stderr's write ends) and the host's peers.
struct Attached {
    relay: Relay,
    stdin: OwnedFd,
    stdout: std::fs::File,
    stderr: std::fs::File,
    host_in: UnixStream,
    host_out: UnixStream,
    host_err: UnixStream,
}

fn attach_all() -> Attached {
    let mut relay = Relay::new(false);
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    nonblocking(&in_w);
    relay.attach(GUEST_IN, in_w, FdKind::Pipe, Reg::No);
    let mut process = Vec::new();
    for slot in [GUEST_OUT, GUEST_ERR] {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        nonblocking(&r);
        relay.attach(slot, r, FdKind::Pipe, Reg::No);
        process.push(std::fs::File::from(w));
    }
    let mut host = Vec::new();
    for slot in [HOST_IN, HOST_OUT, HOST_ERR] {
        let (ours, peer) = socket();
        relay.attach(slot, ours, FdKind::Socket, Reg::No);
        peer.set_nonblocking(true).unwrap();
        host.push(peer);
    }
    let stderr = process.pop().unwrap();
    let stdout = process.pop().unwrap();
    let host_err = host.pop().unwrap();
    let host_out = host.pop().unwrap();
    let host_in = host.pop().unwrap();
    Attached {
        relay,
        stdin: in_r,
        stdout,
        stderr,
        host_in,
        host_out,
        host_err,
    }
}

/// Puts stdout's pump on a timer that will not come during the test.
fn batch_stdout(relay: &mut Relay) {
    let p = relay.pumps.iter_mut().find(|p| p.src == GUEST_OUT).unwrap();
    p.pace = Pace::Batched {
        at: Instant::now() + Duration::from_secs(600),
        wait: MAX_WAIT,
    };
}

fn available(s: &mut UnixStream) -> Vec<u8> {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn input_to_the_process_takes_its_output_off_the_timer() {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut scratch = vec![0u8; 1 << 16];
    let mut a = attach_all();
    batch_stdout(&mut a.relay);
    // A request: the process's answer must not wait for stdout's timer.
    a.host_in.write_all(b"ping\n").unwrap();
    let mut io = Io {
        epoll: &epoll,
        scratch: &mut scratch,
    };
    a.relay.on_event(HOST_IN, EpollFlags::EPOLLIN, &mut io);
    let mut got = [0u8; 5];
    nix::unistd::read(a.stdin.as_raw_fd(), &mut got).unwrap();
    assert_eq!(&got, b"ping\n");
    assert_eq!(a.relay.deadline(), None, "stdout is still on its timer");
    a.stdout.write_all(b"pong\n").unwrap();
    let mut answer = Vec::new();
    drive(&mut a.relay, &epoll, &mut scratch, |_| {
        answer.extend(available(&mut a.host_out));
        answer.ends_with(b"\n")
    });
    assert_eq!(answer, b"pong\n");
}

#[test]
fn stderr_read_at_once_takes_stdout_written_before_it_along() {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut scratch = vec![0u8; 1 << 16];
    let mut a = attach_all();
    batch_stdout(&mut a.relay);
    a.stdout.write_all(b"first\n").unwrap();
    a.stderr.write_all(b"second\n").unwrap();
    let mut io = Io {
        epoll: &epoll,
        scratch: &mut scratch,
    };
    a.relay.on_event(GUEST_ERR, EpollFlags::EPOLLIN, &mut io);
    assert_eq!(available(&mut a.host_out), b"first\n");
    assert_eq!(available(&mut a.host_err), b"second\n");
}

//! The monitor's end of a share's server: starting it, one request at a time over the socket,
//! and what is left to say when it is gone.
//!
//! Both buffers are allocated once ([`wire::BUFFER`] bytes each); a request is copied out of
//! guest memory into one, the reply lands in the other, and neither size is the guest's to
//! choose. A server that answers out of turn, too much, or not at all is treated as dead: the
//! monitor cannot tell a crashed server from a compromised one, and neither may serve on.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::spawn::{self, SpawnError};
use super::wire::{self, Head, Setup, WireError, BUFFER, HEAD, MAX_MESSAGE};
use super::{server, FsConfig, FsServer};

/// Why the server could not be started, or stopped answering.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socketpair.
    #[error("cannot create the server's socket")]
    Socket(#[source] nix::Error),
    /// A message buffer could not be mapped.
    #[error("cannot map a message buffer")]
    Buffer(#[source] nix::Error),
    /// The socket cannot hold the largest message.
    #[error("the server's socket holds {0} bytes, less than one message")]
    SocketSize(usize),
    /// The share's directory fd.
    #[error("cannot open the share")]
    Share(#[source] nix::Error),
    /// Starting the process.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Starting the thread (tests).
    #[error("cannot start the server thread")]
    Thread(#[source] std::io::Error),
    /// The server said it could not set itself up.
    #[error("{0}")]
    Refused(String),
    /// The server did not become ready.
    #[error("the virtio-fs server did not start ({why}; {end})")]
    Start {
        /// What went wrong.
        why: String,
        /// How the server ended.
        end: String,
    },
    /// The socket failed, or the server broke the protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A reply longer than the room it was given.
    #[error("reply of {len} bytes for {room} bytes of room")]
    Overlong {
        /// Its length.
        len: usize,
        /// The room.
        room: usize,
    },
}

/// What the server made of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// The reply bytes (empty for requests without a reply).
    Served(&'a [u8]),
    /// The FUSE server could not answer; the caller replies `EINVAL`.
    Failed,
}

enum Runner {
    Process {
        pid: Pid,
        stderr: File,
        reaped: bool,
    },
    Thread(Option<JoinHandle<()>>),
}

/// A running server and the monitor's buffers for it.
/// How long a new server has to confine itself and answer the setup (it takes milliseconds).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct ServerLink {
    sock: Option<OwnedFd>,
    runner: Runner,
    request: Buffer,
    reply: Buffer,
}

impl std::fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLink").finish_non_exhaustive()
    }
}

impl ServerLink {
    /// The server process's pid (none for a server on a thread).
    pub fn server_pid(&self) -> Option<libc::pid_t> {
        match &self.runner {
            Runner::Process { pid, .. } => Some(pid.as_raw()),
            Runner::Thread(_) => None,
        }
    }

    /// Starts the server for `config` (its canonical directory `share`) and waits until it is
    /// confined and ready. Call it on the thread that will own the link for the device's life:
    /// a server process dies with the thread that started it.
    pub fn start(config: &FsConfig, share: &Path) -> Result<Self, LinkError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(LinkError::Socket)?;
        size_socket(ours.as_fd())?;
        size_socket(theirs.as_fd())?;
        let runner = match &config.server {
            FsServer::Exec { program, args } => start_process(program, args, theirs, share)?,
            FsServer::InProcess => {
                let name = format!("fss-{}", config.tag);
                let thread = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || server::serve_thread(theirs))
                    .map_err(LinkError::Thread)?;
                Runner::Thread(Some(thread))
            }
        };
        let mut link = Self {
            sock: Some(ours),
            runner,
            request: Buffer::new(BUFFER).map_err(LinkError::Buffer)?,
            reply: Buffer::new(BUFFER).map_err(LinkError::Buffer)?,
        };
        let setup = Setup {
            tag: config.tag.clone(),
            share: share.to_path_buf(),
            read_only: config.read_only,
            shared_cache: config.cache == super::FsCache::Shared,
            set_id: Setup::encode_set_id(&config.set_id),
            max_open_files: u64::try_from(config.max_open_files).unwrap_or(u64::MAX),
        };
        match link.handshake(&setup) {
            Ok(()) => Ok(link),
            Err(e) => {
                let why = server::error_chain(&e);
                Err(LinkError::Start {
                    why,
                    end: link.finish(),
                })
            }
        }
    }

    /// Sends the setup and waits for the server's word, at most [`HANDSHAKE_TIMEOUT`] (a server
    /// that never answers must not hang the VM's build).
    fn handshake(&mut self, setup: &Setup) -> Result<(), LinkError> {
        let body = setup.to_bytes()?;
        let fd = self.sock.as_ref().ok_or(WireError::Closed)?.as_fd();
        let wait = nix::sys::time::TimeVal::new(HANDSHAKE_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &wait)
            .map_err(LinkError::Socket)?;
        let answer = self.setup_exchange(&body);
        let fd = self.sock.as_ref().ok_or(WireError::Closed)?.as_fd();
        let forever = nix::sys::time::TimeVal::new(0, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &forever)
            .map_err(LinkError::Socket)?;
        answer
    }

    fn setup_exchange(&mut self, body: &[u8]) -> Result<(), LinkError> {
        let fd = self.sock.as_ref().ok_or(WireError::Closed)?.as_fd();
        wire::send(
            fd,
            Head {
                kind: wire::SETUP,
                arg: 0,
            },
            body,
        )?;
        let (head, len) = wire::recv(fd, &mut self.reply)?;
        match head.kind {
            wire::READY => Ok(()),
            wire::SETUP_FAILED => Err(LinkError::Refused(
                String::from_utf8_lossy(&self.reply[HEAD..len]).into_owned(),
            )),
            kind => Err(WireError::Malformed { len, kind }.into()),
        }
    }

    /// The socket, to watch for the server's end while no request is under way.
    pub fn fd(&self) -> Result<BorrowedFd<'_>, WireError> {
        self.sock
            .as_ref()
            .map(|s| s.as_fd())
            .ok_or(WireError::Closed)
    }

    /// The buffer a request is copied into (at most [`MAX_MESSAGE`] bytes of it are sent).
    pub fn request_buffer(&mut self) -> &mut [u8] {
        &mut self.request[HEAD..]
    }

    /// Sends the first `len` bytes of the request buffer with `room` bytes for the reply, and
    /// waits for the answer.
    pub fn exchange(&mut self, len: usize, room: usize) -> Result<Answer<'_>, LinkError> {
        let len = len.min(MAX_MESSAGE);
        let room = room.min(MAX_MESSAGE);
        let head = Head {
            kind: wire::REQUEST,
            // At most MAX_MESSAGE: fits.
            arg: u32::try_from(room).unwrap_or(u32::MAX),
        };
        let fd = self.sock.as_ref().ok_or(WireError::Closed)?.as_fd();
        wire::send(fd, head, &self.request[HEAD..HEAD + len])?;
        let (answer, n) = wire::recv(fd, &mut self.reply)?;
        let body = n - HEAD;
        match answer.kind {
            wire::SERVED if body <= room => Ok(Answer::Served(&self.reply[HEAD..n])),
            wire::SERVED => Err(LinkError::Overlong { len: body, room }),
            wire::FAILED if body == 0 => Ok(Answer::Failed),
            kind => Err(WireError::Malformed { len: n, kind }.into()),
        }
    }

    /// Tells the server the driver reset the device (it forgets every inode and handle).
    pub fn reset(&mut self) -> Result<(), LinkError> {
        let fd = self.sock.as_ref().ok_or(WireError::Closed)?.as_fd();
        wire::send(
            fd,
            Head {
                kind: wire::RESET,
                arg: 0,
            },
            &[],
        )?;
        match wire::recv(fd, &mut self.reply)? {
            (
                Head {
                    kind: wire::READY, ..
                },
                HEAD,
            ) => Ok(()),
            (head, len) => Err(WireError::Malformed {
                len,
                kind: head.kind,
            }
            .into()),
        }
    }

    /// Ends the server for good (a dead or misbehaving one included) and says how it ended:
    /// its exit status and its last line on stderr, when it is a process.
    pub fn finish(&mut self) -> String {
        // Shut down, not only closed: the device keeps a second fd of this end (to wake a
        // worker blocked on a silent server), and the server must see its end now.
        if let Some(sock) = self.sock.take() {
            let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        match &mut self.runner {
            Runner::Process {
                pid,
                stderr,
                reaped,
            } => {
                let status = reap(*pid, reaped);
                match spawn::last_words(stderr) {
                    Some(words) => format!("{status}: {words}"),
                    None => status,
                }
            }
            Runner::Thread(thread) => {
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
                "server thread ended".into()
            }
        }
    }
}

impl Drop for ServerLink {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Makes `sock`'s send buffer hold the largest message: a datagram larger than the buffer fails
/// with `EMSGSIZE`, and the default (`net.core.wmem_default`, ~208 KiB) is far below 1 MiB.
/// `SO_SNDBUFFORCE` (the monitor has `CAP_NET_ADMIN` while it builds its VM) goes past
/// `net.core.wmem_max`; without it, `SO_SNDBUF` must be allowed that much.
fn size_socket(sock: BorrowedFd<'_>) -> Result<(), LinkError> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let want = 2 * BUFFER;
    if setsockopt(&sock, sockopt::SndBufForce, &want).is_err() {
        setsockopt(&sock, sockopt::SndBuf, &want).map_err(LinkError::Socket)?;
    }
    let got = getsockopt(&sock, sockopt::SndBuf).map_err(LinkError::Socket)?;
    // The kernel doubles what it was asked for (its own bookkeeping counts against it).
    if got < BUFFER + 0x1_0000 {
        return Err(LinkError::SocketSize(got));
    }
    Ok(())
}

fn start_process(
    program: &Path,
    args: &[OsString],
    sock: OwnedFd,
    share: &Path,
) -> Result<Runner, LinkError> {
    let dir = nix::fcntl::open(
        share,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(LinkError::Share)?;
    // SAFETY: `open` just returned this fd; nothing else owns it.
    let dir = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dir) };
    let child = spawn::spawn(program, args, sock, dir.as_fd())?;
    Ok(Runner::Process {
        pid: child.pid,
        stderr: child.stderr,
        reaped: false,
    })
}

/// A message buffer mapped on its own rather than taken from the allocator: a megabyte freed
/// back to a thread's malloc arena can shrink the arena's heap, and glibc then reads
/// `/proc/sys/vm/overcommit_memory` (once per process) — an `open` the queue thread's seccomp
/// list does not allow, at the moment the thread ends after its VM (a template's first VM, a
/// VM torn down while the monitor goes on). `munmap` is allowed everywhere.
struct Buffer {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by the `Buffer` alone and only reached through `&`/`&mut` of it.
unsafe impl Send for Buffer {}

impl Buffer {
    fn new(len: usize) -> Result<Self, nix::Error> {
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks: it
        // overlaps nothing of ours; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(nix::Error::last());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or(nix::Error::ENOMEM)?;
        Ok(Self { ptr, len })
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes (zero-filled by the kernel, then written only through
        // `&mut self`) stay mapped until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference to it outlives `self`.
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            tracing::warn!("virtio-fs: cannot unmap a message buffer");
        }
    }
}

/// How long a server we may not signal has to end after its socket's end.
const SERVER_END_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Kills and reaps the server (once) and says how it ended.
fn reap(pid: Pid, reaped: &mut bool) -> String {
    if std::mem::replace(reaped, true) {
        return format!("pid {pid} ended");
    }
    // Already dead in the usual case; a live one (a protocol breach) is stopped here — unless
    // it is not ours to signal (EPERM: the embedder gave up root for another user, and the
    // server, which acts for every guest user, is still root). It then ends by itself at the
    // end of its socket, shut down before this; one that does not is not waited for longer
    // than SERVER_END_WAIT: it is killed by the kernel when this thread ends (its parent-death
    // signal), and reaped with the process.
    if kill(pid, Signal::SIGKILL) == Err(nix::Error::EPERM) {
        return await_end(pid);
    }
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return format!("pid {pid} exited with status {code}")
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("pid {pid} killed by {sig}"),
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return format!("pid {pid} ended ({e})"),
        }
    }
}

/// Reaps a server we may not signal once it has ended, polling up to [`SERVER_END_WAIT`].
fn await_end(pid: Pid) -> String {
    let deadline = std::time::Instant::now() + SERVER_END_WAIT;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(WaitStatus::StillAlive) => {
                return format!("pid {pid} still running after its socket's end")
            }
            Ok(WaitStatus::Exited(_, code)) => {
                return format!("pid {pid} exited with status {code}")
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("pid {pid} killed by {sig}"),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return format!("pid {pid} ended ({e})"),
        }
    }
}

/// The server of every share unless the embedder says otherwise: this very program, started
/// again with [`server::SUBCOMMAND`].
pub fn default_program() -> (PathBuf, Vec<OsString>) {
    (
        PathBuf::from("/proc/self/exe"),
        vec![OsString::from(server::SUBCOMMAND)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose "server" is `peer`, a thread of the test that answers as it is told.
    fn link_to(peer: impl FnOnce(OwnedFd) + Send + 'static) -> ServerLink {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        size_socket(ours.as_fd()).unwrap();
        size_socket(theirs.as_fd()).unwrap();
        ServerLink {
            sock: Some(ours),
            runner: Runner::Thread(Some(std::thread::spawn(move || peer(theirs)))),
            request: Buffer::new(BUFFER).unwrap(),
            reply: Buffer::new(BUFFER).unwrap(),
        }
    }

    /// Receives one request and answers it with `kind` and `body`.
    fn answer(sock: &OwnedFd, kind: u32, body: &[u8]) {
        let mut buf = vec![0u8; BUFFER];
        wire::recv(sock.as_fd(), &mut buf).unwrap();
        wire::send(sock.as_fd(), Head { kind, arg: 0 }, body).unwrap();
    }

    #[test]
    fn a_full_size_request_and_reply_cross_whole() {
        let mut link = link_to(|s| {
            let mut buf = vec![0u8; BUFFER];
            let (head, len) = wire::recv(s.as_fd(), &mut buf).unwrap();
            assert_eq!((head.kind, head.arg as usize), (wire::REQUEST, MAX_MESSAGE));
            assert_eq!(len, BUFFER);
            // Echo the request back as the reply.
            wire::send(
                s.as_fd(),
                Head {
                    kind: wire::SERVED,
                    arg: 0,
                },
                &buf[HEAD..len],
            )
            .unwrap();
        });
        for (i, b) in link.request_buffer().iter_mut().enumerate() {
            *b = i as u8;
        }
        let expected: Vec<u8> = (0..MAX_MESSAGE).map(|i| i as u8).collect();
        match link.exchange(MAX_MESSAGE, MAX_MESSAGE).unwrap() {
            Answer::Served(reply) => assert!(reply == &expected[..]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_past_its_room_or_out_of_kind_is_a_breach() {
        let mut link = link_to(|s| answer(&s, wire::SERVED, &[7u8; 100]));
        assert!(matches!(
            link.exchange(40, 99),
            Err(LinkError::Overlong { len: 100, room: 99 })
        ));
        let mut link = link_to(|s| answer(&s, wire::READY, &[]));
        assert!(matches!(
            link.exchange(40, 4096),
            Err(LinkError::Wire(WireError::Malformed { .. }))
        ));
        let mut link = link_to(|s| answer(&s, wire::FAILED, b"x"));
        assert!(matches!(
            link.exchange(40, 4096),
            Err(LinkError::Wire(WireError::Malformed { .. }))
        ));
        let mut link = link_to(|s| answer(&s, wire::FAILED, &[]));
        assert_eq!(link.exchange(40, 4096).unwrap(), Answer::Failed);
    }

    #[test]
    fn a_server_that_is_gone_is_an_error_not_a_hang() {
        let mut link = link_to(drop);
        assert!(matches!(
            link.exchange(40, 4096),
            Err(LinkError::Wire(WireError::Closed))
        ));
        assert!(matches!(
            link.reset(),
            Err(LinkError::Wire(WireError::Closed))
        ));
        assert_eq!(link.finish(), "server thread ended");
    }
}

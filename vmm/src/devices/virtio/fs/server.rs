//! The share's FUSE server: the only code that parses FUSE requests and touches the share.
//!
//! It runs in a process of its own, exec'd by the monitor ([`super::spawn`]): the monitor
//! copies each request out of guest memory into a message ([`super::wire`]), this side
//! answers it with `fuse-backend-rs`'s `Server` over [`ShareFs`], reading the request from a
//! plain buffer (`Reader::from_fuse_buffer`) and writing the reply into another one (the
//! crate's `/dev/fuse` writer, started buffered, see [`Serving::serve`]). It never sees
//! guest memory, the queues, or any fd of the monitor.
//!
//! Start-up ([`start`]), in this order, each step fatal:
//! 1. block every signal (SIGKILL still ends it; a terminal's SIGINT does not);
//! 2. read the share's [`Setup`] from the socket;
//! 3. own mount namespace ([`sandbox::enter_namespace`]) and, on `/proc` in it, a procfs of
//!    its own PID namespace (the monitor starts it as PID 1 of a new one) with only the
//!    per-process directories (`subset=pid`, read-only): the crate re-opens inodes through
//!    `/proc/self/fd`, and that fd must lead nowhere but to this process — not to the
//!    monitor's `/proc/<pid>`, other processes' roots, or `/proc/sys`;
//! 4. the passthrough file system (opens that `/proc/self/fd`);
//! 5. pivot into the share ([`sandbox::pivot_into`]), checked to be the directory the monitor
//!    passed as an fd; keep only the 7 capabilities passthrough needs, bounding set included;
//! 6. in a process: rlimits (open files = the share's cap + [`FD_RESERVE`], no core);
//! 7. the seccomp allow-list ([`super::seccomp::server_filter`], with `no_new_privs`);
//! 8. answer [`wire::READY`].
//!
//! Tests and the fuzzer can run the same code on a thread ([`serve_thread`]) instead: the
//! same confinement per thread, without the process boundary.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader, Writer};

use super::filesystem::{ShareFs, ShareOptions};
use super::wire::{self, Head, Setup, WireError, BUFFER, HEAD, MAX_MESSAGE};
use super::{sandbox, seccomp};

/// The hidden first argument that makes an embedding binary the server (see
/// [`main_if_requested`]).
pub const SUBCOMMAND: &str = "__virtiofs-server";
/// Where the server process finds its socket.
pub const SOCKET_FD: RawFd = 3;
/// Where the server process finds the share's directory (`O_PATH`), to check its root by.
pub const SHARE_FD: RawFd = 4;
/// Open files beyond the share's cap: stdio, the socket, `/proc/self/fd`, `/dev/null`, and
/// the few the crate opens for a moment (a directory listing's fd, a re-opened file).
pub const FD_RESERVE: u64 = 32;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The first message was not a setup.
    #[error("expected a setup message, got kind {0}")]
    NoSetup(u32),
    /// The inherited fds are not what the monitor passes.
    #[error("fd {0} is not what the monitor passes")]
    BadFd(RawFd),
    /// Confinement.
    #[error("cannot confine the server")]
    Sandbox(#[from] sandbox::SandboxError),
    /// The seccomp list.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// The passthrough file system.
    #[error("cannot create the passthrough file system")]
    Fs(#[source] std::io::Error),
    /// `/dev/null`, where the crate's writer sends its copies.
    #[error("cannot open /dev/null")]
    Null(#[source] std::io::Error),
    /// An rlimit.
    #[error("cannot set {0}")]
    Rlimit(&'static str, #[source] nix::Error),
}

/// Runs the server if this process was started as one (`argv[1]` is [`SUBCOMMAND`]), and
/// never returns then; otherwise returns at once. Every binary that embeds the VMM and
/// creates virtio-fs devices with the default [`super::FsServer`] calls it first thing in
/// `main`, before it starts any thread.
pub fn main_if_requested() {
    if std::env::args_os().nth(1).as_deref() != Some(OsStr::new(SUBCOMMAND)) {
        return;
    }
    let code = match process_main() {
        Ok(()) => 0,
        Err(e) => {
            // stderr is a pipe the monitor reads when the server is gone.
            eprintln!("virtio-fs server: {}", error_chain(&e));
            1
        }
    };
    exit_now(code)
}

/// Ends the process at once: only `exit_group`, which the seccomp list allows (no atexit
/// handlers, no stdio flushing under the filter).
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process; nothing runs after it.
    unsafe { libc::_exit(code) }
}

fn process_main() -> Result<(), ServerError> {
    let (sock, share) = inherited_fds()?;
    let serving = start(sock.as_fd(), Some(share), true)?;
    serving.run()?;
    Ok(())
}

/// The socket and the share's directory at [`SOCKET_FD`] and [`SHARE_FD`], checked.
fn inherited_fds() -> Result<(OwnedFd, OwnedFd), ServerError> {
    use nix::sys::stat::{fstat, SFlag};
    let kind = |fd: RawFd| {
        fstat(fd)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
            .map_err(|_| ServerError::BadFd(fd))
    };
    if kind(SOCKET_FD)? != SFlag::S_IFSOCK {
        return Err(ServerError::BadFd(SOCKET_FD));
    }
    if kind(SHARE_FD)? != SFlag::S_IFDIR {
        return Err(ServerError::BadFd(SHARE_FD));
    }
    // SAFETY: the monitor's spawn puts exactly these two fds at these numbers and nothing in
    // this process has taken them (this runs first in `main`); we own them from here on.
    Ok(unsafe {
        (
            OwnedFd::from_raw_fd(SOCKET_FD),
            OwnedFd::from_raw_fd(SHARE_FD),
        )
    })
}

/// Serves a share on the calling thread over `sock` until the monitor closes it, confined per
/// thread (tests and fuzzing: see [`super::FsServer::InProcess`]).
pub(super) fn serve_thread(sock: OwnedFd) {
    match start(sock.as_fd(), None, false) {
        Ok(serving) => {
            if let Err(e) = serving.run() {
                tracing::warn!("virtio-fs server thread stops: {}", error_chain(&e));
            }
        }
        Err(e) => tracing::warn!("virtio-fs server thread: {}", error_chain(&e)),
    }
}

/// A confined server, ready for requests.
struct Serving<'s> {
    sock: BorrowedFd<'s>,
    fs: Arc<ShareFs>,
    server: Server<Arc<ShareFs>>,
    /// Where the crate's writer sends the copies it makes of buffered replies: `/dev/null`.
    null: OwnedFd,
}

/// Confines the caller and answers the setup on `sock` (see the module docs). On an error the
/// monitor is told why (when it can be) and the caller must stop.
fn start<'s>(
    sock: BorrowedFd<'s>,
    share: Option<OwnedFd>,
    process: bool,
) -> Result<Serving<'s>, ServerError> {
    let result = confine(sock, share, process);
    if let Err(e) = &result {
        let why = error_chain(e);
        let _ = wire::send(
            sock,
            Head {
                kind: wire::SETUP_FAILED,
                arg: 0,
            },
            why.as_bytes(),
        );
    }
    result
}

fn confine<'s>(
    sock: BorrowedFd<'s>,
    share: Option<OwnedFd>,
    process: bool,
) -> Result<Serving<'s>, ServerError> {
    block_signals();
    let mut buf = vec![0u8; BUFFER];
    let (head, len) = wire::recv(sock, &mut buf)?;
    if head.kind != wire::SETUP {
        return Err(ServerError::NoSetup(head.kind));
    }
    let setup = Setup::from_bytes(&buf[HEAD..len])?;
    let filter = seccomp::server_filter()?;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(ServerError::Null)?;

    sandbox::enter_namespace()?;
    sandbox::mount_private_proc()?;
    let options = ShareOptions {
        read_only: setup.read_only,
        cache: setup.cache(),
        set_id: setup.set_id(),
        max_open_files: usize::try_from(setup.max_open_files).unwrap_or(usize::MAX),
    };
    // The server's root is "/" as it will see it once pivoted: the share.
    let fs = Arc::new(ShareFs::new("/", options).map_err(ServerError::Fs)?);
    let expected = match &share {
        Some(fd) => Some(
            nix::sys::stat::fstat(fd.as_raw_fd())
                .map_err(|_| ServerError::BadFd(fd.as_raw_fd()))?,
        ),
        None => None,
    };
    sandbox::pivot_into(
        &setup.share,
        setup.read_only,
        expected.map(|st| (st.st_dev, st.st_ino)),
    )?;
    // The share is the root now; its fd was only the proof.
    drop(share);
    if process {
        limit_resources(setup.max_open_files)?;
    }
    seccomp::install(&filter)?;
    wire::send(
        sock,
        Head {
            kind: wire::READY,
            arg: 0,
        },
        &[],
    )?;
    Ok(Serving {
        sock,
        server: Server::new(fs.clone()),
        fs,
        null: null.into(),
    })
}

impl Serving<'_> {
    /// Answers messages until the monitor closes the socket.
    fn run(self) -> Result<(), ServerError> {
        let mut request = vec![0u8; BUFFER];
        let mut reply = vec![0u8; MAX_MESSAGE];
        loop {
            let (head, len) = match wire::recv(self.sock, &mut request) {
                Ok(m) => m,
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match head.kind {
                wire::REQUEST => {
                    let room = usize::try_from(head.arg)
                        .unwrap_or(usize::MAX)
                        .min(MAX_MESSAGE);
                    let (kind, n) = self.serve(&mut request[HEAD..len], &mut reply[..room]);
                    wire::send(self.sock, Head { kind, arg: 0 }, &reply[..n])?;
                }
                wire::RESET => {
                    // The next driver starts from a clean slate: no inodes, no handles.
                    self.fs.destroy();
                    wire::send(
                        self.sock,
                        Head {
                            kind: wire::READY,
                            arg: 0,
                        },
                        &[],
                    )?;
                }
                kind => return Err(WireError::Malformed { len, kind }.into()),
            }
        }
    }

    /// Serves one FUSE request; returns the answer's kind and how many bytes of `room` hold
    /// the reply.
    ///
    /// The crate's `/dev/fuse` writer, split at 0 before the server gets it, is a buffered
    /// writer over all of `room`: every reply is assembled there (a READ's header and data, a
    /// READDIR's entries after its header: contiguous from the start), and the length is what
    /// `handle_message` returns. The crate then `commit`s buffered replies with one `write`
    /// to the writer's fd, meant for `/dev/fuse`; ours is `/dev/null`, so that copy is
    /// dropped. A reply that does not fit `room` fails in the crate before anything is
    /// written, as it would in the guest's buffers.
    fn serve(&self, request: &mut [u8], room: &mut [u8]) -> (u32, usize) {
        let capacity = room.len();
        let Ok(reader) = Reader::<()>::from_fuse_buffer(FuseBuf::new(request)) else {
            return (wire::FAILED, 0);
        };
        let Ok(mut whole) = FuseDevWriter::<()>::new(self.null.as_raw_fd(), room) else {
            return (wire::FAILED, 0);
        };
        let Ok(buffered) = whole.split_at(0) else {
            return (wire::FAILED, 0);
        };
        let result = self
            .server
            .handle_message(reader, Writer::FuseDev(buffered), None, None);
        match result {
            Ok(n) if n <= capacity => (wire::SERVED, n),
            Ok(_) => (wire::FAILED, 0),
            Err(e) => {
                tracing::debug!("virtio-fs: request failed: {e}");
                (wire::FAILED, 0)
            }
        }
    }
}

/// The server process's rlimits: open files for the share's cap and a reserve (the crate's
/// fds beyond the cap fail with `EMFILE` instead of growing without end), no core (it would
/// hold file data of the guest). Not `RLIMIT_FSIZE`: the guest's files in volumes may rightly
/// be larger than any cap we would pick, and past it every write raises `SIGXFSZ`, which
/// would end the server and with it the VM; disk use in a volume is its file system's
/// business (quotas).
fn limit_resources(max_open_files: u64) -> Result<(), ServerError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| ServerError::Rlimit("RLIMIT_NOFILE", e))?;
    let nofile = max_open_files.saturating_add(FD_RESERVE).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)
        .map_err(|e| ServerError::Rlimit("RLIMIT_NOFILE", e))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| ServerError::Rlimit("RLIMIT_CORE", e))
}

/// Blocks every signal on this thread but SIGSYS, so the server never runs a handler other
/// than the seccomp report and a terminal's SIGINT or SIGTERM to the process group does not end
/// it; SIGKILL still does. SIGSYS must stay unblocked: the kernel resets the handler of a
/// blocked signal it forces (a seccomp trap) to the default, and the process would die
/// without its report line.
pub(super) fn block_signals() {
    let mut all = nix::sys::signal::SigSet::all();
    all.remove(nix::sys::signal::Signal::SIGSYS);
    // The whole mask, not added to the inherited one: the thread that starts us may have
    // SIGSYS blocked.
    if let Err(e) = all.thread_set_mask() {
        tracing::warn!("virtio-fs: cannot block signals: {e}");
    }
}

/// `e: cause: cause…` on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

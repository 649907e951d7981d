//! What a forbidden syscall leaves behind: one line naming the thread and the syscall, then
//! the end of the process.
//!
//! The filters trap (`SECCOMP_RET_TRAP`) instead of killing so that the operator learns why
//! a VM died: the kernel sends the offending thread a SIGSYS that cannot be blocked, this
//! handler writes the line to a file descriptor chosen once ([`report_to`], stderr until
//! then) and ends the process with [`FORBIDDEN_SYSCALL_EXIT`]. It runs on a thread that may
//! be in any state, under that thread's filter: it takes no lock, allocates nothing and makes
//! only `write` and `exit_group`, which every list allows.

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The process's exit status after a forbidden syscall: what a shell shows for a death by
/// SIGSYS.
pub const FORBIDDEN_SYSCALL_EXIT: i32 = 128 + libc::SIGSYS;

/// Writes the report for a forbidden syscall `nr` made by `thread`, newline included. Runs in
/// the signal handler: it must not allocate, lock, or make a syscall other than reading a
/// clock.
pub type Formatter = fn(out: &mut dyn fmt::Write, thread: &str, nr: i64) -> fmt::Result;

static REPORT_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);
static FORMATTER: OnceLock<Formatter> = OnceLock::new();
static HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();

thread_local! {
    /// The name the report gives this thread (its role, not a name the guest could choose).
    static THREAD: Cell<&'static str> = const { Cell::new("unnamed") };
}

/// Sends reports to `fd` (which must stay open for the life of the process, hence `'static`),
/// written by `format` if given (only the first formatter set is used).
pub fn report_to(fd: BorrowedFd<'static>, format: Option<Formatter>) {
    REPORT_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    if let Some(f) = format {
        let _ = FORMATTER.set(f);
    }
}

/// The report line when the embedding process gave no formatter.
pub fn default_format(out: &mut dyn fmt::Write, thread: &str, nr: i64) -> fmt::Result {
    writeln!(out, "{}", Message { thread, nr })
}

/// The words of a report, for formatters that wrap them in their own line format.
pub struct Message<'a> {
    /// The thread's role.
    pub thread: &'a str,
    /// The syscall number (-1 when the SIGSYS did not come from a filter).
    pub nr: i64,
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seccomp: the {} thread made system call {} ({}), which its allow-list forbids: \
             the process stops",
            self.thread,
            self.nr,
            std::env::consts::ARCH
        )
    }
}

pub(super) fn name_this_thread(thread: &'static str) {
    THREAD.with(|t| t.set(thread));
}

/// Installs the SIGSYS handler once per process.
pub(super) fn install_handler() -> std::io::Result<()> {
    let result = HANDLER.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::SigAction(on_sigsys),
            SaFlags::SA_SIGINFO,
            SigSet::empty(),
        );
        // SAFETY: `on_sigsys` only formats into a stack buffer, writes it and exits; it
        // touches no lock and no state another thread may be changing.
        unsafe { sigaction(Signal::SIGSYS, &action) }
            .map(drop)
            .map_err(|e| e as i32)
    });
    (*result).map_err(std::io::Error::from_raw_os_error)
}

/// The `_sigsys` member of a 64-bit `siginfo_t` (what `SECCOMP_RET_TRAP` fills in).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// `si_code` of a SIGSYS sent by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo; for SIGSYS its union is
        // `_sigsys`, laid out as `SigsysInfo` on 64-bit Linux. Only plain integers are read.
        let si = unsafe { &*(info as *const SigsysInfo) };
        if si.code == SYS_SECCOMP {
            i64::from(si.syscall)
        } else {
            -1
        }
    };
    let thread = THREAD.try_with(Cell::get).unwrap_or("exiting");
    let mut line = Line::default();
    let format = FORMATTER.get().copied().unwrap_or(default_format);
    if format(&mut line, thread, nr).is_err() {
        line.end_truncated();
    }
    let fd = REPORT_FD.load(Ordering::Relaxed);
    // SAFETY: writes our own stack buffer; then ends the process without running anything
    // else (no atexit handlers, no unwinding through the interrupted frame).
    unsafe {
        libc::write(fd, line.buf.as_ptr().cast(), line.len);
        libc::_exit(FORBIDDEN_SYSCALL_EXIT);
    }
}

/// A fixed buffer for the report: longer lines are cut (and still end in a newline).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn end_truncated(&mut self) {
        let last = self.buf.len() - 1;
        self.len = self.len.min(last);
        self.buf[self.len] = b'\n';
        self.len += 1;
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        if s.len() > room {
            self.buf[self.len..].copy_from_slice(&s.as_bytes()[..room]);
            self.len = self.buf.len();
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

#[cfg(test)]
pub(super) fn line_of(format: Formatter, thread: &str, nr: i64) -> Vec<u8> {
    let mut line = Line::default();
    if format(&mut line, thread, nr).is_err() {
        line.end_truncated();
    }
    line.buf[..line.len].to_vec()
}

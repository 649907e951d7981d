//! Moving bytes between a process's pipes (or terminal) and the host's stream connections.
//!
//! A process has up to six fds in fixed slots (see the `GUEST_*`/`HOST_*` constants) and up to
//! three pumps, each copying from one slot to another: stdin host→guest, stdout and stderr
//! guest→host; with a terminal, input host→master and output master→host on the same two fds.
//! All fds are non-blocking and watched by the server's level-triggered epoll; a slot is
//! registered only while some pump wants to read or write it, so an fd that keeps reporting
//! hang-up cannot spin the loop while its pump waits for the other side.
//!
//! Few syscalls per byte: reads go into one large scratch buffer shared by the whole agent and
//! are written out at once; only what the destination does not take is copied aside, and the
//! source is not read again until that is gone (so memory per pump stays bounded).
//!
//! Few wake-ups per byte: an output pipe that is readable again right after a read is not
//! watched any more but read on a timer ([`Pace::Batched`]), so a process writing in small
//! chunks (busybox writes 4 KiB at a time) fills its pipe undisturbed and the agent moves
//! hundreds of KiB per wake-up, in 64 KiB vsock packets, instead of waking (and preempting the
//! writer) for every chunk. On PVM hosts each of those wake-ups, context switches and small
//! packets is emulated guest-kernel work. Output that comes now and then is still read at once.
//!
//! Exit and output: after the process has exited, [`Relay::begin_drain`] makes the output
//! pumps read until their pipe is empty; [`Relay::drained`] says when everything read by then
//! has been written to the host, which is when the exit may be reported.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{shutdown, Shutdown};

/// Write end of the stdin pipe, or the terminal master.
pub const GUEST_IN: usize = 0;
/// Read end of the stdout pipe.
pub const GUEST_OUT: usize = 1;
/// Read end of the stderr pipe.
pub const GUEST_ERR: usize = 2;
/// The host's stdin stream, or its terminal stream.
pub const HOST_IN: usize = 3;
/// The host's stdout stream.
pub const HOST_OUT: usize = 4;
/// The host's stderr stream.
pub const HOST_ERR: usize = 5;
/// Number of slots.
pub const SLOTS: usize = 6;

/// What kind of fd sits in a slot (decides how EOF and closing look).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Pipe,
    Socket,
    Pty,
}

/// How an fd stands with the server's epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// Not in the epoll set.
    No,
    /// In the set with EPOLLONESHOT after its one event fired (a stream connection whose header
    /// was read): reports nothing, so it may stay until it is needed (re-armed with one
    /// `EPOLL_CTL_MOD`) instead of costing a `EPOLL_CTL_DEL` now.
    Disarmed,
    /// In the set with this interest.
    Armed(EpollFlags),
}

#[derive(Debug)]
struct Endpoint {
    fd: OwnedFd,
    kind: FdKind,
    reg: Reg,
    /// A pipe whose enlargement to OUTPUT_PIPE_SIZE was tried (once).
    grown: bool,
    /// A pipe that holds OUTPUT_PIPE_SIZE bytes (the enlargement worked).
    big: bool,
}

/// Output pipes start at the kernel's 64 KiB and are enlarged to this once a read fills the
/// default size: a process writing a lot then blocks, and the agent wakes, once per MiB
/// instead of once per 64 KiB (each wake-up is emulated guest-kernel work on PVM hosts), while
/// processes that write little never pay the extra `fcntl`.
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// An output pipe read again within this long of its last read is streaming: it goes on a
/// timer.
const STREAMING: Duration = Duration::from_millis(10);
/// A batched pipe's first wait, and the bounds of the waits that follow: each is sized so the
/// next read finds about [`BATCH_TARGET`] bytes (the pipe holds [`OUTPUT_PIPE_SIZE`], so a
/// writer rarely blocks on a full pipe meanwhile). The longest wait is the most a streaming
/// process's output is held back before it reaches the host; the exit drains at once.
const FIRST_WAIT: Duration = Duration::from_millis(10);
const MIN_WAIT: Duration = Duration::from_micros(250);
const MAX_WAIT: Duration = Duration::from_millis(100);
const BATCH_TARGET: usize = 256 * 1024;
/// Most bytes one batch moves before the event loop gets its turn again.
const BATCH_LIMIT: usize = 4 << 20;

/// When an output pump reads its pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Whenever it is readable (watched by epoll); `last_read` ended the previous read.
    Eager { last_read: Option<Instant> },
    /// Not watched: read at `at`; `wait` is how long this batch was given.
    Batched { at: Instant, wait: Duration },
}

impl Pace {
    /// The wait after a batch that found `got` bytes (`full`: the pipe was full, the writer may
    /// have been blocked).
    fn next_wait(wait: Duration, got: usize, full: bool) -> Duration {
        let next = if full {
            wait / 2
        } else {
            let scaled = wait.as_secs_f64() * BATCH_TARGET as f64 / got.max(1) as f64;
            Duration::from_secs_f64(scaled.min(MAX_WAIT.as_secs_f64()))
        };
        next.clamp(MIN_WAIT, MAX_WAIT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The process has not exited (or this pump is not an output).
    No,
    /// Exited: read until the source is empty.
    Reading,
    /// The source was empty (or at EOF) after the exit.
    Empty,
}

#[derive(Debug)]
struct Pump {
    src: usize,
    dst: usize,
    /// Bytes read but not yet taken by `dst`.
    pending: Vec<u8>,
    pending_pos: usize,
    src_eof: bool,
    /// `dst` failed (the reader went away): further input is read and dropped.
    discard: bool,
    /// Guest→host: counts for draining.
    output: bool,
    drain: Drain,
    /// When the source is read (only output pipes are ever batched).
    pace: Pace,
    /// EOF reached, everything written, ends closed as appropriate.
    done: bool,
}

impl Pump {
    fn new(src: usize, dst: usize, output: bool) -> Pump {
        Pump {
            src,
            dst,
            pending: Vec::new(),
            pending_pos: 0,
            src_eof: false,
            discard: false,
            output,
            drain: Drain::No,
            pace: Pace::Eager { last_read: None },
            done: false,
        }
    }

    /// Waiting for its timer rather than for epoll.
    fn batched(&self) -> bool {
        matches!(self.pace, Pace::Batched { .. })
    }

    fn has_pending(&self) -> bool {
        self.pending_pos < self.pending.len()
    }

    fn drained(&self) -> bool {
        self.done || (self.drain == Drain::Empty && !self.has_pending())
    }
}

/// The fds and pumps of one process.
#[derive(Debug, Default)]
pub struct Relay {
    slots: [Option<Endpoint>; SLOTS],
    pumps: Vec<Pump>,
    terminal: bool,
}

/// What relay operations need from the server: its epoll (to drop fds it closes) and the
/// shared scratch buffer.
pub struct Io<'a> {
    pub epoll: &'a Epoll,
    pub scratch: &'a mut [u8],
}

impl Relay {
    /// A relay for a pipes process (`terminal` false) or a terminal process.
    pub fn new(terminal: bool) -> Relay {
        Relay {
            terminal,
            ..Relay::default()
        }
    }

    /// Puts `fd` into `slot` and creates the pump that now has both ends. The fd must be
    /// non-blocking and close-on-exec; `reg` says how it stands with epoll now. Call
    /// [`Relay::sync`] afterwards to register what the pumps need.
    pub fn attach(&mut self, slot: usize, fd: OwnedFd, kind: FdKind, reg: Reg) {
        self.slots[slot] = Some(Endpoint {
            fd,
            kind,
            reg,
            grown: false,
            big: false,
        });
        let candidates: &[(usize, usize, bool)] = if self.terminal {
            &[(HOST_IN, GUEST_IN, false), (GUEST_IN, HOST_IN, true)]
        } else {
            &[
                (HOST_IN, GUEST_IN, false),
                (GUEST_OUT, HOST_OUT, true),
                (GUEST_ERR, HOST_ERR, true),
            ]
        };
        for &(src, dst, output) in candidates {
            let both = self.slots[src].is_some() && self.slots[dst].is_some();
            let exists = self.pumps.iter().any(|p| p.src == src && p.dst == dst);
            if both && !exists {
                self.pumps.push(Pump::new(src, dst, output));
            }
        }
    }

    /// Queues `data` as already read from `src` (bytes that arrived with a stream header).
    /// Returns false if no pump reads from `src`.
    pub fn prefill(&mut self, src: usize, data: &[u8]) -> bool {
        match self.pumps.iter_mut().find(|p| p.src == src) {
            Some(p) => {
                p.pending.extend_from_slice(data);
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn has(&self, slot: usize) -> bool {
        self.slots[slot].is_some()
    }

    /// The fd in `slot`, if any (e.g. the terminal master, to resize it).
    pub fn fd(&self, slot: usize) -> Option<&OwnedFd> {
        self.slots[slot].as_ref().map(|e| &e.fd)
    }

    /// Closes the process's stdin: the stdin pipe (pipes) or stops forwarding input (terminal).
    pub fn close_stdin(&mut self, epoll: &Epoll) {
        if self.terminal {
            for p in self.pumps.iter_mut().filter(|p| !p.output) {
                p.src_eof = true;
                p.done = true;
            }
        } else {
            self.pumps.retain(|p| p.dst != GUEST_IN);
            self.close(epoll, GUEST_IN);
            self.close(epoll, HOST_IN);
        }
    }

    /// The process has exited: output pumps now read until their source is empty.
    pub fn begin_drain(&mut self, io: &mut Io<'_>) {
        for i in 0..self.pumps.len() {
            if self.pumps[i].output && !self.pumps[i].done {
                self.pumps[i].drain = Drain::Reading;
                self.pump(i, io);
            }
        }
    }

    /// Every output byte read before [`Relay::begin_drain`] has been written out.
    pub fn drained(&self) -> bool {
        self.pumps.iter().filter(|p| p.output).all(Pump::drained)
    }

    /// When the next batched read is due, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.pumps
            .iter()
            .filter(|p| !p.done && !p.has_pending())
            .filter_map(|p| match p.pace {
                Pace::Batched { at, .. } => Some(at),
                Pace::Eager { .. } => None,
            })
            .min()
    }

    /// Reads the batched pipes that are due at `now`.
    pub fn on_timer(&mut self, now: Instant, io: &mut Io<'_>) {
        for i in 0..self.pumps.len() {
            let p = &self.pumps[i];
            let due = matches!(p.pace, Pace::Batched { at, .. } if at <= now);
            if due && !p.done && !p.has_pending() {
                self.pump(i, io);
            }
        }
    }

    /// Handles epoll readiness of `slot`.
    pub fn on_event(&mut self, slot: usize, events: EpollFlags, io: &mut Io<'_>) {
        let any = EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP;
        let readable = events.intersects(EpollFlags::EPOLLIN | any);
        let writable = events.intersects(EpollFlags::EPOLLOUT | any);
        // A pipe reports EPOLLIN while it holds data and EPOLLHUP once no writer is left: hang-up
        // alone is EOF, known without a read.
        let pipe_eof = events.contains(EpollFlags::EPOLLHUP)
            && !events.contains(EpollFlags::EPOLLIN)
            && self.slots[slot]
                .as_ref()
                .is_some_and(|e| e.kind == FdKind::Pipe);
        for i in 0..self.pumps.len() {
            let p = &mut self.pumps[i];
            if p.src == slot && pipe_eof {
                p.src_eof = true;
            }
            let eager_output = p.output && !p.batched();
            if p.src == slot && readable && eager_output {
                self.catch_up_siblings(i, io);
            }
            let p = &self.pumps[i];
            if (p.dst == slot && writable) || (p.src == slot && readable) {
                self.pump(i, io);
            }
        }
    }

    /// Closes every fd (the process is being forgotten).
    pub fn close_all(&mut self, epoll: &Epoll) {
        for slot in 0..SLOTS {
            self.close(epoll, slot);
        }
        self.pumps.clear();
    }

    /// Registers each slot with epoll for what its pumps need now (`base`: the process's
    /// token; the slot goes in the low bits).
    pub fn sync(&mut self, epoll: &Epoll, base: u64) {
        for slot in 0..SLOTS {
            let mut want = EpollFlags::empty();
            for p in self.pumps.iter().filter(|p| !p.done) {
                if p.src == slot && !p.src_eof && !p.has_pending() && !p.batched() {
                    want |= EpollFlags::EPOLLIN;
                }
                if p.dst == slot && p.has_pending() {
                    want |= EpollFlags::EPOLLOUT;
                }
            }
            let Some(ep) = self.slots[slot].as_mut() else {
                continue;
            };
            let mut event = EpollEvent::new(want, base | slot as u64);
            let result = match (ep.reg, want.is_empty()) {
                (Reg::No | Reg::Disarmed, true) => continue,
                (Reg::Armed(now), _) if now == want => continue,
                (Reg::Armed(_), true) => epoll.delete(ep.fd.as_fd()).map(|_| Reg::No),
                (Reg::No, false) => epoll.add(ep.fd.as_fd(), event).map(|_| Reg::Armed(want)),
                (Reg::Disarmed | Reg::Armed(_), false) => epoll
                    .modify(ep.fd.as_fd(), &mut event)
                    .map(|_| Reg::Armed(want)),
            };
            if let Ok(reg) = result {
                ep.reg = reg;
            }
        }
    }

    /// Moves as much as possible through pump `i`: flush what is pending, then read and write
    /// until the source is empty (stopping after a short read unless draining or batched). A
    /// batched pump reads only when its time has come, and then decides its next wait.
    fn pump(&mut self, i: usize, io: &mut Io<'_>) {
        let now = Instant::now();
        let draining = self.pumps[i].drain == Drain::Reading;
        if let Pace::Batched { at, .. } = self.pumps[i].pace {
            if at > now && !draining && !self.pumps[i].src_eof {
                // Only flush what is pending; the pipe waits for its timer.
                if self.pumps[i].has_pending() {
                    self.flush(i);
                }
                return;
            }
        }
        let mut got = 0;
        let mut full = false;
        // The source said EAGAIN (as opposed to the destination not taking more).
        let mut empty = false;
        loop {
            if self.pumps[i].done {
                return;
            }
            if self.pumps[i].has_pending() && !self.flush(i) {
                break;
            }
            if self.pumps[i].src_eof {
                self.finish(i, io.epoll);
                return;
            }
            let Some(src) = self.slots[self.pumps[i].src].as_ref() else {
                self.pumps[i].src_eof = true;
                continue;
            };
            let n = match nix::unistd::read(src.fd.as_raw_fd(), io.scratch) {
                Ok(0) => {
                    self.pumps[i].src_eof = true;
                    continue;
                }
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    if self.pumps[i].drain == Drain::Reading {
                        self.pumps[i].drain = Drain::Empty;
                    }
                    empty = true;
                    break;
                }
                // EIO: the terminal's last slave fd closed. Any other error ends the stream too.
                Err(_) => {
                    self.pumps[i].src_eof = true;
                    continue;
                }
            };
            got += n;
            full |= n >= self.capacity(self.pumps[i].src);
            if n >= DEFAULT_PIPE_SIZE {
                self.grow(self.pumps[i].src);
            }
            let written = self.write_out(i, &io.scratch[..n]);
            if written < n {
                let p = &mut self.pumps[i];
                p.pending.clear();
                p.pending.extend_from_slice(&io.scratch[written..n]);
                p.pending_pos = 0;
                break;
            }
            let p = &self.pumps[i];
            if n < io.scratch.len() && p.drain != Drain::Reading && !p.batched() {
                break;
            }
            if p.batched() && got >= BATCH_LIMIT {
                // A writer on another vCPU could keep the pipe from ever running dry.
                break;
            }
        }
        self.pace(i, now, got, full, empty);
        if !self.pumps[i].output && got > 0 {
            // Input reached the process: what it answers should not wait for a timer (a
            // request/response protocol over exec pipes would otherwise run at the timer's pace).
            self.unpace_outputs();
        }
    }

    /// Output pumps on a timer go back to reading whenever their pipe is readable.
    fn unpace_outputs(&mut self) {
        for p in self.pumps.iter_mut().filter(|p| p.output && p.batched()) {
            p.pace = Pace::Eager { last_read: None };
        }
    }

    /// Reads the other output pumps that wait for their timer now, before pump `i` forwards
    /// what it just found readable: output of stdout and stderr keeps roughly the order it was
    /// written in (the host may merge the two).
    fn catch_up_siblings(&mut self, i: usize, io: &mut Io<'_>) {
        for j in 0..self.pumps.len() {
            let p = &mut self.pumps[j];
            if j == i || !p.output || p.done || p.has_pending() {
                continue;
            }
            if let Pace::Batched { wait, .. } = p.pace {
                p.pace = Pace::Batched {
                    at: Instant::now(),
                    wait,
                };
                self.pump(j, io);
            }
        }
    }

    /// Decides when pump `i` reads next, after a read at `now` that moved `got` bytes (`empty`:
    /// it ended on an empty source, not on a destination that took no more).
    fn pace(&mut self, i: usize, now: Instant, got: usize, full: bool, empty: bool) {
        let batchable = self.pumps[i].output
            && self.slots[self.pumps[i].src]
                .as_ref()
                .is_some_and(|e| e.kind == FdKind::Pipe);
        let p = &mut self.pumps[i];
        if !batchable || p.done || p.src_eof {
            return;
        }
        p.pace = match p.pace {
            Pace::Eager { last_read } if got > 0 => match last_read {
                Some(last) if now.saturating_duration_since(last) < STREAMING => Pace::Batched {
                    at: now + FIRST_WAIT,
                    wait: FIRST_WAIT,
                },
                _ => Pace::Eager {
                    last_read: Some(Instant::now()),
                },
            },
            Pace::Eager { last_read } => Pace::Eager { last_read },
            // The pipe was empty when its time came: the burst is over.
            Pace::Batched { .. } if got == 0 && empty => Pace::Eager { last_read: None },
            // The host did not take what was pending: same wait again.
            Pace::Batched { wait, .. } if got == 0 => Pace::Batched {
                at: Instant::now() + wait,
                wait,
            },
            Pace::Batched { wait, .. } => {
                let wait = Pace::next_wait(wait, got, full);
                Pace::Batched {
                    at: Instant::now() + wait,
                    wait,
                }
            }
        };
    }

    /// Bytes the pipe in `slot` holds (what one read can return at most).
    fn capacity(&self, slot: usize) -> usize {
        match self.slots[slot].as_ref() {
            Some(ep) if ep.big => OUTPUT_PIPE_SIZE as usize,
            _ => DEFAULT_PIPE_SIZE,
        }
    }

    /// Writes `data` to pump `i`'s destination; returns how much was taken (all of it when
    /// discarding, or when the destination failed and the pump starts discarding).
    fn write_out(&mut self, i: usize, data: &[u8]) -> usize {
        if self.pumps[i].discard {
            return data.len();
        }
        let Some(dst) = self.slots[self.pumps[i].dst].as_ref() else {
            self.pumps[i].discard = true;
            return data.len();
        };
        let mut done = 0;
        while done < data.len() {
            match nix::unistd::write(&dst.fd, &data[done..]) {
                Ok(n) => done += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return done,
                // The reader went away (EPIPE, ECONNRESET, EIO): keep the process from blocking
                // on a full pipe by reading on and dropping its output.
                Err(_) => {
                    self.pumps[i].discard = true;
                    return data.len();
                }
            }
        }
        done
    }

    /// Writes pending bytes; true when none are left.
    fn flush(&mut self, i: usize) -> bool {
        let data = std::mem::take(&mut self.pumps[i].pending);
        let pos = self.pumps[i].pending_pos;
        let written = self.write_out(i, &data[pos..]);
        let p = &mut self.pumps[i];
        p.pending = data;
        p.pending_pos = pos + written;
        if p.has_pending() {
            return false;
        }
        p.pending.clear();
        p.pending_pos = 0;
        true
    }

    /// Source at EOF and nothing pending: pass the EOF on and close what is finished.
    fn finish(&mut self, i: usize, epoll: &Epoll) {
        let (src, dst, output) = (self.pumps[i].src, self.pumps[i].dst, self.pumps[i].output);
        self.pumps[i].done = true;
        if !self.terminal {
            // The pipe is finished and the stream gets EOF by being closed.
            self.close(epoll, src);
            self.close(epoll, dst);
            return;
        }
        if output {
            // The terminal is over: EOF to the host; input makes no sense any more.
            if let Some(ep) = self.slots[dst].as_ref() {
                if ep.kind == FdKind::Socket {
                    let _ = shutdown(ep.fd.as_raw_fd(), Shutdown::Write);
                }
            }
            for p in self.pumps.iter_mut() {
                p.done = true;
            }
            self.close(epoll, GUEST_IN);
            self.close(epoll, HOST_IN);
        }
    }

    /// Enlarges the pipe in `slot` once (see [`OUTPUT_PIPE_SIZE`]).
    fn grow(&mut self, slot: usize) {
        if let Some(ep) = self.slots[slot].as_mut() {
            if ep.kind == FdKind::Pipe && !ep.grown {
                ep.grown = true;
                // Best effort: the per-user pipe budget may say no, and 64 KiB still works.
                ep.big = fcntl(ep.fd.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE))
                    .is_ok_and(|size| size >= OUTPUT_PIPE_SIZE);
            }
        }
    }

    /// Drops the fd in `slot`, deregistering it first if it can still report: a copy held by
    /// another process (a forked child that has not exec'd yet) would otherwise keep a stale
    /// registration alive. A disarmed one-shot entry reports nothing and goes with its file.
    fn close(&mut self, epoll: &Epoll, slot: usize) {
        if let Some(ep) = self.slots[slot].take() {
            if matches!(ep.reg, Reg::Armed(_)) {
                let _ = epoll.delete(ep.fd.as_fd());
            }
        }
    }
}

#[cfg(test)]
mod tests;

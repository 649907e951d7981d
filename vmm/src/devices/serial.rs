//! COM1: an 8250 UART (vm-superio) whose output goes to a file, stdout or nowhere, and whose
//! input can come from our stdin.
//!
//! The guest writes the console one byte per port exit, and vm-superio flushes after every byte.
//! Writing each byte to the host with its own syscall would make the exit path dearer than it
//! needs to be, so output is buffered by line (flushed at each newline, when the buffer fills,
//! and when the VM ends); to a terminal it goes out byte by byte, since a human is watching.
//!
//! A console file is the guest's to fill, so it can be capped: when it holds `max_bytes`, it is
//! renamed to `<path>.1` (replacing the previous one) and a new file is started, so at most
//! twice the cap is on disk and the newest output is always in `<path>`. If the rename fails,
//! the current file is truncated and written again from its start (the newest output is still
//! kept, the previous chunk is lost); if that or opening the new file fails, console output is
//! dropped from then on and the dropped bytes are counted (logged when the VM ends). Console
//! files are created mode 0600.
//!
//! The console is also how a guest kernel says it panicked: we boot it with `panic=-1`, so a
//! panic ends in the same keyboard-controller reset as a clean shutdown, and only the line
//! `panic()` prints first tells them apart (there is no ACPI for a pvpanic device). Every byte
//! is watched for it, wherever the output goes, and a match is noted in the VM's
//! [`Controller`], which then reports the reset as [`crate::control::ExitReason::GuestPanic`].

use std::ffi::OsString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::control::Controller;

/// Where console output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// This process's stdout.
    #[default]
    Stdout,
    /// A file, created (mode 0600) or truncated; capped by the VM config's
    /// `console_max_bytes` (see the module docs).
    File(PathBuf),
    /// Discarded.
    Null,
}

/// Errors from setting up the console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The output file could not be opened.
    #[error("cannot open console output {}", .path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating stdout failed.
    #[error("cannot use stdout as the console")]
    Stdout(#[source] std::io::Error),
    /// Saved UART state that cannot be loaded (input FIFO over 64 bytes, or the interrupt it
    /// says is pending cannot be raised).
    #[error("cannot restore the serial port's saved state")]
    BadState,
}

/// The UART's registers and unread input, as saved in a snapshot (vm-superio's `SerialState`,
/// which has no serde support of its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Bytes received but not read by the guest.
    pub input: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        Self {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = s.registers;
        SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: s.input.clone(),
        }
    }
}

/// How much console output we hold before writing it out.
const OUT_BUFFER: usize = 4096;

/// Mode of console files: the guest's output is nobody else's business.
const CONSOLE_FILE_MODE: u32 = 0o600;

/// What the guest kernel prints first when it panics (`panic()` in kernel/panic.c).
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Watches console output for [`PANIC_MARKER`], split over any number of writes.
struct PanicWatch {
    matched: usize,
    control: Arc<Controller>,
}

impl PanicWatch {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            // The marker's first byte occurs nowhere else in it, so a mismatch restarts the
            // match at this byte.
            self.matched = if b == PANIC_MARKER[self.matched] {
                self.matched + 1
            } else {
                usize::from(b == PANIC_MARKER[0])
            };
            if self.matched == PANIC_MARKER.len() {
                self.control.note_guest_panic();
                self.matched = 0;
            }
        }
    }
}

/// Buffered console output (see the module docs for the policy).
pub struct ConsoleOut {
    panic_watch: Option<PanicWatch>,
    sink: Option<Sink>,
    unbuffered: bool,
    buf: Vec<u8>,
    /// The sink failed and was given up.
    failed: bool,
    /// Bytes lost since then (the chunk being written when it failed counts whole).
    dropped: u64,
}

/// Where console bytes go, and the cap of a console file.
struct Sink {
    file: File,
    rotation: Option<Rotation>,
}

/// A console file capped at `max_bytes`, rotated to `old`.
struct Rotation {
    path: PathBuf,
    old: PathBuf,
    max_bytes: u64,
    /// Bytes in the current file.
    written: u64,
}

/// `<path>.1`: where a full console file goes.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut old = OsString::from(path.as_os_str());
    old.push(".1");
    PathBuf::from(old)
}

/// Creates or truncates a console file, mode 0600 (also when it existed with another mode).
/// A capped file is never opened through a symlink (`O_NOFOLLOW`): it lives in a directory an
/// earlier VM's monitor could write (a log directory), and truncating and filling wherever a
/// planted link points is what root must not do.
fn create_console_file(path: &Path, capped: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(CONSOLE_FILE_MODE)
        .custom_flags(if capped { libc::O_NOFOLLOW } else { 0 })
        .open(path)?;
    if file.metadata()?.is_file() {
        file.set_permissions(Permissions::from_mode(CONSOLE_FILE_MODE))?;
    }
    Ok(file)
}

impl Rotation {
    /// Moves the full file aside and starts a new one, or, if it cannot be moved, starts the
    /// same file again from its beginning.
    fn rotate(&mut self, file: &mut File) -> std::io::Result<()> {
        match std::fs::rename(&self.path, &self.old) {
            // The path was just moved away: the new file is created, never an existing one
            // opened (a vCPU thread's seccomp list allows only `O_CREAT | O_EXCL` opens).
            Ok(()) => {
                *file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(CONSOLE_FILE_MODE)
                    .open(&self.path)?
            }
            Err(_) => {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
            }
        }
        self.written = 0;
        Ok(())
    }
}

impl Sink {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let Some(rot) = self.rotation.as_mut() else {
            return self.file.write_all(data);
        };
        while !data.is_empty() {
            let room = rot.max_bytes.saturating_sub(rot.written);
            if room == 0 {
                rot.rotate(&mut self.file)?;
                continue;
            }
            let n = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            self.file.write_all(&data[..n])?;
            rot.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

impl ConsoleOut {
    /// Opens `output`; a file is capped at `max_bytes` (`None`: no cap; `Some(0)`: the file is
    /// created and stays empty). The cap applies to regular files only (not to a FIFO or
    /// `/dev/null` named as the console).
    pub fn open(output: &ConsoleOutput, max_bytes: Option<u64>) -> Result<Self, SerialError> {
        let sink = match output {
            ConsoleOutput::Null => None,
            ConsoleOutput::Stdout => Some(Sink {
                file: File::from(
                    std::io::stdout()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(SerialError::Stdout)?,
                ),
                rotation: None,
            }),
            ConsoleOutput::File(path) => open_file(path, max_bytes)?,
        };
        let unbuffered = sink.as_ref().is_some_and(|s| s.file.is_terminal());
        Ok(Self {
            panic_watch: None,
            sink,
            unbuffered,
            buf: Vec::with_capacity(OUT_BUFFER),
            failed: false,
            dropped: 0,
        })
    }

    /// Tells `control` when the guest kernel panics (see the module docs).
    pub(crate) fn watch_for_panic(mut self, control: Arc<Controller>) -> Self {
        self.panic_watch = Some(PanicWatch {
            matched: 0,
            control,
        });
        self
    }

    /// Writes out whatever is buffered. A failing sink (closed pipe, full disk, a console file
    /// that cannot be rotated) loses console output but never stops the guest.
    pub fn drain(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            if !self.buf.is_empty() {
                if let Err(e) = sink.write(&self.buf) {
                    tracing::warn!(error = %e, "console output failed, dropping it from now on");
                    self.sink = None;
                    self.failed = true;
                    self.dropped += self.buf.len() as u64;
                }
            }
        }
        self.buf.clear();
    }

    /// Bytes of console output lost to a failing sink (not what `Null` or a cap of 0 discard).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Opens a console file, removing the `.1` of an earlier VM when the file is capped.
fn open_file(path: &Path, max_bytes: Option<u64>) -> Result<Option<Sink>, SerialError> {
    let open_err = |source| SerialError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = create_console_file(path, max_bytes.is_some()).map_err(open_err)?;
    let Some(max_bytes) = max_bytes else {
        return Ok(Some(Sink {
            file,
            rotation: None,
        }));
    };
    if !file.metadata().map_err(open_err)?.is_file() {
        return Ok(Some(Sink {
            file,
            rotation: None,
        }));
    }
    let old = rotated_path(path);
    match std::fs::remove_file(&old) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SerialError::Open { path: old, source });
        }
    }
    if max_bytes == 0 {
        return Ok(None);
    }
    Ok(Some(Sink {
        file,
        rotation: Some(Rotation {
            path: path.to_path_buf(),
            old,
            max_bytes,
            written: 0,
        }),
    }))
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(watch) = self.panic_watch.as_mut() {
            watch.feed(data);
        }
        if self.sink.is_none() {
            if self.failed {
                self.dropped = self.dropped.saturating_add(data.len() as u64);
            }
            return Ok(data.len());
        }
        self.buf.extend_from_slice(data);
        if self.unbuffered || self.buf.len() >= OUT_BUFFER || data.contains(&b'\n') {
            self.drain();
        }
        Ok(data.len())
    }

    /// vm-superio calls this after every byte; we flush on our own schedule instead.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOut {
    fn drop(&mut self) {
        self.drain();
        if self.dropped > 0 {
            tracing::warn!(bytes = self.dropped, "console output dropped");
        }
    }
}

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART on the port bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOut>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A UART in the state `saved` (from a snapshot: untrusted; vm-superio bounds the FIFO).
    pub fn from_snapshot(
        irq: EventFd,
        out: ConsoleOut,
        saved: &SerialSnapshot,
    ) -> Result<Self, SerialError> {
        let uart = Serial::from_state(&SerialState::from(saved), IrqTrigger(irq), NoEvents, out)
            .map_err(|_| SerialError::BadState)?;
        Ok(Self { uart })
    }

    /// The UART's state, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        self.uart.state().into()
    }

    /// Writes out buffered console output.
    pub fn flush_output(&mut self) {
        self.uart.writer_mut().drain();
    }

    /// Queues `input` for the guest to read; returns how much fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }
}

/// Number of UART registers.
const UART_REGS: u64 = 8;

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] if offset < UART_REGS => *byte = self.uart.read(offset as u8),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [byte] = data {
            if offset < UART_REGS {
                // An error here is a failed interrupt trigger or console write; the guest
                // carries on either way.
                let _ = self.uart.write(offset as u8, *byte);
            }
        }
    }
}

/// Feeds this process's stdin to the guest's console.
pub struct StdinInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: std::io::Stdin,
}

impl StdinInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self {
            serial,
            stdin: std::io::stdin(),
        }
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // Read no more than the UART's FIFO takes; what stays in the pipe wakes us again.
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(self.stdin.as_raw_fd(), &mut buf).unwrap_or(0);
        if n == 0 {
            // EOF or error: stop watching, or epoll would report it forever.
            let _ = ops.remove(events);
            return;
        }
        let mut serial = self
            .serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        serial.enqueue_input(&buf[..n]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.stdin, EventSet::IN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const THR: u64 = 0;
    const LSR: u64 = 5;

    #[test]
    fn line_buffered_file_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let out = ConsoleOut::open(&ConsoleOutput::File(path.clone()), None).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        for b in b"hello" {
            uart.write(THR, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"", "partial line held back");
        uart.write(THR, b"\n");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        uart.write(THR, b"x");
        uart.flush_output();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\nx");
    }

    #[test]
    fn a_panic_line_byte_by_byte_makes_the_reset_a_guest_panic() {
        use crate::control::ExitReason;
        let control = Controller::new(1);
        let out = ConsoleOut::open(&ConsoleOutput::Null, None)
            .unwrap()
            .watch_for_panic(control.clone());
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        // Near misses (a restart inside the marker included) are not a panic.
        for b in b"Kernel panic - not syncinKernel panic\nKKernel pani" {
            uart.write(THR, &[*b]);
        }
        for b in b"c - not syncin" {
            uart.write(THR, &[*b]);
        }
        assert!(!control.is_stopping());
        let other = Controller::new(1);
        other.request(ExitReason::Reset);
        assert_eq!(
            other.reason(),
            Some(ExitReason::Reset),
            "no panic seen there"
        );
        // "KKernel pani" + "c - not syncin" + "g": a whole marker after a false start.
        for b in b"g: Attempted to kill init!\n" {
            uart.write(THR, &[*b]);
        }
        control.request(ExitReason::Reset);
        let reason = control.reason().unwrap();
        assert_eq!(reason, ExitReason::GuestPanic);
        assert!(!reason.is_clean());
        assert_eq!(reason.to_string(), "guest kernel panic");
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let out = ConsoleOut::open(&ConsoleOutput::Null, None).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        let mut wide = [0xffu8; 4];
        uart.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
        let mut byte = [0xffu8];
        uart.read(u64::MAX, &mut byte);
        assert_eq!(byte, [0]);
        uart.write(u64::MAX, &[1]);
        uart.write(THR, &[1, 2, 3]);
        uart.write(THR, &[]);
        // The line status register reports an empty transmitter.
        uart.read(LSR, &mut byte);
        assert_ne!(byte[0] & 0x20, 0);
    }

    #[test]
    fn state_round_trips_and_oversized_input_is_refused() {
        let out = || ConsoleOut::open(&ConsoleOutput::Null, None).unwrap();
        let irq = || EventFd::new(EFD_NONBLOCK).unwrap();
        let mut uart = SerialDevice::new(irq(), out());
        uart.write(7, &[0x5a]); // scratch register
        uart.enqueue_input(b"hi");
        let saved = uart.snapshot();
        let mut back = SerialDevice::from_snapshot(irq(), out(), &saved).unwrap();
        assert_eq!(back.snapshot(), saved);
        let mut byte = [0u8];
        back.read(7, &mut byte);
        assert_eq!(byte, [0x5a]);
        back.read(THR, &mut byte);
        assert_eq!(byte, [b'h']);
        let mut huge = saved;
        huge.input = vec![0; 65];
        assert!(SerialDevice::from_snapshot(irq(), out(), &huge).is_err());
    }

    #[test]
    fn input_reaches_the_guest_and_raises_the_irq() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = ConsoleOut::open(&ConsoleOutput::Null, None).unwrap();
        let mut uart = SerialDevice::new(irq.try_clone().unwrap(), out);
        // Enable the received-data interrupt (IER bit 0).
        uart.write(1, &[1]);
        assert_eq!(uart.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut byte = [0u8];
        uart.read(THR, &mut byte);
        assert_eq!(byte, [b'a']);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Writes `lines` numbered lines through the UART, checking both files stay under `cap`
    /// after every byte; returns everything written.
    fn print_lines(uart: &mut SerialDevice, lines: usize, files: [&Path; 2], cap: u64) -> Vec<u8> {
        let mut all = Vec::new();
        for i in 0..lines {
            let line = format!("line {i:04}\n");
            for b in line.bytes() {
                uart.write(THR, &[b]);
                for f in files {
                    assert!(size(f) <= cap, "{} over the cap", f.display());
                }
            }
            all.extend_from_slice(line.as_bytes());
        }
        uart.flush_output();
        all
    }

    #[test]
    fn a_capped_file_rotates_and_keeps_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let old = rotated_path(&path);
        assert_eq!(old, dir.path().join("console.1"));
        // An earlier VM's files: a readable log and a rotated one.
        std::fs::write(&path, "earlier\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&old, "earlier, rotated\n").unwrap();
        let cap = 100;
        let out = ConsoleOut::open(&ConsoleOutput::File(path.clone()), Some(cap)).unwrap();
        assert_eq!(mode(&path), 0o600, "an existing file is made private");
        assert!(!old.exists(), "an earlier VM's rotated file is removed");
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        // 10-byte lines: 1005 bytes, so the split falls inside a line.
        let all = print_lines(&mut uart, 100, [&path, &old], cap);
        let all = [all, b"tail\n".to_vec()].concat();
        for b in b"tail\n" {
            uart.write(THR, &[*b]);
        }
        let current = std::fs::read(&path).unwrap();
        let previous = std::fs::read(&old).unwrap();
        assert_eq!(current.len() as u64, all.len() as u64 % cap);
        assert_eq!(previous.len() as u64, cap);
        assert!(
            all.ends_with(&[previous, current].concat()),
            "the newest bytes are kept, in order"
        );
        assert_eq!((mode(&path), mode(&old)), (0o600, 0o600));
        assert_eq!(uart.uart.writer_mut().dropped(), 0);
    }

    #[test]
    fn a_file_that_cannot_be_rotated_starts_again_from_its_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let cap = 64;
        let out = ConsoleOut::open(&ConsoleOutput::File(path.clone()), Some(cap)).unwrap();
        // A non-empty directory where `.1` goes makes the rename fail.
        let old = rotated_path(&path);
        std::fs::create_dir_all(old.join("in-the-way")).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        let all = print_lines(&mut uart, 30, [&path, &path], cap);
        let current = std::fs::read(&path).unwrap();
        assert_eq!(current.len() as u64, all.len() as u64 % cap);
        assert!(all.ends_with(&current));
        assert_eq!(uart.uart.writer_mut().dropped(), 0);
    }

    #[test]
    fn a_failing_file_drops_and_counts_output_and_a_zero_cap_keeps_nothing() {
        let out = ConsoleOut::open(&ConsoleOutput::File("/dev/full".into()), None).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        let text = b"no space\nat all";
        for b in text {
            uart.write(THR, &[*b]);
        }
        assert_eq!(uart.uart.writer_mut().dropped(), text.len() as u64);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let out = ConsoleOut::open(&ConsoleOutput::File(path.clone()), Some(0)).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        print_lines(&mut uart, 3, [&path, &rotated_path(&path)], 0);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(uart.uart.writer_mut().dropped(), 0);
    }

    #[test]
    fn a_capped_file_is_not_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep me").unwrap();
        let path = dir.path().join("c.console.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(open_file(&path, Some(1024)).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn only_regular_files_are_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let out = ConsoleOut::open(&ConsoleOutput::File(fifo.clone()), Some(8)).unwrap();
        let mut uart = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out);
        for b in b"longer than the cap\n" {
            uart.write(THR, &[*b]);
        }
        let mut got = String::new();
        std::io::Read::read_to_string(&mut reader, &mut got).ok();
        assert_eq!(got, "longer than the cap\n");
        assert!(!rotated_path(&fifo).exists());
        assert_eq!(mode(&fifo), 0o644, "only a regular file's mode is changed");
    }
}

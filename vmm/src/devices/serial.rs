//! COM1: an 8250 UART (vm-superio) whose output goes to a file, stdout or nowhere, and whose
//! input can come from our stdin.
//!
//! The guest writes the console one byte per port exit, and vm-superio flushes after every byte.
//! Writing each byte to the host with its own syscall would make the exit path dearer than it
//! needs to be, so output is buffered by line (flushed at each newline, when the buffer fills,
//! and when the VM ends); to a terminal it goes out byte by byte, since a human is watching.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// Where console output goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// This process's stdout.
    #[default]
    Stdout,
    /// A file, created or truncated.
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

/// Buffered console output (see the module docs for the policy).
pub struct ConsoleOut {
    sink: Option<File>,
    unbuffered: bool,
    buf: Vec<u8>,
}

impl ConsoleOut {
    /// Opens `output`.
    pub fn open(output: &ConsoleOutput) -> Result<Self, SerialError> {
        let sink = match output {
            ConsoleOutput::Null => None,
            ConsoleOutput::Stdout => Some(File::from(
                std::io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(SerialError::Stdout)?,
            )),
            ConsoleOutput::File(path) => {
                Some(File::create(path).map_err(|source| SerialError::Open {
                    path: path.clone(),
                    source,
                })?)
            }
        };
        let unbuffered = sink.as_ref().is_some_and(|f| f.is_terminal());
        Ok(Self {
            sink,
            unbuffered,
            buf: Vec::with_capacity(OUT_BUFFER),
        })
    }

    /// Writes out whatever is buffered. A failing sink (closed pipe, full disk) loses console
    /// output but never stops the guest.
    pub fn drain(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            if !self.buf.is_empty() && sink.write_all(&self.buf).is_err() {
                self.sink = None;
            }
        }
        self.buf.clear();
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.sink.is_none() {
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
        let out = ConsoleOut::open(&ConsoleOutput::File(path.clone())).unwrap();
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
    fn hostile_accesses_are_ignored() {
        let out = ConsoleOut::open(&ConsoleOutput::Null).unwrap();
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
        let out = || ConsoleOut::open(&ConsoleOutput::Null).unwrap();
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
        let out = ConsoleOut::open(&ConsoleOutput::Null).unwrap();
        let mut uart = SerialDevice::new(irq.try_clone().unwrap(), out);
        // Enable the received-data interrupt (IER bit 0).
        uart.write(1, &[1]);
        assert_eq!(uart.enqueue_input(b"ab"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut byte = [0u8];
        uart.read(THR, &mut byte);
        assert_eq!(byte, [b'a']);
    }
}

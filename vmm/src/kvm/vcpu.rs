//! A vCPU thread: it owns its `VcpuFd`, runs the guest, and dispatches exits to the buses.
//!
//! The exit path is the hot path (the guest kernel's port and MMIO accesses all come through
//! here): no allocation, no logging, one bus lookup and one device lock per exit.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_EXIT_INTERNAL_ERROR, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccompiler::BpfProgram;

use super::dump::VcpuDump;
use super::kick::ArmedVcpu;
use super::state::{SaveSpec, StateError};
use crate::control::{Controller, ExitReason, FaultKind, VcpuFault};
use crate::devices::bus::Bus;
use crate::memory::GuestMemoryMmap;

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Guest memory, for the register dump when a vCPU dies.
    pub mem: GuestMemoryMmap,
    /// The VM's stop and pause switch.
    pub control: Arc<Controller>,
    /// How a paused vCPU reads its state for a snapshot.
    pub save: Arc<SaveSpec>,
    /// The allow-list each vCPU thread installs before its first `KVM_RUN` (`None`: none).
    pub seccomp: Option<Arc<BpfProgram>>,
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// Exits that reached user space, by kind; kept on the vCPU thread's stack (no sharing, no
/// atomics) and logged once when the vCPU stops.
#[derive(Debug, Default)]
struct ExitCounts {
    io_in: u64,
    io_out: u64,
    mmio_read: u64,
    mmio_write: u64,
    other: u64,
}

/// What to do after an exit.
enum Next {
    Continue,
    Stop(ExitReason),
    Fault(FaultKind),
}

impl Vcpu {
    /// Wraps vCPU `index`.
    pub fn new(index: u8, fd: VcpuFd) -> Self {
        Self { index, fd }
    }

    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU fd, for boot configuration before it runs.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the vCPU on a new thread until the VM stops.
    pub fn spawn(self, ctx: VcpuContext) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || self.run(&ctx))
    }

    /// Runs the vCPU on the calling thread until the VM stops. A fault or guest exit stops
    /// the whole VM through the controller.
    pub fn run(self, ctx: &VcpuContext) {
        let index = self.index;
        let mut vcpu = ArmedVcpu::arm(self.fd);
        // Dropped (unregistering this thread from kicks) before `vcpu`, even on a panic.
        let _registration = Registration::new(&ctx.control, usize::from(index));
        if let Some(filter) = &ctx.seccomp {
            if let Err(e) = crate::seccomp::confine_thread(filter, "vcpu") {
                tracing::error!(vcpu = index, "{e}");
                ctx.control.request(ExitReason::Fault(Box::new(VcpuFault {
                    vcpu: index,
                    kind: FaultKind::Unconfined,
                    dump: None,
                })));
                return;
            }
        }
        if index == 0 {
            tracing::debug!(monotonic_ns = monotonic_ns(), "first KVM_RUN");
        }
        if let Some(reason) = run_loop(index, vcpu.fd(), ctx) {
            ctx.control.request(reason);
        }
    }
}

/// This thread's entry in the controller's kick list, for as long as it runs a vCPU.
struct Registration<'a> {
    control: &'a Controller,
    index: usize,
}

impl<'a> Registration<'a> {
    fn new(control: &'a Controller, index: usize) -> Self {
        control.register_vcpu_thread(index);
        Self { control, index }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.control.unregister_vcpu_thread(self.index);
        if std::thread::panicking() {
            // A bug of ours, not the guest's; the other vCPUs must not run on without this one.
            self.control.request(ExitReason::Fault(Box::new(VcpuFault {
                vcpu: self.index as u8,
                kind: FaultKind::Panicked,
                dump: None,
            })));
        }
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, comparable across processes (the boot benchmark subtracts
/// its own spawn time from it).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Runs until a stop is requested (returns `None`) or this vCPU ends the VM (returns why).
fn run_loop(index: u8, fd: &mut VcpuFd, ctx: &VcpuContext) -> Option<ExitReason> {
    let mut counts = ExitCounts::default();
    let reason = run_until_stop(index, fd, ctx, &mut counts);
    tracing::debug!(
        vcpu = index,
        io_in = counts.io_in,
        io_out = counts.io_out,
        mmio_read = counts.mmio_read,
        mmio_write = counts.mmio_write,
        other = counts.other,
        "exits"
    );
    reason
}

fn run_until_stop(
    index: u8,
    fd: &mut VcpuFd,
    ctx: &VcpuContext,
    counts: &mut ExitCounts,
) -> Option<ExitReason> {
    loop {
        if ctx.control.is_stopping() {
            return None;
        }
        if ctx.control.pause_requested() {
            let completed = complete_pending_io(fd);
            ctx.control.park(usize::from(index), || {
                completed?;
                ctx.save.save(fd, index)
            });
            continue;
        }
        let next = match fd.run() {
            Ok(exit) => handle_exit(exit, ctx, counts),
            Err(e) if e.errno() == libc::EINTR => {
                counts.other += 1;
                fd.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Fault(FaultKind::RunFailed { errno: e.errno() }),
        };
        match next {
            Next::Continue => {}
            Next::Stop(reason) => return Some(reason),
            Next::Fault(mut kind) => {
                if let FaultKind::InternalError { suberror } = &mut kind {
                    *suberror = internal_suberror(fd);
                }
                let dump = VcpuDump::capture(fd, &ctx.mem);
                return Some(ExitReason::Fault(Box::new(VcpuFault {
                    vcpu: index,
                    kind,
                    dump,
                })));
            }
        }
    }
}

/// Brings the vCPU to a point where its state is complete. An exit for port or MMIO I/O is
/// finished only by the next `KVM_RUN` (KVM then writes a read's data into the registers);
/// `KVM_RUN` with `immediate_exit` set finishes it without running any guest code and returns
/// `EINTR`.
fn complete_pending_io(fd: &mut VcpuFd) -> Result<(), StateError> {
    fd.set_kvm_immediate_exit(1);
    let completed = match fd.run() {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(source) => Err(StateError::Ioctl {
            what: "complete pending i/o",
            source,
        }),
        // KVM never runs the guest with immediate_exit set; should it, the exit would be lost.
        Ok(_) => Err(StateError::Ioctl {
            what: "complete pending i/o",
            source: kvm_ioctls::Error::new(libc::EBUSY),
        }),
    };
    fd.set_kvm_immediate_exit(0);
    completed
}

fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext, counts: &mut ExitCounts) -> Next {
    match exit {
        VcpuExit::IoIn(port, data) => {
            counts.io_in += 1;
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0);
            }
            Next::Continue
        }
        VcpuExit::IoOut(port, data) => {
            counts.io_out += 1;
            ctx.pio.write(u64::from(port), data);
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            counts.mmio_read += 1;
            if !ctx.mmio.read(addr, data) {
                data.fill(0);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            counts.mmio_write += 1;
            ctx.mmio.write(addr, data);
            Next::Continue
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen | VcpuExit::Hlt => {
            counts.other += 1;
            Next::Continue
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Next::Stop(ExitReason::Reset),
            _ => Next::Fault(FaultKind::UnexpectedExit {
                exit: "KVM_EXIT_SYSTEM_EVENT",
            }),
        },
        VcpuExit::Shutdown => Next::Fault(FaultKind::TripleFault),
        VcpuExit::FailEntry(reason, _) => Next::Fault(FaultKind::FailEntry { reason }),
        // The suberror is read from kvm_run once the exit's borrow has ended.
        VcpuExit::InternalError => Next::Fault(FaultKind::InternalError { suberror: 0 }),
        other => Next::Fault(FaultKind::UnexpectedExit {
            exit: exit_name(&other),
        }),
    }
}

/// The suberror of the `KVM_EXIT_INTERNAL_ERROR` that just happened.
fn internal_suberror(fd: &mut VcpuFd) -> u32 {
    let run = fd.get_kvm_run();
    if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
        return 0;
    }
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member
    // KVM filled in; it is plain integers.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

fn exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Unknown => "KVM_EXIT_UNKNOWN",
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::Nmi => "KVM_EXIT_NMI",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::MemoryFault { .. } => "KVM_EXIT_MEMORY_FAULT",
        VcpuExit::IoapicEoi(_) => "KVM_EXIT_IOAPIC_EOI",
        _ => "unsupported exit",
    }
}

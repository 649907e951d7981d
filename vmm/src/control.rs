//! Why a VM stops, and the one switch every party uses to stop it.
//!
//! A vCPU that sees the guest reset, power off or die, the i8042 device seeing the reset command,
//! and the VM's owner (through a [`VmHandle`], e.g. on a signal) all call the same
//! [`Controller::request`]: the first reason wins, and every vCPU is kicked out of `KVM_RUN`.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::devices::virtio::net::{NetBackend, NetCounters, NetError, NetSlotInfo};
use crate::kvm::dump::VcpuDump;
use crate::kvm::kick;
use crate::kvm::state::{StateError, VcpuState};
use crate::snapshot::save::{SnapshotError, SnapshotSource};
use crate::snapshot::SnapshotInfo;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 reset command, or a KVM reset event): its way of saying
    /// it is done, since we boot it with `reboot=k`.
    Reset,
    /// The guest powered off (a KVM shutdown system event).
    PowerOff,
    /// The VM's owner stopped it.
    Stopped,
    /// The guest kernel panicked (its console said so) and then reset or powered off.
    GuestPanic,
    /// A vCPU died.
    Fault(Box<VcpuFault>),
    /// A device's host side could not go on (a virtio-fs server died): one line saying which
    /// and why.
    DeviceFailed(String),
}

impl ExitReason {
    /// Whether the guest ended the way a guest should (reset, power-off, or stopped by us).
    pub fn is_clean(&self) -> bool {
        !matches!(
            self,
            ExitReason::Fault(_) | ExitReason::GuestPanic | ExitReason::DeviceFailed(_)
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => f.write_str("guest reset"),
            ExitReason::PowerOff => f.write_str("guest powered off"),
            ExitReason::Stopped => f.write_str("stopped"),
            ExitReason::GuestPanic => f.write_str("guest kernel panic"),
            ExitReason::Fault(fault) => fault.fmt(f),
            ExitReason::DeviceFailed(why) => f.write_str(why),
        }
    }
}

/// A vCPU that could not go on.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuFault {
    /// The vCPU's index.
    pub vcpu: u8,
    /// What happened.
    pub kind: FaultKind,
    /// Its registers and the code at RIP, when they could be read.
    pub dump: Option<VcpuDump>,
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vcpu {}: {}", self.vcpu, self.kind)?;
        if let Some(dump) = &self.dump {
            write!(f, " at rip {:#x}", dump.regs.rip)?;
        }
        Ok(())
    }
}

/// The ways a vCPU dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// `KVM_EXIT_FAIL_ENTRY`: the host could not enter the guest.
    FailEntry {
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`, e.g. an instruction KVM's emulator cannot run.
    InternalError {
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
    },
    /// `KVM_RUN` itself failed.
    RunFailed {
        /// The errno.
        errno: i32,
    },
    /// The vCPU thread panicked (a VMM bug).
    Panicked,
    /// The vCPU thread could not install its seccomp allow-list, so it never ran the guest.
    Unconfined,
    /// An exit we do not handle.
    UnexpectedExit {
        /// Its name.
        exit: &'static str,
    },
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::TripleFault => f.write_str("triple fault (KVM_EXIT_SHUTDOWN)"),
            FaultKind::FailEntry { reason } => {
                write!(f, "entry failed (KVM_EXIT_FAIL_ENTRY, reason {reason:#x})")
            }
            FaultKind::InternalError { suberror } => {
                let what = match suberror {
                    1 => ": emulation failure",
                    2 => ": simultaneous exceptions",
                    3 => ": delivery event failed",
                    _ => "",
                };
                write!(
                    f,
                    "internal error (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}{what})"
                )
            }
            FaultKind::RunFailed { errno } => write!(
                f,
                "KVM_RUN failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            FaultKind::Panicked => f.write_str("vcpu thread panicked"),
            FaultKind::Unconfined => f.write_str("cannot install the vcpu's seccomp filter"),
            FaultKind::UnexpectedExit { exit } => write!(f, "unexpected exit {exit}"),
        }
    }
}

/// What a vCPU leaves behind when it parks: its state, read on its own thread.
pub(crate) type ParkedState = Result<VcpuState, StateError>;

/// Why the vCPUs could not be paused.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The VM is stopping or has stopped (or never ran).
    #[error("the vm is not running")]
    NotRunning,
    /// Some vCPU did not reach its pause point in time.
    #[error("vcpus did not pause within {0:?}")]
    Timeout(Duration),
}

/// One vCPU's pause slot.
#[derive(Default)]
struct Parked {
    /// The pause this vCPU is parked for (0: not parked).
    generation: u64,
    state: Option<ParkedState>,
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    /// Counts pauses, so a vCPU still parked from an earlier pause is not taken for one that
    /// parked (and saved its state) for this one.
    generation: u64,
    /// The pause whose vCPUs are to read their state now (every vCPU is parked by then).
    save: u64,
    slots: Vec<Parked>,
}

/// Shared stop and pause state of one VM.
#[derive(Default)]
pub struct Controller {
    stopping: AtomicBool,
    /// The guest's console printed a kernel panic: its reset that follows (we boot it with
    /// `panic=-1`) is a failure, not the guest saying it is done.
    panicked: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    /// Running vCPU threads by index, so a stop can kick them. A thread removes itself before it
    /// ends, under this lock, so a kick never targets a thread that is gone.
    vcpu_threads: Mutex<Vec<Option<libc::pthread_t>>>,
    /// Mirrors `pause.requested` for the vCPUs' lock-free check before each `KVM_RUN`.
    pausing: AtomicBool,
    pause: Mutex<PauseState>,
    /// Signalled when a vCPU parks or unparks, and on resume and stop.
    pause_changed: Condvar,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Controller {
    /// A controller for a VM with `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Arc<Self> {
        Arc::new(Self {
            vcpu_threads: Mutex::new(vec![None; vcpus]),
            pause: Mutex::new(PauseState {
                requested: false,
                generation: 0,
                save: 0,
                slots: (0..vcpus).map(|_| Parked::default()).collect(),
            }),
            ..Default::default()
        })
    }

    /// Whether a stop was requested. Checked by vCPUs before each `KVM_RUN`.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Notes that the guest kernel panicked (see [`crate::devices::serial`]). The guest can
    /// also print the words from user space if it can write to its console: that only turns its
    /// own clean end into a reported failure.
    pub(crate) fn note_guest_panic(&self) {
        if !self.panicked.swap(true, Ordering::AcqRel) {
            tracing::warn!("the guest kernel panicked");
        }
    }

    /// Stops the VM for `reason` (unless it is already stopping for another reason) and kicks
    /// every vCPU out of the guest. A reset or power-off after a guest panic is the panic.
    pub fn request(&self, reason: ExitReason) {
        let reason = match reason {
            ExitReason::Reset | ExitReason::PowerOff if self.panicked.load(Ordering::Acquire) => {
                ExitReason::GuestPanic
            }
            other => other,
        };
        {
            let mut r = locked(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::Release);
        self.kick_all();
        // Parked vCPUs and a waiting pauser re-check `stopping` (taking the lock orders the
        // store before their wait).
        drop(locked(&self.pause));
        self.pause_changed.notify_all();
    }

    fn kick_all(&self) {
        let threads = locked(&self.vcpu_threads);
        for thread in threads.iter().flatten() {
            kick::kick(*thread);
        }
    }

    /// Whether a pause was requested. Checked by vCPUs before each `KVM_RUN`.
    pub(crate) fn pause_requested(&self) -> bool {
        self.pausing.load(Ordering::Acquire)
    }

    /// Pauses every vCPU at a point where its state is complete (no I/O half done) and returns
    /// the state each one read on its own thread, by index. The vCPUs stay parked until
    /// [`Controller::resume`] or a stop. On failure the vCPUs are resumed.
    ///
    /// Two phases: first every vCPU parks, then every vCPU reads its state. A vCPU that read
    /// its LAPIC while another still ran could miss an IPI that one sends it afterwards (the
    /// clone would wait for the IPI's answer forever: seen with 2 vCPUs).
    pub(crate) fn pause(&self, timeout: Duration) -> Result<Vec<ParkedState>, PauseError> {
        if self.is_stopping() {
            return Err(PauseError::NotRunning);
        }
        let mut pause = locked(&self.pause);
        pause.requested = true;
        pause.generation += 1;
        let generation = pause.generation;
        self.pausing.store(true, Ordering::Release);
        self.kick_all();
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_stopping() {
                drop(pause);
                self.resume();
                return Err(PauseError::NotRunning);
            }
            let parked = pause.slots.iter().all(|s| s.generation == generation);
            if parked && pause.save != generation {
                pause.save = generation;
                self.pause_changed.notify_all();
            }
            if parked && pause.slots.iter().all(|s| s.state.is_some()) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(pause);
                self.resume();
                return Err(PauseError::Timeout(timeout));
            }
            pause = self
                .pause_changed
                .wait_timeout(pause, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(pause
            .slots
            .iter_mut()
            .map(|s| s.state.take().unwrap_or(Err(StateError::Missing)))
            .collect())
    }

    /// Lets paused vCPUs run again.
    pub(crate) fn resume(&self) {
        let mut pause = locked(&self.pause);
        pause.requested = false;
        self.pausing.store(false, Ordering::Release);
        drop(pause);
        self.pause_changed.notify_all();
    }

    /// Whether the vCPUs are paused (or being paused).
    pub fn is_paused(&self) -> bool {
        self.pause_requested()
    }

    /// Called by vCPU `index`'s thread at its pause point: blocks until resumed or stopped,
    /// running `save` (which reads the vCPU's state) once every vCPU is parked.
    pub(crate) fn park(&self, index: usize, save: impl FnOnce() -> ParkedState) {
        let mut pause = locked(&self.pause);
        let generation = pause.generation;
        let mut save = Some(save);
        if let Some(slot) = pause.slots.get_mut(index) {
            slot.generation = generation;
            slot.state = None;
        }
        self.pause_changed.notify_all();
        while pause.requested && pause.generation == generation && !self.is_stopping() {
            if let Some(save) = save.take_if(|_| pause.save == generation) {
                drop(pause);
                let state = save();
                pause = locked(&self.pause);
                if let Some(slot) = pause.slots.get_mut(index) {
                    slot.state = Some(state);
                }
                self.pause_changed.notify_all();
                continue;
            }
            pause = self
                .pause_changed
                .wait(pause)
                .unwrap_or_else(|p| p.into_inner());
        }
        if let Some(slot) = pause.slots.get_mut(index) {
            *slot = Parked::default();
        }
        drop(pause);
        self.pause_changed.notify_all();
    }

    /// The reason recorded by the first [`Controller::request`].
    pub fn reason(&self) -> Option<ExitReason> {
        locked(&self.reason).clone()
    }

    /// Records the calling thread as vCPU `index`'s thread.
    pub(crate) fn register_vcpu_thread(&self, index: usize) {
        if let Some(slot) = locked(&self.vcpu_threads).get_mut(index) {
            *slot = Some(kick::current_thread());
        }
    }

    /// Forgets vCPU `index`'s thread; called by that thread before it ends.
    pub(crate) fn unregister_vcpu_thread(&self, index: usize) {
        if let Some(slot) = locked(&self.vcpu_threads).get_mut(index) {
            *slot = None;
        }
    }
}

/// A cloneable handle to stop, snapshot and resume a running VM from any thread.
#[derive(Clone)]
pub struct VmHandle {
    controller: Arc<Controller>,
    /// Alive while [`crate::Vm::run`] runs.
    source: Weak<SnapshotSource>,
}

impl VmHandle {
    #[cfg(test)]
    pub(crate) fn new(controller: Arc<Controller>) -> Self {
        Self::with_snapshots(controller, Weak::new())
    }

    pub(crate) fn with_snapshots(
        controller: Arc<Controller>,
        source: Weak<SnapshotSource>,
    ) -> Self {
        Self { controller, source }
    }

    /// Pauses the running VM at a consistent point (the device thread between two events,
    /// every vCPU with no I/O half done) and writes it to `dir` (`dir/state`, `dir/memory`;
    /// `dir` must not hold a snapshot yet). The VM stays paused afterwards, also if writing
    /// failed: [`VmHandle::resume`] it or [`VmHandle::stop`] it. Only if it could not be paused
    /// is it left running.
    ///
    /// Before calling: close every host connection to the guest's vsock (clones see them
    /// reset) and make sure the guest has not mounted a virtio-fs share (refused).
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let source = self.source.upgrade().ok_or(SnapshotError::NotRunning)?;
        source.snapshot(dir)
    }

    /// Waits until the vsock device (if any) has no connections left and owes the guest no
    /// packet — after the host closed its connections, that is once the guest has answered
    /// the closes — or `timeout` passes; returns whether it got there. Snapshot a template
    /// after this: the guest is then idle instead of in the middle of closing sockets, which
    /// every clone would otherwise finish first (hundreds of ms of guest-kernel work on PVM).
    pub fn wait_for_vsock_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(source) = self.source.upgrade() else {
                return false;
            };
            if source.vsock_idle() {
                return true;
            }
            drop(source);
            if Instant::now() >= deadline || self.is_stopping() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Attaches `backend` (a tap, the guest's MAC and MTU) to the VM's next free NIC slot
    /// while the VM runs, on a cold-booted VM and on one restored from a snapshot alike. The
    /// slot then shows a virtio-net device with link up; the guest probes it when
    /// [`NetSlotInfo::device_name`] is written to
    /// `/sys/bus/platform/drivers/virtio-mmio/bind` (before that, nothing in the guest
    /// changes). The tap is served by the VM's device thread from then on and closed when the
    /// VM ends; a VM with a tap attached can no longer be snapshotted.
    pub fn attach_net(&self, backend: NetBackend) -> Result<NetSlotInfo, NetError> {
        let source = self.source.upgrade().ok_or(NetError::NotRunning)?;
        source.attach_net(backend)
    }

    /// The frame, drop, kick and interrupt counters of NIC slot `slot` and its register
    /// window's, while the VM runs.
    pub fn net_counters(&self, slot: u8) -> Option<NetCounters> {
        self.source.upgrade()?.net_counters(slot)
    }

    /// Lets a VM paused by [`VmHandle::snapshot`] run on (devices first, then vCPUs).
    pub fn resume(&self) {
        if let Some(source) = self.source.upgrade() {
            source.loop_pause.resume();
        }
        self.controller.resume();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.controller.is_paused()
    }

    /// Stops the VM; [`crate::Vm::run`] then returns [`ExitReason::Stopped`] (unless the guest
    /// had already ended for another reason).
    pub fn stop(&self) {
        self.controller.request(ExitReason::Stopped);
    }

    /// Whether the VM is stopping or stopped.
    pub fn is_stopping(&self) -> bool {
        self.controller.is_stopping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let c = Controller::new(2);
        assert!(!c.is_stopping());
        c.request(ExitReason::Reset);
        c.request(ExitReason::Stopped);
        assert!(c.is_stopping());
        assert_eq!(c.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn clean_and_fault_reasons() {
        assert!(ExitReason::Reset.is_clean());
        assert!(ExitReason::PowerOff.is_clean());
        let fault = ExitReason::Fault(Box::new(VcpuFault {
            vcpu: 1,
            kind: FaultKind::InternalError { suberror: 1 },
            dump: None,
        }));
        assert!(!fault.is_clean());
        assert_eq!(
            fault.to_string(),
            "vcpu 1: internal error (KVM_EXIT_INTERNAL_ERROR, suberror 1: emulation failure)"
        );
    }
}

//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! A real-time signal interrupts `KVM_RUN` (it returns `EINTR`). To close the race where the
//! signal lands after the thread checked the stop flag but before it entered `KVM_RUN`, the
//! handler also sets `immediate_exit` in the vCPU's own `kvm_run` page (KVM_CAP_IMMEDIATE_EXIT),
//! so the next `KVM_RUN` returns at once. The handler runs on the kicked thread and finds that
//! page through a thread-local pointer the vCPU thread sets while it runs.

use std::cell::Cell;
use std::sync::Once;

use kvm_ioctls::VcpuFd;
use libc::{c_int, c_void, siginfo_t};

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while a vCPU runs on it.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal: `SIGRTMIN + 1`.
pub fn kick_signal() -> c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    // A const-initialised thread-local without a destructor is a plain TLS access, which is
    // async-signal-safe.
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: the pointer is this thread's kvm_run.immediate_exit, set by `ArmedVcpu::arm`
        // and cleared (on this same thread) before the VcpuFd that owns the mapping is dropped.
        unsafe { target.write_volatile(1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// The calling thread's id, for [`kick`].
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() }
}

/// Sends the kick signal to `thread`. The caller guarantees the thread is alive (the
/// [`crate::control::Controller`] only kicks threads that have not unregistered).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live thread of this process (see above); an error (e.g. ESRCH) is
    // harmless and ignored.
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}

/// A vCPU fd owned by the thread that runs it, with kicks armed: a kick of this thread makes
/// the vCPU's current or next `KVM_RUN` return. Not `Send`: the handler's pointer is per thread.
pub struct ArmedVcpu {
    fd: VcpuFd,
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl ArmedVcpu {
    /// Points the handler at `fd`'s `immediate_exit` and unblocks the kick signal on this
    /// thread (a process that blocks signals for a signalfd must not block ours).
    pub fn arm(mut fd: VcpuFd) -> Self {
        let target: *mut u8 = &mut fd.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(target));
        let _ = vmm_sys_util::signal::unblock_signal(kick_signal());
        Self {
            fd,
            _not_send: std::marker::PhantomData,
        }
    }

    /// The vCPU.
    pub fn fd(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}

impl Drop for ArmedVcpu {
    fn drop(&mut self) {
        // Runs before `fd` (and its kvm_run mapping) is dropped.
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

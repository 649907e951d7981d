//! The allow-lists of the VMM's own threads. Each was taken from `strace -f` of a monitor
//! through a template build, a restore, a container's life (start, exec, stats, pause,
//! resume, update, kill, delete) and then cut to what the thread's code does.

use std::mem::size_of;

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use seccompiler::BpfProgram;

use super::{Rules, SeccompError};

/// `_IOC(dir, 0xAE, nr, size)`: a KVM ioctl request number.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_READ_WRITE: u64 = 3;

pub(crate) const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
pub(crate) const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, size_of::<kvm_sregs>());
const KVM_GET_MSRS: u64 = kvm_ioc(IOC_READ_WRITE, 0x88, size_of::<kvm_msrs>());
const KVM_GET_LAPIC: u64 = kvm_ioc(IOC_READ, 0x8e, size_of::<kvm_lapic_state>());
const KVM_GET_MP_STATE: u64 = kvm_ioc(IOC_READ, 0x98, size_of::<kvm_mp_state>());
const KVM_GET_VCPU_EVENTS: u64 = kvm_ioc(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>());
const KVM_GET_DEBUGREGS: u64 = kvm_ioc(IOC_READ, 0xa1, size_of::<kvm_debugregs>());
pub(crate) const KVM_GET_XSAVE: u64 = kvm_ioc(IOC_READ, 0xa4, size_of::<kvm_xsave>());
const KVM_GET_XCRS: u64 = kvm_ioc(IOC_READ, 0xa6, size_of::<kvm_xcrs>());

/// `FIONBIO`: the vsock muxer makes accepted and connected sockets non-blocking.
const FIONBIO: u64 = libc::FIONBIO;
/// `TUNSETOFFLOAD`: a NIC gives its tap the offloads the guest's driver negotiated.
pub(crate) const TUNSETOFFLOAD: u64 = crate::devices::virtio::net::tap::TUNSETOFFLOAD_REQUEST;

/// A vCPU thread: `KVM_RUN` and the reads of its own state (a snapshot's save, the register
/// dump of a dying vCPU); port and MMIO exits, which end in eventfd writes and the serial
/// console's file (written, and rotated at its cap: a rename and a new file); kicks of the
/// other vCPUs (threads of this process) with `kick_signal` only. No `open` of an existing
/// file, no `unlink`, no sockets, no `clone`, no `execve`, no other ioctl, no signal to another
/// process.
pub fn vcpu_filter(kick_signal: i32) -> Result<BpfProgram, SeccompError> {
    Rules::default()
        .thread_basics()?
        .allow(&[
            libc::SYS_read,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_statx,
            libc::SYS_newfstatat,
            libc::SYS_fchmod,
            libc::SYS_ftruncate,
            libc::SYS_lseek,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
        ])
        // The console file after a rotation: created anew, never an existing file opened.
        .allow_if_masked(
            libc::SYS_openat,
            2,
            (libc::O_CREAT | libc::O_EXCL) as u64,
            (libc::O_CREAT | libc::O_EXCL) as u64,
        )?
        .allow_if_arg(
            libc::SYS_ioctl,
            1,
            &[
                KVM_RUN,
                KVM_GET_REGS,
                KVM_GET_SREGS,
                KVM_GET_MSRS,
                KVM_GET_LAPIC,
                KVM_GET_MP_STATE,
                KVM_GET_VCPU_EVENTS,
                KVM_GET_DEBUGREGS,
                KVM_GET_XSAVE,
                KVM_GET_XCRS,
            ],
        )?
        .allow_kick(kick_signal)?
        .compile()
}

/// The device event loop: epoll, eventfds and irqfds, the vsock device's unix sockets (accept
/// on its listener, connect to `<path>_<port>` listeners for guest connections, reads and
/// writes of streams) and its timer. No `open`, no `clone`, no `execve`; sockets are unix
/// sockets only; the ioctls are `FIONBIO` and, for NICs, `TUNSETOFFLOAD` (taps are read and
/// written with `read`/`write`; they are opened by the caller of `attach_net`, not here).
pub fn events_filter() -> Result<BpfProgram, SeccompError> {
    Rules::default()
        .thread_basics()?
        .allow(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_shutdown,
            libc::SYS_close,
            libc::SYS_timerfd_settime,
            libc::SYS_timerfd_gettime,
        ])
        .allow_if_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?
        .allow_if_arg(libc::SYS_ioctl, 1, &[FIONBIO, TUNSETOFFLOAD])?
        .allow_fd_flags()?
        .compile()
}

#[cfg(test)]
pub(super) mod numbers {
    pub(crate) use super::{KVM_GET_REGS, KVM_GET_XSAVE, KVM_RUN, TUNSETOFFLOAD};
}

//! Signals sent to the monitor, as a stream on its runtime: read from a signalfd, so they stay
//! blocked in every thread (vCPUs never take them) and no handler runs.

use std::io;

use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    /// Reads the signals of `set`, which the caller has blocked in every thread.
    pub fn new(set: &SigSet) -> io::Result<Signals> {
        let fd = SignalFd::with_flags(set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: the signalfd is owned by the `SignalFd` we hand over; nothing else closes or
        // replaces it while the `AsyncFd` holds it.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Signals { fd })
    }

    /// The next signal's number.
    pub async fn next(&self) -> io::Result<i32> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.get_inner().read_signal() {
                Ok(Some(info)) => return Ok(info.ssi_signo as i32),
                Ok(None) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[tokio::test]
    async fn blocked_signals_arrive_in_order() {
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR2);
        set.thread_block().unwrap();
        let signals = Signals::new(&set).unwrap();
        // Sent to this thread, which has it blocked: it waits in the signalfd.
        // SAFETY: raise(3) signals the calling thread; no memory is involved.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        assert_eq!(signals.next().await.unwrap(), libc::SIGUSR2);
    }
}

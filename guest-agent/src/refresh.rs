//! Making a guest restored from a template its own (the `Refresh` call): every clone of a
//! template starts with the same RNG state and a wall clock that stood still while the
//! template waited, so the host sends fresh entropy and the time.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

/// Least and most entropy a call may bring (the CRNG wants 32 bytes; more is no better).
pub const MIN_ENTROPY: usize = 32;
pub const MAX_ENTROPY: usize = 4096;

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])`, `RNDRESEEDCRNG` = `_IO('R', 0x07)`.
const RNDADDENTROPY: u64 = 0x4008_5203;
const RNDRESEEDCRNG: u64 = 0x5207;

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, not {0}")]
    EntropySize(usize),
    #[error("time {0}.{1:09} is not a time")]
    Time(i64, u32),
    #[error("open /dev/urandom")]
    Open(#[source] std::io::Error),
    #[error("add entropy")]
    AddEntropy(#[source] std::io::Error),
    #[error("reseed the kernel's random number generator")]
    Reseed(#[source] std::io::Error),
    #[error("set the clock")]
    Clock(#[source] nix::Error),
}

/// Checks a request before anything changes.
pub fn check(entropy: &[u8], sec: i64, nsec: u32) -> Result<(), RefreshError> {
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
        return Err(RefreshError::EntropySize(entropy.len()));
    }
    if sec < 0 || nsec >= 1_000_000_000 {
        return Err(RefreshError::Time(sec, nsec));
    }
    Ok(())
}

/// Mixes `entropy` into the kernel's pool, crediting it, and reseeds the CRNG now, so the next
/// read of /dev/urandom (and every new process's randomness) depends on it.
pub fn mix_entropy(entropy: &[u8]) -> Result<(), RefreshError> {
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(RefreshError::Open)?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = entropy.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    info[0] = u32::try_from(entropy.len() * 8).unwrap_or(u32::MAX);
    info[1] = u32::try_from(entropy.len()).unwrap_or(u32::MAX);
    for (i, chunk) in entropy.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow the two ints;
    // `info` holds the header and at least that many bytes, and lives for the call.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if r != 0 {
        return Err(RefreshError::AddEntropy(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r != 0 {
        return Err(RefreshError::Reseed(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets CLOCK_REALTIME.
pub fn set_clock(sec: i64, nsec: u32) -> Result<(), RefreshError> {
    let ts = nix::sys::time::TimeSpec::new(sec, i64::from(nsec));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(RefreshError::Clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_first() {
        assert!(check(&[0u8; 32], 1, 0).is_ok());
        assert!(matches!(
            check(&[0u8; 31], 1, 0),
            Err(RefreshError::EntropySize(31))
        ));
        assert!(check(&[0u8; 4097], 1, 0).is_err());
        assert!(check(&[0u8; 32], -1, 0).is_err());
        assert!(check(&[0u8; 32], 1, 1_000_000_000).is_err());
    }

    /// Mixing entropy in (as root) works on any Linux; the host's RNG only gets stronger.
    #[test]
    fn entropy_reaches_the_kernel() {
        // Adding entropy needs CAP_SYS_ADMIN.
        if !bulkhead_test_support::require(&[bulkhead_test_support::Need::Root]) {
            return;
        }
        let mut bytes = [0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .unwrap();
        mix_entropy(&bytes).unwrap();
        mix_entropy(&bytes[..33]).unwrap();
    }
}

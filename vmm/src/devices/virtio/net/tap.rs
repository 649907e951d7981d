//! A tap device opened through `/dev/net/tun`: the host end of a guest NIC.
//!
//! Opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every frame read or written starts with
//! a `virtio_net_hdr` of [`VNET_HDR_LEN`] bytes and the offload metadata (checksum needed, GSO)
//! passes between the guest and the host kernel without us looking inside the frame. The fd is
//! non-blocking and close-on-exec; the tap is not persistent and vanishes when it is closed.
//! The ioctls are written by hand (the request numbers are Linux's `_IOW('T', n, int)`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of `struct virtio_net_hdr_mrg_rxbuf`, the header every frame carries with
/// VIRTIO_F_VERSION_1 (and what the tap is told with `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNSETOFFLOAD`'s request number, for the event loop's seccomp list.
pub const TUNSETOFFLOAD_REQUEST: u64 = 0x4004_54d0;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_ONE_QUEUE: libc::c_short = 0x2000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `TUN_F_CSUM`: we (the guest) accept frames whose checksum is still to be done.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: we accept TCPv4 GSO frames (up to 64 KiB).
pub const TUN_F_TSO4: u32 = 0x02;

/// Longest interface name, without the NUL (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has a NUL, `/` or whitespace.
    #[error("invalid tap name {0:?}")]
    Name(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    /// An ioctl on the tap failed.
    #[error("{what} failed")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates the tap `name` in the calling thread's network namespace, or attaches to it if a
    /// non-persistent tap of that name exists with no owner. Needs CAP_NET_ADMIN there.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty()
            || name.len() > IFNAME_MAX
            || name
                .bytes()
                .any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace())
        {
            return Err(TapError::Name(name.to_owned()));
        }
        // SAFETY: a NUL-terminated path literal; the returned fd is checked and then owned.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TapError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_ONE_QUEUE,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (same size and
        // layout for the name and flags), and it lives across the call.
        unsafe {
            ioctl(
                &fd,
                "TUNSETIFF",
                TUNSETIFF,
                std::ptr::addr_of_mut!(req).cast(),
            )
        }?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr_len`.
        unsafe {
            ioctl(
                &fd,
                "TUNSETVNETHDRSZ",
                TUNSETVNETHDRSZ,
                std::ptr::addr_of!(hdr_len).cast_mut().cast(),
            )
        }?;
        let tap = Self {
            name: CStr::from_bytes_until_nul(&req.name)
                .ok()
                .and_then(|c| c.to_str().ok())
                .unwrap_or(name)
                .to_owned(),
            fd,
        };
        // No offloads until a driver asks for them: frames for the guest arrive complete.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the host kernel which offloads the guest accepts on frames we read from the tap
    /// (`TUN_F_*`); must match the negotiated GUEST_* features.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // TUNSETOFFLOAD takes the flags as the argument value itself, not a pointer.
        // SAFETY: the kernel does not dereference the argument of TUNSETOFFLOAD.
        let ret =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if ret < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (header first) into `buf`; `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (header first); a tap takes a frame whole or not at all.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for `frame.len()` bytes of reads for the duration of the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// # Safety
/// `arg` must be what `request` expects (pointer to a live object of the right type).
unsafe fn ioctl(
    fd: &OwnedFd,
    what: &'static str,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> Result<(), TapError> {
    // SAFETY: the caller guarantees `arg` fits `request`; the fd is open.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if ret < 0 {
        return Err(TapError::Ioctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

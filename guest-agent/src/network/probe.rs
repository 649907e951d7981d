//! Making a NIC appear: its virtio-mmio slot is a platform device that the kernel's boot probe
//! left unbound (the slot said "no device" then); once the host has attached a tap, binding the
//! device to the virtio-mmio driver probes it again, synchronously, so when the write returns
//! the virtio-net netdev exists.
//!
//! One open of the driver's `bind` file serves every device (one write each). On failure the
//! kernel only says ENODEV or EBUSY, so the error path (and only it) looks at sysfs to say why.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// The virtio-mmio driver's bind file, below the sysfs root.
const BIND: &str = "bus/platform/drivers/virtio-mmio/bind";
/// Where platform devices are listed, below the sysfs root.
const DEVICES: &str = "bus/platform/devices";

/// Errors of binding a slot.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("open the virtio-mmio driver's bind file")]
    Open(#[source] io::Error),
    #[error("platform device {0:?} does not exist")]
    NoDevice(String),
    #[error("platform device {0:?} is already bound (configured by an earlier call?)")]
    AlreadyBound(String),
    #[error("platform device {0:?} has no virtio device (no tap attached to the slot?)")]
    Empty(String),
    #[error("bind platform device {0:?}")]
    Bind(String, #[source] io::Error),
}

/// Binds every one of `devices` to the virtio-mmio driver; `sys` is the sysfs root (`/sys`).
pub fn bind_all<'a>(
    sys: &Path,
    mut devices: impl Iterator<Item = &'a str>,
) -> Result<(), ProbeError> {
    let Some(first) = devices.next() else {
        return Ok(());
    };
    let mut bind = OpenOptions::new()
        .write(true)
        .open(sys.join(BIND))
        .map_err(ProbeError::Open)?;
    for device in std::iter::once(first).chain(devices) {
        // One write is one bind: the whole name in one write(2), no newline needed.
        bind.write_all(device.as_bytes())
            .map_err(|e| why(sys, device, e))?;
    }
    Ok(())
}

/// Turns a failed bind of `device` into what happened.
fn why(sys: &Path, device: &str, err: io::Error) -> ProbeError {
    let errno = err.raw_os_error();
    if errno != Some(libc::ENODEV) && errno != Some(libc::EBUSY) {
        return ProbeError::Bind(device.to_owned(), err);
    }
    let dir = sys.join(DEVICES).join(device);
    if dir.join("driver").exists() {
        ProbeError::AlreadyBound(device.to_owned())
    } else if dir.exists() {
        ProbeError::Empty(device.to_owned())
    } else {
        ProbeError::NoDevice(device.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_why() {
        let sys = tempfile::tempdir().unwrap();
        let devices = sys.path().join(DEVICES);
        std::fs::create_dir_all(devices.join("virtio-mmio.1/driver")).unwrap();
        std::fs::create_dir_all(devices.join("virtio-mmio.2")).unwrap();
        let enodev = || io::Error::from_raw_os_error(libc::ENODEV);
        assert!(matches!(
            why(
                sys.path(),
                "virtio-mmio.1",
                io::Error::from_raw_os_error(libc::EBUSY)
            ),
            ProbeError::AlreadyBound(_)
        ));
        assert!(matches!(
            why(sys.path(), "virtio-mmio.2", enodev()),
            ProbeError::Empty(_)
        ));
        assert!(matches!(
            why(sys.path(), "virtio-mmio.3", enodev()),
            ProbeError::NoDevice(_)
        ));
        assert!(matches!(
            why(
                sys.path(),
                "virtio-mmio.2",
                io::Error::from_raw_os_error(libc::ENOMEM)
            ),
            ProbeError::Bind(..)
        ));
    }

    #[test]
    fn one_write_per_device_and_nothing_for_none() {
        let sys = tempfile::tempdir().unwrap();
        // No device: the bind file is not even opened (it does not exist here).
        bind_all(sys.path(), std::iter::empty()).unwrap();
        assert!(matches!(
            bind_all(sys.path(), ["virtio-mmio.1"].into_iter()),
            Err(ProbeError::Open(_))
        ));
        let bind = sys.path().join(BIND);
        std::fs::create_dir_all(bind.parent().unwrap()).unwrap();
        std::fs::write(&bind, "").unwrap();
        bind_all(sys.path(), ["virtio-mmio.1", "virtio-mmio.2"].into_iter()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&bind).unwrap(),
            "virtio-mmio.1virtio-mmio.2"
        );
    }
}

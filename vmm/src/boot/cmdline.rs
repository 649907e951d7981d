//! The guest kernel command line: our defaults, the host profile's additions, the user's string
//! and one `virtio_mmio.device=` entry per device, in that order, so the user can override a
//! default (the kernel takes the last value of a repeated parameter).

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemory};

use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, MMIO_SLOT_SIZE};

/// What every guest gets: the console on COM1, a keyboard-controller reset on reboot (the VMM's
/// "guest is done" signal), an immediate reboot on panic, and only one legacy UART to probe.
pub const DEFAULT_PARAMS: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1";

/// Errors from building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The user's or profile's text is not a valid command line (or is too long).
    #[error("invalid kernel command line")]
    Invalid(#[source] linux_loader::cmdline::Error),
    /// Adding a device entry overflowed the command line.
    #[error("kernel command line too long for the devices")]
    Device(#[source] linux_loader::cmdline::Error),
    /// Writing it to guest memory failed.
    #[error("cannot write the kernel command line")]
    Write(#[source] linux_loader::loader::Error),
}

/// A virtio-mmio device as the kernel must be told about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceParam {
    /// Guest-physical base of its register window.
    pub addr: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
    /// An explicit platform-device id (`virtio-mmio.<id>` in the guest), or Linux's next one.
    pub id: Option<u32>,
}

/// Builds the command line from the profile's parameters, the user's text and the devices.
pub fn build(
    profile_params: &str,
    user: Option<&str>,
    devices: &[MmioDeviceParam],
) -> Result<Cmdline, CmdlineError> {
    let mut text = String::from(DEFAULT_PARAMS);
    for part in [Some(profile_params), user].into_iter().flatten() {
        let part = part.trim();
        if !part.is_empty() {
            text.push(' ');
            text.push_str(part);
        }
    }
    let mut cmdline = Cmdline::try_from(&text, CMDLINE_MAX_SIZE).map_err(CmdlineError::Invalid)?;
    for dev in devices {
        cmdline
            .add_virtio_mmio_device(MMIO_SLOT_SIZE, GuestAddress(dev.addr), dev.irq, dev.id)
            .map_err(CmdlineError::Device)?;
    }
    Ok(cmdline)
}

/// The command line as the guest will see it.
pub fn render(cmdline: &Cmdline) -> Result<String, CmdlineError> {
    let c = cmdline.as_cstring().map_err(CmdlineError::Invalid)?;
    Ok(c.to_string_lossy().into_owned())
}

/// Writes the command line to [`CMDLINE_START`]; returns its length without the NUL.
pub fn write<M: GuestMemory>(mem: &M, cmdline: &Cmdline) -> Result<usize, CmdlineError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(CmdlineError::Write)?;
    Ok(render(cmdline)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_profile_then_user_then_devices() {
        let c = build(
            "nopti quiet",
            Some("foo=bar"),
            &[MmioDeviceParam {
                addr: 0xd000_0000,
                irq: 5,
                id: None,
            }],
        )
        .unwrap();
        assert_eq!(
            render(&c).unwrap(),
            format!("{DEFAULT_PARAMS} nopti quiet foo=bar virtio_mmio.device=4K@0xd0000000:5")
        );
    }

    #[test]
    fn devices_go_before_init_args() {
        let c = build(
            "",
            Some("  rdinit=/init -- -v  "),
            &[MmioDeviceParam {
                addr: 0xd000_1000,
                irq: 6,
                id: None,
            }],
        )
        .unwrap();
        assert_eq!(
            render(&c).unwrap(),
            format!("{DEFAULT_PARAMS} rdinit=/init virtio_mmio.device=4K@0xd0001000:6 -- -v")
        );
    }

    #[test]
    fn an_explicit_platform_id_is_rendered() {
        let c = build(
            "",
            None,
            &[
                MmioDeviceParam {
                    addr: 0xd000_0000,
                    irq: 5,
                    id: None,
                },
                MmioDeviceParam {
                    addr: 0xd000_1000,
                    irq: 6,
                    id: Some(32),
                },
            ],
        )
        .unwrap();
        assert_eq!(
            render(&c).unwrap(),
            format!(
                "{DEFAULT_PARAMS} virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6:32"
            )
        );
    }

    #[test]
    fn plain_profile_adds_nothing() {
        let c = build("", None, &[]).unwrap();
        assert_eq!(render(&c).unwrap(), DEFAULT_PARAMS);
    }

    #[test]
    fn too_long_is_an_error() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build("", Some(&long), &[]),
            Err(CmdlineError::Invalid(_))
        ));
    }

    #[test]
    fn written_nul_terminated() {
        use vm_memory::Bytes;
        let mem =
            crate::memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let c = build("", Some("a=b"), &[]).unwrap();
        let len = write(&mem, &c).unwrap();
        let mut buf = vec![0u8; len + 1];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(buf.last(), Some(&0));
        assert!(buf.starts_with(b"console=ttyS0"));
        assert!(buf[..len].ends_with(b"a=b"));
    }
}

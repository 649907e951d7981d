//! The i8042 keyboard controller, reduced to the one thing a micro-VM needs from it: the CPU
//! reset command (0xFE to the command port), which a guest booted with `reboot=k` sends when it
//! is done. Everything else reads as zero (no keyboard, input buffer empty).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::BusDevice;
use crate::control::{Controller, ExitReason};

/// Ends the VM with [`ExitReason::Reset`].
pub struct ResetTrigger(Arc<Controller>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// The i8042 on ports 0x60..=0x64.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 whose reset stops the VM through `control`.
    pub fn new(control: Arc<Controller>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(control)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            *byte = self.inner.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            let _ = self.inner.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let c = Controller::new(1);
        let mut dev = I8042::new(c.clone());
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0]);
        dev.write(4, &[0xd1]);
        assert!(
            !c.is_stopping(),
            "only a one-byte 0xfe to the command port resets"
        );
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "input buffer empty");
        dev.write(4, &[0xfe]);
        assert_eq!(c.reason(), Some(ExitReason::Reset));
    }
}

//! The virtio-mmio register window as a hostile guest drives it: accesses of any width at any
//! offset, guest memory contents for the rings, and queue notifications, with a real vsock
//! device behind the transport. Checks the status invariants after every access.

#![no_main]

use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::virtio::mmio::MmioTransport;
use bulkhead_vmm::devices::virtio::{
    VirtioDevice, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use bulkhead_vmm::devices::BusDevice;
use bulkhead_vmm_fuzz::{new_device, new_mem, pump, ring_addrs, Cursor, MEM_SIZE};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const STATUS: u64 = 0x70;

fn status(t: &mut MmioTransport) -> u32 {
    let mut b = [0u8; 4];
    t.read(STATUS, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = new_mem();
    let dev = new_device(&dir);
    let mut em = EventManager::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let shared: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
    let irq =
        vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(mem.clone(), shared, irq).expect("transport");

    while !c.is_empty() {
        match c.u8() % 5 {
            0 => {
                let off = u64::from(c.u16() % 0x180);
                let len = [1usize, 2, 4, 8][usize::from(c.u8() % 4)];
                let bytes = c.bytes(len).to_vec();
                t.write(off, &bytes);
            }
            1 => {
                let off = u64::from(c.u16() % 0x180);
                let len = [1usize, 2, 4, 8][usize::from(c.u8() % 4)];
                let mut b = vec![0u8; len];
                t.read(off, &mut b);
            }
            2 => {
                let addr = u64::from(c.u16()) * 16;
                let len = usize::from(c.u8());
                let bytes = c.bytes(len);
                if addr as usize + bytes.len() <= MEM_SIZE {
                    let _ = mem.write_slice(bytes, GuestAddress(addr));
                }
            }
            // The usual driver handshake with fuzzed queue sizes and features, so the fuzzer
            // gets past DRIVER_OK often.
            3 => {
                write32(&mut t, STATUS, 0);
                write32(&mut t, STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
                write32(
                    &mut t,
                    STATUS,
                    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
                );
                let features = c.u64();
                write32(&mut t, 0x24, 0);
                write32(&mut t, 0x20, features as u32);
                write32(&mut t, 0x24, 1);
                write32(&mut t, 0x20, (features >> 32) as u32 | 1);
                let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
                write32(&mut t, STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
                for q in 0..3u32 {
                    let (d, a, u) = ring_addrs(q as usize);
                    write32(&mut t, 0x30, q);
                    write32(&mut t, 0x38, u32::from(c.u16()));
                    write32(&mut t, 0x80, d as u32);
                    write32(&mut t, 0x90, a as u32);
                    write32(&mut t, 0xa0, u as u32);
                    write32(&mut t, 0x44, 1);
                }
                write32(
                    &mut t,
                    STATUS,
                    s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK,
                );
            }
            _ => {
                write32(&mut t, 0x50, u32::from(c.u8() % 4));
                pump(&mut em);
            }
        }
        let s = status(&mut t);
        if s & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let needed =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            assert_eq!(s & needed, needed, "status {s:#x}");
        }
    }
    pump(&mut em);
});

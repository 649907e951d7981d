//! vCPU tests on the real `/dev/kvm`: a few bytes of guest code in real mode and in long mode,
//! run by the same vCPU loop that runs Linux, exiting through our buses. Skipped (with a note)
//! when the host has no KVM.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_regs;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};

use super::vcpu::{Vcpu, VcpuContext};
use crate::boot::regs;
use crate::control::{Controller, ExitReason, FaultKind};
use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::BusDevice;
use crate::layout::{I8042_PORT, I8042_PORT_LEN, PDPTE_START, VIRTIO_MMIO_START};
use crate::memory::GuestMemoryMmap;

const TEST_PORT: u16 = 0x10;
const CODE_ADDR: u64 = 0x1000;

/// Records every access and answers reads with a fixed pattern.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<(u64, usize)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        data.fill(0x90 + offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

struct TestVm {
    _kvm: Kvm,
    _vm: VmFd,
    vcpu: Vcpu,
    ctx: VcpuContext,
    pio_dev: Arc<Mutex<Recorder>>,
    mmio_dev: Arc<Mutex<Recorder>>,
}

/// `/dev/kvm` can be opened (see `bulkhead_test_support::require`).
fn kvm_available() -> bool {
    bulkhead_test_support::require(&[bulkhead_test_support::Need::Kvm])
}

/// A 2-MiB VM with `code` at [`CODE_ADDR`], a recorder on port [`TEST_PORT`] and on the first
/// virtio-mmio page, and the i8042.
fn test_vm(code: &[u8]) -> TestVm {
    let kvm = super::open(Path::new(super::DEFAULT_KVM_DEVICE)).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
    mem.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
    let vm = super::create_vm(&kvm, &mem).unwrap();
    let fd = super::create_vcpus(&kvm, &vm, 1).unwrap().pop().unwrap();
    let control = Controller::new(1);

    let pio_dev = Arc::new(Mutex::new(Recorder::default()));
    let mmio_dev = Arc::new(Mutex::new(Recorder::default()));
    let mut pio = Bus::new();
    pio.insert(pio_dev.clone(), u64::from(TEST_PORT), 1)
        .unwrap();
    let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
    pio.insert(i8042, u64::from(I8042_PORT), u64::from(I8042_PORT_LEN))
        .unwrap();
    let mut mmio = Bus::new();
    mmio.insert(mmio_dev.clone(), VIRTIO_MMIO_START, 0x1000)
        .unwrap();
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        mem,
        control,
        save: Default::default(),
        // Run on the test's own thread: no allow-list (the VM-level tests have them).
        seccomp: None,
    };
    TestVm {
        _kvm: kvm,
        _vm: vm,
        vcpu: Vcpu::new(0, fd),
        ctx,
        pio_dev,
        mmio_dev,
    }
}

fn enter_long_mode(t: &TestVm) {
    let cr3 = regs::write_boot_tables(&t.ctx.mem).unwrap();
    // The boot map covers the first GiB; map 3-4 GiB (the MMIO window) with a second page
    // directory so the code can reach the virtio-mmio page.
    let pd = 0x10000u64;
    t.ctx
        .mem
        .write_obj(pd | 0x3, GuestAddress(PDPTE_START + 3 * 8))
        .unwrap();
    for i in 0..512u64 {
        let page = (3u64 << 30) + (i << 21);
        t.ctx
            .mem
            .write_obj(page | 0x83, GuestAddress(pd + i * 8))
            .unwrap();
    }
    regs::setup_long_mode(t.vcpu.fd(), cr3, CODE_ADDR).unwrap();
}

fn enter_real_mode(t: &TestVm) {
    let fd = t.vcpu.fd();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).unwrap();
    fd.set_regs(&kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
}

/// Runs the vCPU on this thread until the VM stops; returns why.
fn run(t: TestVm) -> (ExitReason, Recorder, Recorder) {
    let TestVm {
        _kvm,
        _vm,
        vcpu,
        ctx,
        pio_dev,
        mmio_dev,
    } = t;
    super::kick::install_handler().unwrap();
    vcpu.run(&ctx);
    let reason = ctx.control.reason().unwrap();
    let take = |d: Arc<Mutex<Recorder>>| std::mem::take(&mut *d.lock().unwrap());
    (reason, take(pio_dev), take(mmio_dev))
}

#[test]
fn real_mode_port_io_and_i8042_reset() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0xba, 0x10, 0x00, // mov dx, 0x10
        0xb0, 0x42,       // mov al, 0x42
        0xee,             // out dx, al
        0xec,             // in al, dx
        0xb0, 0xfe,       // mov al, 0xfe
        0xe6, 0x64,       // out 0x64, al (i8042 reset)
        0xf4,             // hlt (never reached)
    ];
    let t = test_vm(&code);
    enter_real_mode(&t);
    let (reason, pio, _) = run(t);
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(pio.writes, vec![(0, vec![0x42])]);
    assert_eq!(pio.reads, vec![(0, 1)]);
}

#[test]
fn long_mode_port_and_mmio_exits_through_the_buses() {
    if !kvm_available() {
        return;
    }
    #[rustfmt::skip]
    let code = [
        0x66, 0xba, 0x10, 0x00,                   // mov dx, 0x10
        0xb0, 0x42,                               // mov al, 0x42
        0xee,                                     // out dx, al
        0xec,                                     // in al, dx        (device answers 0x90)
        0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0,
        0x00, 0x00, 0x00, 0x00,                   // mov rbx, 0xd0000000
        0x89, 0x03,                               // mov [rbx], eax   (MMIO write at +0)
        0x8b, 0x4b, 0x08,                         // mov ecx, [rbx+8] (MMIO read at +8: 0x98989898)
        0x89, 0x4b, 0x04,                         // mov [rbx+4], ecx (echo what was read)
        0xe4, 0x71,                               // in al, 0x71      (unmapped port reads 0)
        0x88, 0x43, 0x0c,                         // mov [rbx+12], al
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al     (i8042 reset)
        0xf4,                                     // hlt (never reached)
    ];
    let t = test_vm(&code);
    enter_long_mode(&t);
    let (reason, pio, mmio) = run(t);
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(pio.writes, vec![(0, vec![0x42])]);
    assert_eq!(pio.reads, vec![(0, 1)]);
    assert_eq!(mmio.reads, vec![(8, 4)]);
    assert_eq!(
        mmio.writes,
        vec![(0, vec![0x90, 0, 0, 0]), (4, vec![0x98; 4]), (12, vec![0]),]
    );
}

#[test]
fn triple_fault_is_a_fault_with_a_register_dump() {
    if !kvm_available() {
        return;
    }
    // ud2 with an empty IDT: #UD cannot be delivered, then #DF cannot, then the CPU shuts down.
    let t = test_vm(&[0x0f, 0x0b]);
    enter_long_mode(&t);
    let (reason, _, _) = run(t);
    let ExitReason::Fault(fault) = reason else {
        panic!("expected a fault, got {reason:?}");
    };
    // Hardware KVM reports a triple fault; an emulating KVM may call it an internal error.
    assert!(
        matches!(
            fault.kind,
            FaultKind::TripleFault | FaultKind::InternalError { .. }
        ),
        "{fault}"
    );
    let dump = fault.dump.expect("registers readable");
    let text = dump.to_string();
    assert!(text.contains("cr3=0000000000009000"), "{text}");
    if fault.kind == FaultKind::TripleFault {
        assert_eq!(dump.rip_phys, Some(CODE_ADDR));
        assert!(text.contains("code at rip (phys 0x1000): 0f 0b"), "{text}");
    }
}

#[test]
fn a_handle_stops_a_spinning_guest() {
    if !kvm_available() {
        return;
    }
    let t = test_vm(&[0xeb, 0xfe]); // jmp $
    enter_long_mode(&t);
    let control = t.ctx.control.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        crate::control::VmHandle::new(control).stop();
    });
    let (reason, _, _) = run(t);
    stopper.join().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
}

//! Save and restore on the real `/dev/kvm` with a tiny long-mode guest: it counts in a
//! register and in memory and does port I/O on every iteration. Paused mid-run, saved (vCPU,
//! VM-wide state, memory file), restored into a fresh VM and run to the end, it must continue
//! exactly where it was: no iteration lost or repeated, the port-read data of the exit it was
//! paused at delivered, memory intact. Skipped (with a note) without KVM.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::regs;
use crate::builder;
use crate::compat::HostProfile;
use crate::control::{Controller, ExitReason};
use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::BusDevice;
use crate::kvm::state::{self as kvm_state, SaveSpec, VcpuState};
use crate::kvm::vcpu::{Vcpu, VcpuContext};
use crate::kvm::{self, DEFAULT_KVM_DEVICE};
use crate::layout::{I8042_PORT, I8042_PORT_LEN};
use crate::memory::GuestMemoryMmap;
use crate::snapshot::memory as memfile;

const CODE: u64 = 0x1000;
const SUM: u64 = 0x5000;
const PORT: u16 = 0x10;
const ITERATIONS: u32 = 30_000;

/// Two ports: reads (of `PORT + 1`) answer 1; writes (to `PORT`) are recorded (low byte).
#[derive(Default)]
struct Counter {
    writes: Vec<u8>,
}

impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = 1;
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.writes.push(data[0]);
    }
}

/// `for rcx in 1..=N { [SUM] += in(PORT + 1); out(PORT, cl) }` then an i8042 reset.
fn program() -> Vec<u8> {
    let n = ITERATIONS.to_le_bytes();
    #[rustfmt::skip]
    let code = vec![
        0x48, 0xc7, 0xc3, 0x00, 0x50, 0x00, 0x00, // mov rbx, 0x5000
        0x48, 0x31, 0xc9,                         // xor rcx, rcx
        // loop:
        0xe4, 0x11,                               // in al, 0x11
        0x48, 0x0f, 0xb6, 0xc0,                   // movzx rax, al
        0x48, 0x01, 0x03,                         // add [rbx], rax
        0x48, 0xff, 0xc1,                         // inc rcx
        0x88, 0xc8,                               // mov al, cl
        0xe6, 0x10,                               // out 0x10, al
        0x48, 0x81, 0xf9, n[0], n[1], n[2], n[3], // cmp rcx, N
        0x75, 0xe7,                               // jne loop (-25)
        0xb0, 0xfe,                               // mov al, 0xfe
        0xe6, 0x64,                               // out 0x64, al
        0xf4,                                     // hlt
    ];
    code
}

struct TinyVm {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: Vcpu,
    ctx: VcpuContext,
    counter: Arc<Mutex<Counter>>,
}

/// A VM over `mem` with one vCPU given this host's CPUID, the counter port and the i8042.
fn tiny_vm(mem: GuestMemoryMmap) -> (TinyVm, SaveSpec) {
    let kvm = kvm::open(Path::new(DEFAULT_KVM_DEVICE)).unwrap();
    let vm = kvm::create_vm(&kvm, &mem).unwrap();
    let fd: VcpuFd = kvm::create_vcpus(&kvm, &vm, 1).unwrap().pop().unwrap();
    let base = builder::host_cpuid(&kvm, HostProfile::probe()).unwrap();
    let save = builder::save_spec(&kvm, &base, 1).unwrap();
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    fd.set_cpuid2(&crate::boot::vcpu_cpuid(&base, 0, 1, tsc_deadline))
        .unwrap();
    let control = Controller::new(1);
    let counter = Arc::new(Mutex::new(Counter::default()));
    let mut pio = Bus::new();
    pio.insert(counter.clone(), u64::from(PORT), 2).unwrap();
    let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
    pio.insert(i8042, u64::from(I8042_PORT), u64::from(I8042_PORT_LEN))
        .unwrap();
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(Bus::new()),
        mem,
        control,
        save: Arc::new(save.clone()),
        // Run on the test's own thread: no allow-list (the VM-level tests have them).
        seccomp: None,
    };
    let vm_ = TinyVm {
        _kvm: kvm,
        vm,
        vcpu: Vcpu::new(0, fd),
        ctx,
        counter,
    };
    (vm_, save)
}

fn writes(c: &Arc<Mutex<Counter>>) -> Vec<u8> {
    c.lock().unwrap().writes.clone()
}

/// Everything but what moves while a vCPU sits paused (the TSC and the kvmclock pages' data).
fn comparable(s: &VcpuState) -> VcpuState {
    let mut s = s.clone();
    s.msrs.retain(|(i, _)| *i != 0x10);
    s
}

#[test]
fn a_tiny_guest_continues_exactly_where_it_was_saved() {
    if !Path::new(DEFAULT_KVM_DEVICE).exists() {
        eprintln!("skipped: no {DEFAULT_KVM_DEVICE}");
        return;
    }
    kvm::kick::install_handler().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The template: run until it has done a tenth of its work, then pause and save it.
    let mem = crate::memory::create(32).unwrap();
    mem.write_slice(&program(), GuestAddress(CODE)).unwrap();
    let (a, _) = tiny_vm(mem);
    let cr3 = regs::write_boot_tables(&a.ctx.mem).unwrap();
    regs::setup_long_mode(a.vcpu.fd(), cr3, CODE).unwrap();
    let TinyVm {
        _kvm: kvm_a,
        vm: vm_a,
        vcpu,
        ctx,
        counter,
    } = a;
    let ctx_a = ctx.clone();
    let runner = std::thread::spawn(move || vcpu.run(&ctx_a));
    let deadline = Instant::now() + Duration::from_secs(60);
    while writes(&counter).len() < (ITERATIONS / 10) as usize {
        assert!(Instant::now() < deadline, "the guest makes no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut states = ctx.control.pause(Duration::from_secs(10)).unwrap();
    let saved_vcpu = states.pop().unwrap().unwrap();
    let saved_vm = kvm_state::save_vm(&vm_a).unwrap();
    let before = writes(&counter);
    let mem_file = dir.path().join("memory");
    let written = memfile::write(&ctx.mem, &mem_file).unwrap();
    let sum_at_pause: u64 = ctx.mem.read_obj(GuestAddress(SUM)).unwrap();
    // A pause lands between any two guest instructions (the kick interrupts guest code), so
    // the read of an iteration may be done and its write still to come.
    let reads_ahead = sum_at_pause.checked_sub(before.len() as u64);
    assert!(
        matches!(reads_ahead, Some(0 | 1)),
        "each write follows its read: {sum_at_pause} reads, {} writes",
        before.len()
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(writes(&counter), before, "a paused vCPU does not run");
    // The template runs on to its end after the snapshot.
    ctx.control.resume();
    runner.join().unwrap();
    assert_eq!(ctx.control.reason(), Some(ExitReason::Reset));
    let expected: Vec<u8> = (1..=ITERATIONS).map(|i| i as u8).collect();
    assert!(writes(&counter) == expected, "the template resumed");
    drop((vm_a, kvm_a));
    let msrs: Vec<String> = saved_vcpu
        .msrs
        .iter()
        .map(|(i, _)| format!("{i:#x}"))
        .collect();
    eprintln!(
        "paused after {} iterations; memory file: {} data bytes of {}; {} msrs saved: {}",
        before.len(),
        written.data_bytes,
        written.file_size,
        msrs.len(),
        msrs.join(" ")
    );

    // The clone: fresh VM and vCPU over the memory file.
    let mem = memfile::map(&mem_file, &written.regions, written.file_size).unwrap();
    let (b, _) = tiny_vm(mem);
    kvm_state::restore_vm(&b.vm, &saved_vm).unwrap();
    kvm_state::restore_vcpu(b.vcpu.fd(), &saved_vcpu).unwrap();
    let reread = b.ctx.save.save(b.vcpu.fd(), 0).unwrap();
    assert_eq!(
        comparable(&reread),
        comparable(&saved_vcpu),
        "state reads back"
    );
    let TinyVm {
        vcpu, ctx, counter, ..
    } = b;
    vcpu.run(&ctx);
    assert_eq!(ctx.control.reason(), Some(ExitReason::Reset));
    let after = writes(&counter);
    let all: Vec<u8> = before.iter().chain(&after).copied().collect();
    assert_eq!(all.len(), expected.len(), "no iteration lost or repeated");
    assert!(all == expected, "the count continues where it was paused");
    let sum: u64 = ctx.mem.read_obj(GuestAddress(SUM)).unwrap();
    assert_eq!(sum, u64::from(ITERATIONS), "memory and port reads intact");
}

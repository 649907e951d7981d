//! The vsock device end to end: the real guest kernel's virtio-vsock driver against our device,
//! through `bulkhead-vmm --vsock`, with a small test guest (`vsock_support/guest.rs`) as PID 1.
//! Checks host→guest connections (`CONNECT`/`OK`), data both ways with checksums, a
//! guest→host connection to `<socket>_<port>`, refusals both ways, and a clean power-off; then
//! prints the device's packet, notification and interrupt counts per MiB. One boot (~30-60 s
//! on PVM-backed KVM) plus the transfers. Gated by `BULKHEAD_E2E=1`;
//! `BULKHEAD_VSOCK_TEST_MIB` sets the guest→host stream size (default 1: four times the credit
//! window the guest's default 256 KiB vsock buffer makes with our 1 MiB `DEFAULT_BUF_ALLOC`,
//! and more than the host socket's buffers, so flow control and credit updates are exercised).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use bulkhead_tests::{kernel, repo_root, require, vm_needs, vmm_binary};

#[path = "vsock_support/mod.rs"]
mod vsock_support;

use vsock_support::{counters, fnv1a, guest_initramfs, pattern, read_line, try_connect, VsockVm};

/// A boot is ~30 s on PVM alone; be generous for busy CI machines.
const BOOT: Duration = Duration::from_secs(600);
/// Each transfer moves a MiB or more through an emulated guest kernel (~0.2 MiB/s on PVM).
const TRANSFER: Duration = Duration::from_secs(600);

#[test]
fn vsock_end_to_end() {
    if !require(&vm_needs()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = guest_initramfs(&repo_root(), dir.path());
    let mut vm = VsockVm::boot(&vmm_binary(), &kernel(), &initrd, dir.path(), 128);

    // Host → guest connection and a round trip.
    let mut s = vm.command("ECHO", BOOT);
    s.write_all(b"ping\n").unwrap();
    assert_eq!(read_line(&mut s).as_deref(), Some("ping"));
    drop(s);

    // Guest → host stream.
    let mib: usize = std::env::var("BULKHEAD_VSOCK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let n = mib << 20;
    let mut s = vm.command(&format!("SEND {n}"), TRANSFER);
    let mut got = Vec::with_capacity(n);
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), n, "guest→host stream cut short");
    let bad = got.iter().enumerate().position(|(i, &b)| b != pattern(i));
    assert_eq!(bad, None, "guest→host stream corrupted");

    // Host → guest stream.
    let blob: Vec<u8> = (0..1usize << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = vm.command("SINK", TRANSFER);
    s.write_all(&blob).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_line(&mut s).unwrap_or_default();
    let want = format!(
        "GOT {} {:016x}",
        blob.len(),
        fnv1a(vsock_support::FNV_START, &blob)
    );
    assert_eq!(answer, want, "host→guest stream");

    // Guest → host connection to `<socket>_7000`.
    let mut path = vm.socket.as_os_str().to_owned();
    path.push("_7000");
    let listener = UnixListener::bind(&path).unwrap();
    let host = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut line = [0u8; 17];
        c.read_exact(&mut line).unwrap();
        c.write_all(b"welcome\n").unwrap();
        line
    });
    let mut s = vm.command("DIAL 7000", TRANSFER);
    assert_eq!(read_line(&mut s).as_deref(), Some("DIALED welcome"));
    assert_eq!(&host.join().unwrap(), b"hello from guest\n");

    // Refusals: no host listener on 7001; no guest listener on 4000.
    let mut s = vm.command("DIAL 7001", TRANSFER);
    let refused = read_line(&mut s).unwrap_or_default();
    assert!(refused.starts_with("DIALED ERROR"), "{refused}");
    assert!(try_connect(&vm.socket, 4000).is_none());

    let f = vm.poweroff(BOOT);
    assert!(f.status.success(), "vmm: {:?}\n{}", f.status, f.log);
    let c = counters(&f.log).unwrap_or_else(|| panic!("no counters in the log:\n{}", f.log));
    assert!(
        c.tx_bytes >= n as u64 && c.rx_bytes >= blob.len() as u64,
        "{c:?}"
    );
    let per_mib = |x: u64| x as f64 / mib as f64;
    eprintln!(
        "vsock: {mib} MiB guest→host + 1 MiB host→guest; per guest→host MiB (upper bound, \
         all traffic counted): tx packets {:.1}, kicks {:.1}, interrupts {:.1}, \
         register accesses {:.1}; {c:?}",
        per_mib(c.tx_packets),
        per_mib(c.notifications),
        per_mib(c.interrupts),
        per_mib(c.register_accesses),
    );
}

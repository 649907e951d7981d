//! `snapshot-test-guest`: the guest half of the snapshot end-to-end test (`tests/vmm_snapshot.rs`).
//!
//! A tiny static PID 1 built by a bare `rustc` at test time (not part of any crate). At boot it
//! draws a token from the TSC, fills 4 MiB with a pattern derived from it, prints
//! `SNAPSHOT-TEST-GUEST: token <hex>` on the console (waiting until it is sent, before listening,
//! so a snapshot has it on the template's console) and serves one command per connection on
//! vsock port 1024:
//! - `PING`: answers `PONG`;
//! - `MEMO`: answers `MEMO <token> <fnv1a64 of the 4 MiB now> <fnv1a64 at boot>` (hex), so the
//!   host sees a clone kept the template's memory;
//! - `CID`: answers `CID <the guest's local CID>`;
//! - `CPUS`: answers `CPUS <the CPUs this process may run on>` (all online ones);
//! - `FS`: mounts the virtio-fs tag `share` on `/share` (first time only) and answers
//!   `FS <first line of /share/hello>` (or `FS ERROR <errno text>`);
//! - `POWEROFF`: ends the VM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SOCK_CLOEXEC: i32 = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const LINUX_REBOOT_CMD_RESTART: i32 = 0x0123_4567;
const PATTERN_BYTES: usize = 4 << 20;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: i32, ty: i32, proto: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept4(fd: i32, addr: *mut u8, len: *mut u32, flags: i32) -> i32;
    fn getsockname(fd: i32, addr: *mut SockaddrVm, len: *mut u32) -> i32;
    fn mkdir(path: *const u8, mode: u32) -> i32;
    fn mount(src: *const u8, target: *const u8, fstype: *const u8, flags: u64, data: *const u8)
        -> i32;
    fn reboot(cmd: i32) -> i32;
    fn tcdrain(fd: i32) -> i32;
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn read_line(s: &mut File) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn local_cid(s: &File) -> u32 {
    let mut addr = SockaddrVm {
        family: 0,
        reserved: 0,
        port: 0,
        cid: 0,
        flags: 0,
        zero: [0; 3],
    };
    let mut len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: a valid socket and a sockaddr_vm-sized buffer.
    unsafe { getsockname(s.as_raw_fd(), &mut addr, &mut len) };
    addr.cid
}

/// Mounts the share (once) and reads the first line of its `hello`.
fn read_share(mounted: &mut bool) -> String {
    if !*mounted {
        // SAFETY: NUL-terminated literals; plain syscalls whose results are checked.
        let rc = unsafe {
            mkdir(b"/share\0".as_ptr(), 0o755);
            mount(
                b"share\0".as_ptr(),
                b"/share\0".as_ptr(),
                b"virtiofs\0".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return format!("ERROR {}", std::io::Error::last_os_error());
        }
        *mounted = true;
    }
    match std::fs::read_to_string("/share/hello") {
        Ok(text) => text.lines().next().unwrap_or("").to_string(),
        Err(e) => format!("ERROR {e}"),
    }
}

fn main() {
    // SAFETY: rdtsc has no preconditions (user-mode TSC reads are allowed in the guest).
    let token = unsafe { core::arch::x86_64::_rdtsc() } | 1;
    let memory: Vec<u8> = (0..PATTERN_BYTES)
        .map(|i| (token.wrapping_mul(i as u64 + 1) >> 29) as u8)
        .collect();
    let at_boot = fnv1a(&memory);
    // Before listening, and sent out: the host snapshots once a connection is accepted, and
    // with two vCPUs it could otherwise do so before the line reached the template's console.
    println!("SNAPSHOT-TEST-GUEST: token {token:016x}");
    // SAFETY: a plain syscall on stdout (the console); waits until the UART has sent the line.
    unsafe { tcdrain(1) };
    // SAFETY: a plain syscall; checked below.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new socket nobody else owns.
    let listener = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let addr = SockaddrVm {
        family: AF_VSOCK as u16,
        reserved: 0,
        port: 1024,
        cid: VMADDR_CID_ANY,
        flags: 0,
        zero: [0; 3],
    };
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: a valid socket and sockaddr_vm.
    let ok = unsafe { bind(fd, &addr, len) == 0 && listen(fd, 16) == 0 };
    assert!(ok, "listen: {}", std::io::Error::last_os_error());
    let mut mounted = false;
    loop {
        // SAFETY: a listening socket; the peer address is not wanted.
        let c = unsafe {
            accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            continue;
        }
        // SAFETY: a new connection nobody else owns.
        let mut s = File::from(unsafe { OwnedFd::from_raw_fd(c) });
        let answer = match read_line(&mut s).trim() {
            "PING" => "PONG".to_string(),
            "MEMO" => format!("MEMO {token:016x} {:016x} {at_boot:016x}", fnv1a(&memory)),
            "CID" => format!("CID {}", local_cid(&s)),
            "CPUS" => format!(
                "CPUS {}",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            "FS" => format!("FS {}", read_share(&mut mounted)),
            "POWEROFF" => break,
            other => format!("ERROR {other:?}"),
        };
        let _ = writeln!(s, "{answer}");
    }
    println!("SNAPSHOT-TEST-GUEST: powering off");
    // SAFETY: PID 1 ending the VM; with `reboot=k` this resets through the i8042.
    unsafe { reboot(LINUX_REBOOT_CMD_RESTART) };
}

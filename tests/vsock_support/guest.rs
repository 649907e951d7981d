//! `vsock-test-guest`: the guest half of the VMM's vsock end-to-end test and benchmark.
//!
//! A tiny static PID 1 that serves one command per connection on vsock port 1024. It uses only
//! std and raw syscalls so the host side can build it with a bare `rustc` (see `mod.rs` next
//! to this file); it is not part of any crate.
//!
//! Commands (one line; the rest of the connection carries the data):
//! - `ECHO`: echo until end of file.
//! - `SEND <n> [<bufsize> [<chunk>]]`: write `n` bytes of the pattern `i % 251` in writes of
//!   `chunk` bytes (default 64 KiB), with the socket's vsock buffer set to `bufsize` if given.
//! - `SINK`: read until end of file, answer `GOT <bytes> <fnv1a64 hex>`.
//! - `DIAL <port>`: connect to host port `<port>`, send `hello from guest\n`, answer
//!   `DIALED <its one-line reply>` (or `DIALED ERROR <errno text>`).
//! - `POWEROFF`: end the VM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SOCK_CLOEXEC: i32 = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const VMADDR_CID_HOST: u32 = 2;
const SO_VM_SOCKETS_BUFFER_SIZE: i32 = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: i32 = 2;
const LINUX_REBOOT_CMD_RESTART: i32 = 0x0123_4567;

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
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, val: *const u64, len: u32) -> i32;
    fn reboot(cmd: i32) -> i32;
    fn sync();
}

fn vsock_addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    }
}

const ADDR_LEN: u32 = std::mem::size_of::<SockaddrVm>() as u32;

fn vsock_socket() -> std::io::Result<File> {
    // SAFETY: a plain syscall; the result is checked before use.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn read_line(s: &mut File) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn set_buffer(s: &File, size: u64) {
    for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
        // SAFETY: a valid socket and a u64 option value, as AF_VSOCK expects.
        unsafe { setsockopt(s.as_raw_fd(), AF_VSOCK, opt, &size, 8) };
    }
}

fn send(s: &mut File, n: usize, chunk: usize) {
    let pattern: Vec<u8> = (0..chunk + 251).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    while sent < n {
        let len = (n - sent).min(chunk);
        let off = sent % 251;
        if s.write_all(&pattern[off..off + len]).is_err() {
            return;
        }
        sent += len;
    }
}

fn sink(s: &mut File) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    while let Ok(n @ 1..) = s.read(&mut buf) {
        total += n as u64;
        hash = fnv1a(hash, &buf[..n]);
    }
    let _ = writeln!(s, "GOT {total} {hash:016x}");
}

fn dial(port: u32) -> String {
    let mut s = match vsock_socket() {
        Ok(s) => s,
        Err(e) => return format!("ERROR {e}"),
    };
    let addr = vsock_addr(VMADDR_CID_HOST, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes.
    if unsafe { connect(s.as_raw_fd(), &addr, ADDR_LEN) } != 0 {
        return format!("ERROR {}", std::io::Error::last_os_error());
    }
    if let Err(e) = s.write_all(b"hello from guest\n") {
        return format!("ERROR {e}");
    }
    read_line(&mut s)
}

/// Serves one connection; false once asked to power off.
fn serve(mut s: File) -> bool {
    let cmd = read_line(&mut s);
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    match words.first().copied() {
        Some("ECHO") => {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        Some("SEND") => {
            if let Some(size) = num(2) {
                set_buffer(&s, size);
            }
            let chunk = num(3).unwrap_or(64 * 1024).max(1) as usize;
            send(&mut s, num(1).unwrap_or(0) as usize, chunk);
        }
        Some("SINK") => sink(&mut s),
        Some("DIAL") => {
            let answer = dial(num(1).unwrap_or(0) as u32);
            let _ = writeln!(s, "DIALED {answer}");
        }
        Some("POWEROFF") => return false,
        _ => {
            let _ = writeln!(s, "ERROR unknown command {cmd:?}");
        }
    }
    true
}

fn main() {
    let listener = vsock_socket().expect("vsock socket");
    let addr = vsock_addr(VMADDR_CID_ANY, 1024);
    // SAFETY: a valid socket and sockaddr_vm.
    let ok = unsafe {
        bind(listener.as_raw_fd(), &addr, ADDR_LEN) == 0 && listen(listener.as_raw_fd(), 16) == 0
    };
    assert!(ok, "listen: {}", std::io::Error::last_os_error());
    println!("VSOCK-TEST-GUEST: listening on 1024");
    loop {
        // SAFETY: a listening socket; the peer address is not wanted.
        let fd = unsafe {
            accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: `fd` is a new connection nobody else owns.
        let conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !serve(conn) {
            break;
        }
    }
    println!("VSOCK-TEST-GUEST: powering off");
    // SAFETY: PID 1 ending the VM; with `reboot=k` this resets through the i8042.
    unsafe {
        sync();
        reboot(LINUX_REBOOT_CMD_RESTART);
    }
}

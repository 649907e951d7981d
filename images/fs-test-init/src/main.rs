//! `/init` for Bulkhead's virtio-fs end-to-end test (`tests/virtiofs_e2e.rs`).
//!
//! Runs as PID 1 (root) in a guest whose only file system besides the initramfs is virtio-fs:
//! tag `bulkhead` (read-write) at `/mnt`, tag `ro` (read-only) at `/ro`. It measures simple
//! operations, checks that ordinary file work lands on the host, tries every escape from the
//! share it knows, prints a verdict and reboots (which ends the VM).
//!
//! Console protocol (one line each):
//! - `FS-TEST: mark <name>`: a quiet point; the program sleeps [`QUIET`] after it so the host can
//!   read the device's request counters (requests between two marks belong to the step named by
//!   the first);
//! - `FS-TEST: go <name>`: the quiet point is over, the step starts. Both lines are on the host's
//!   console file before the program goes on (it waits until the UART has sent them), so a host
//!   that reads the counters after `mark` and then sees no `go` knows no request of the step
//!   came before its reading;
//! - `FS-TEST: check <name> ok` or `FS-TEST: check <name> FAIL <why>`;
//! - `FS-TEST: verdict ok` or `FS-TEST: verdict FAIL <n> checks failed`.
//!
//! The host passes the absolute host path of a directory outside the share as the kernel
//! parameter `fstest_outside=<path>` (which reaches init as an environment variable): its
//! `secret` file holds [`SECRET`], which no read in here may ever return.

#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod escape;
mod work;

use std::ffi::CString;
use std::io;
use std::os::raw::c_int;
use std::time::Duration;

const MARK: &str = "FS-TEST";
/// Kernel parameter naming the host directory outside the share (`fstest_outside=/abs/path`).
const OUTSIDE_PARAM: &str = "fstest_outside";
/// The marker in the host's secret file outside the share.
pub const SECRET: &[u8] = b"HOST-SECRET-5f1e";
/// How long a mark stays quiet: the host reads the counters within its 10 ms console poll, and
/// a reading that came too late is seen (its `go` line is already there) and fails the test.
/// Half a second leaves a loaded host's poll thread fifty times its period.
const QUIET: Duration = Duration::from_millis(500);

/// Results of the checks so far.
#[derive(Default)]
pub struct Report {
    failed: usize,
}

impl Report {
    /// Records one check.
    pub fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => say(&format!("check {name} ok")),
            Err(why) => {
                self.failed += 1;
                say(&format!("check {name} FAIL {why}"));
            }
        }
    }
}

/// C entry point: the kernel passes `/init`'s arguments.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(argc: c_int, argv: *const *const std::os::raw::c_char) -> c_int {
    let _ = (argc, argv);
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        say("FAIL not PID 1");
        return 1;
    }
    // Unknown `name=value` kernel parameters reach init as environment variables.
    let outside = std::env::var(OUTSIDE_PARAM).unwrap_or_default();
    say("started");
    let mut report = Report::default();
    match setup() {
        Ok(()) => {
            work::measure(&mut report);
            work::functional(&mut report);
            escape::all(&mut report, &outside);
            // Flush the writeback cache to the host before the VM ends.
            report.check("umount", umount("/mnt"));
        }
        Err(e) => report.check("setup", Err(e)),
    }
    if report.failed == 0 {
        say("verdict ok");
    } else {
        say(&format!("verdict FAIL {} checks failed", report.failed));
    }
    reboot()
}

/// /dev, /proc, /sys and the two shares.
fn setup() -> Result<(), String> {
    for dir in ["/dev", "/proc", "/sys", "/mnt", "/ro"] {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(format!("{dir}: {e}"))
            }
            _ => {}
        }
    }
    mount("devtmpfs", "/dev", "devtmpfs").or_else(|e| {
        // The initramfs may already have put a /dev/console there; that is fine.
        if e.contains("busy") {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    mount("bulkhead", "/mnt", "virtiofs")?;
    mount("ro", "/ro", "virtiofs")?;
    say("mounted");
    Ok(())
}

pub fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn mount(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let (src, tgt, ty) = (cstring(source), cstring(target), cstring(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Err(format!("mount {source} busy"));
        }
        Err(format!("mount {source} on {target}: {e}"))
    }
}

fn umount(target: &str) -> Result<(), String> {
    let t = cstring(target);
    // SAFETY: sync has no preconditions; `t` is a valid NUL-terminated string.
    let rc = unsafe {
        libc::sync();
        libc::umount(t.as_ptr())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("umount {target}: {}", io::Error::last_os_error()))
    }
}

/// A quiet point for the host's counters.
pub fn mark(name: &str) {
    say(&format!("mark {name}"));
    drain();
    std::thread::sleep(QUIET);
    say(&format!("go {name}"));
    drain();
}

/// Waits until the console (our stdout) has sent what was written: the VMM has it then.
fn drain() {
    // SAFETY: tcdrain on a file descriptor has no memory-safety preconditions.
    unsafe { libc::tcdrain(1) };
}

/// Seconds since boot, with milliseconds.
fn uptime() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return "?".to_string();
    }
    format!("{}.{:03}s", ts.tv_sec, ts.tv_nsec / 1_000_000)
}

/// Writes one `FS-TEST: <msg> [<uptime>]` line with a single write.
pub fn say(msg: &str) {
    let line = format!("{MARK}: {msg} [{}]\n", uptime());
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Byte `i` of the test pattern the host writes into `big.bin` (and we into `guest-big.bin`).
pub fn pattern(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// Ends the VM (reboot with `reboot=k` writes the i8042 reset the VMM waits for).
fn reboot() -> c_int {
    // SAFETY: as PID 1 we may reboot; sync has no preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    say("FAIL reboot returned");
    1
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_is_stable() {
        assert_eq!(super::pattern(0), 7);
        assert_eq!(super::pattern(1), 38);
        assert_eq!(super::pattern(251), 7);
    }
}

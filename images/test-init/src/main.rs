//! `/init` for Bulkhead's VMM boot test.
//!
//! Runs as PID 1 in a guest booted with only an initramfs. It proves that the guest kernel
//! boots, that user space runs and that system calls, fork/exec/wait and sysfs work, then
//! ends the VM with `reboot(RB_AUTOBOOT)`: with `reboot=k` on the kernel command line the
//! kernel writes 0xFE to port 0x64, which the VMM treats as "the guest is done".
//!
//! Console protocol (one line each, on `/dev/console`):
//! - `BULKHEAD-TEST-INIT: started`
//! - `BULKHEAD-TEST-INIT: child pid=N` (from the re-executed child, which exits with 7)
//! - `BULKHEAD-TEST-INIT: ok cpus=N` when every step passed, or
//!   `BULKHEAD-TEST-INIT: FAIL <reason>` at the first step that did not.
//!
//! `#![no_main]`: the C `main` below is the entry point, so the Rust runtime's start-up
//! (which would abort if fds 0–2 are closed and `/dev/null` is missing) never runs.
//! Unit tests get the ordinary test harness instead. Outside PID 1 (run by mistake on a
//! host) the program does nothing but say so.

#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::raw::{c_char, c_int};

const MARK: &str = "BULKHEAD-TEST-INIT";
/// Argument that makes the re-executed binary act as the child.
const CHILD_ARG: &str = "--child";
/// Exit status the child reports and the parent checks.
const CHILD_STATUS: c_int = 7;
/// Where the binary is when it is the initramfs's init and argv[0] is not absolute.
const DEFAULT_SELF: &str = "/init";
const SCRATCH_FILE: &str = "/bulkhead-test-init.tmp";
const SYSFS_DIR: &str = "/sys";
const CPUS_ONLINE: &str = "/sys/devices/system/cpu/online";

/// C entry point: `argv` is the kernel-supplied argument vector of `/init`.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let args = collect_args(argc, argv);
    ensure_console();

    if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        say(&format!("child pid={pid}"));
        return CHILD_STATUS;
    }

    say("started");
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // Mounts and reboot are for a guest's PID 1 only. To try it on a host, run it as
        // PID 1 of a new PID namespace: `unshare -pfm --mount-proc <binary>`.
        say("FAIL not PID 1");
        return 1;
    }
    let self_path = match args.first() {
        Some(p) if p.starts_with('/') => p.clone(),
        _ => DEFAULT_SELF.to_string(),
    };
    match run_steps(&self_path) {
        Ok(cpus) => {
            say(&format!("uptime={}", uptime()));
            say(&format!("ok cpus={cpus}"));
        }
        Err(reason) => say(&format!("FAIL {reason}")),
    }
    power_off()
}

/// Copies `argv` into owned strings (lossily: this program only compares ASCII).
fn collect_args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    let count = usize::try_from(argc).unwrap_or(0);
    (0..count)
        .map(|i| {
            // SAFETY: the C runtime passes `argc` valid pointers in `argv`, each to a
            // NUL-terminated string that lives for the whole process.
            let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
            arg.to_string_lossy().into_owned()
        })
        .collect()
}

/// Runs the test steps in order; returns the number of online CPUs.
fn run_steps(self_path: &str) -> Result<usize, String> {
    file_roundtrip().map_err(|e| format!("file round trip: {e}"))?;
    fork_exec_wait(self_path)?;
    online_cpus()
}

/// Writes a file in the initramfs root, reads it back and removes it.
fn file_roundtrip() -> io::Result<()> {
    let data = b"bulkhead test data\n".repeat(64);
    fs::write(SCRATCH_FILE, &data)?;
    let back = fs::read(SCRATCH_FILE)?;
    fs::remove_file(SCRATCH_FILE)?;
    if back != data {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "read back differs",
        ));
    }
    Ok(())
}

/// Forks, execs this binary with [`CHILD_ARG`] and checks that it exits with [`CHILD_STATUS`].
fn fork_exec_wait(self_path: &str) -> Result<(), String> {
    let path = CString::new(self_path).map_err(|_| "self path has a NUL byte".to_string())?;
    let child_arg = CString::new(CHILD_ARG).expect("constant has no NUL");
    let child_argv = [path.as_ptr(), child_arg.as_ptr(), std::ptr::null()];

    // SAFETY: this process is single-threaded, so the child may run any code; it only
    // calls execv and _exit, with pointers prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: `child_argv` is a NULL-terminated array of valid C strings that outlive
        // the call; on failure the child leaves at once without running destructors.
        unsafe {
            libc::execv(path.as_ptr(), child_argv.as_ptr());
            libc::_exit(127);
        }
    }

    let mut status: c_int = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    if waited != pid {
        return Err(format!("waitpid: {}", io::Error::last_os_error()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != CHILD_STATUS {
        return Err(format!(
            "child status {status:#x}, want exit {CHILD_STATUS}"
        ));
    }
    Ok(())
}

/// Counts online CPUs with sysconf (before sysfs is mounted, so glibc falls back to
/// sched_getaffinity) and from sysfs, and checks that they agree.
fn online_cpus() -> Result<usize, String> {
    // SAFETY: sysconf has no preconditions.
    let from_sysconf = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let from_sysconf = usize::try_from(from_sysconf)
        .map_err(|_| format!("sysconf(_SC_NPROCESSORS_ONLN) = {from_sysconf}"))?;

    mount_sysfs().map_err(|e| format!("mount sysfs: {e}"))?;
    let online = fs::read_to_string(CPUS_ONLINE).map_err(|e| format!("{CPUS_ONLINE}: {e}"))?;
    let from_sysfs = count_cpu_list(online.trim())
        .ok_or_else(|| format!("{CPUS_ONLINE}: cannot parse {:?}", online.trim()))?;

    say(&format!("cpus sysconf={from_sysconf} sysfs={from_sysfs}"));
    if from_sysconf != from_sysfs || from_sysfs == 0 {
        return Err(format!(
            "cpu counts differ: sysconf={from_sysconf} sysfs={from_sysfs}"
        ));
    }
    Ok(from_sysfs)
}

fn mount_sysfs() -> io::Result<()> {
    match fs::create_dir(SYSFS_DIR) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let target = CString::new(SYSFS_DIR).expect("constant has no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            c"sysfs".as_ptr(),
            target.as_ptr(),
            c"sysfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Ok(())
}

/// Counts the CPUs in a kernel CPU list such as `0`, `0-3` or `0,2-3`.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let cpu = part.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        count += hi.checked_sub(lo)? + 1;
    }
    Some(count)
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

/// Makes fds 0–2 the console when the kernel could not give them to us.
fn ensure_console() {
    // SAFETY: F_GETFD only queries the descriptor.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } != -1 {
        return;
    }
    let mut fd = open_console();
    if fd < 0 {
        // No /dev/console in the initramfs: get one from devtmpfs.
        let _ = fs::create_dir("/dev");
        // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
        unsafe {
            libc::mount(
                c"devtmpfs".as_ptr(),
                c"/dev".as_ptr(),
                c"devtmpfs".as_ptr(),
                libc::MS_NOSUID,
                std::ptr::null(),
            );
        }
        fd = open_console();
    }
    if fd < 0 {
        return;
    }
    for target in 0..=2 {
        if fd != target {
            // SAFETY: both are plain descriptor numbers; dup2 validates them.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd > 2 {
        // SAFETY: `fd` is ours and has been duplicated onto 0–2.
        unsafe { libc::close(fd) };
    }
}

fn open_console() -> c_int {
    // SAFETY: the path is a valid NUL-terminated string.
    unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) }
}

/// Writes one `BULKHEAD-TEST-INIT: <msg>` line to fd 1 with a single write when possible.
fn say(msg: &str) {
    let line = format!("{MARK}: {msg}\n");
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

/// Syncs and asks the kernel to reboot, which ends the VM. Returns only if that failed,
/// and then PID 1 exits, which panics the kernel (`panic=-1` reboots at once).
fn power_off() -> c_int {
    // SAFETY: sync and reboot have no memory-safety preconditions; as PID 1 we may reboot.
    let rc = unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT)
    };
    say(&format!(
        "FAIL reboot returned {rc}: {}",
        io::Error::last_os_error()
    ));
    1
}

#[cfg(test)]
mod tests {
    use super::count_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0,2-3"), Some(3));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }
}

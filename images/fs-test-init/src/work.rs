//! Ordinary file work on the shares: the measured operations, then checks that what the guest
//! writes lands on the host and that the read-only share refuses changes.
//!
//! Host layout of the `bulkhead` share (made by the test): `small.txt` ("small file content\n"),
//! `bin/busybox`, `dir/` with `f00`..`f19`, `big.bin` and `big2.bin` (1 MiB of [`pattern`]
//! each). The `ro` share
//! holds `file` ("read-only content\n").

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;

use crate::{cstring, mark, pattern, say, Report};

/// Runs each measured operation between two marks.
pub fn measure(report: &mut Report) {
    mark("stat");
    report.check(
        "stat",
        fs::metadata("/mnt/small.txt").map(drop).map_err(err),
    );
    mark("read-small");
    report.check(
        "read-small",
        read_expect("/mnt/small.txt", b"small file content\n"),
    );
    mark("read-small-again");
    report.check(
        "read-small-again",
        read_expect("/mnt/small.txt", b"small file content\n"),
    );
    mark("exec-busybox");
    report.check("exec-busybox", run(&["/mnt/bin/busybox", "true"]));
    mark("exec-busybox-again");
    report.check("exec-busybox-again", run(&["/mnt/bin/busybox", "true"]));
    mark("cat-small");
    report.check(
        "cat-small",
        run(&["/mnt/bin/busybox", "cat", "/mnt/dir/f07"]),
    );
    mark("ls-dir");
    report.check("ls-dir", list("/mnt/dir", 20));
    mark("ls-dir-again");
    report.check("ls-dir-again", list("/mnt/dir", 20));
    mark("create-write");
    report.check(
        "create-write",
        write_file("/mnt/guest-wrote.txt", b"written by the guest\n"),
    );
    mark("read-1mib");
    report.check("read-1mib", read_pattern("/mnt/big.bin", 1 << 20));
    report.check("readahead-1mib", set_readahead("/mnt", 1024));
    mark("read-1mib-readahead");
    report.check(
        "read-1mib-readahead",
        read_pattern("/mnt/big2.bin", 1 << 20),
    );
    mark("write-2mib");
    let big: Vec<u8> = (0..2 << 20).map(pattern).collect();
    report.check("write-2mib", write_file("/mnt/guest-big.bin", &big));
    mark("end");
}

/// File operations whose results the host checks afterwards.
pub fn functional(report: &mut Report) {
    report.check(
        "read-back",
        read_expect("/mnt/guest-wrote.txt", b"written by the guest\n"),
    );
    report.check("mkdir-rename-unlink-links", tree_changes().map_err(err));
    report.check("append", append().map_err(err));
    report.check("ro-reads", read_expect("/ro/file", b"read-only content\n"));
    report.check("ro-refuses-changes", ro_refuses());
}

fn tree_changes() -> io::Result<()> {
    fs::create_dir("/mnt/newdir")?;
    fs::write("/mnt/newdir/moved-me", b"x")?;
    fs::rename("/mnt/newdir/moved-me", "/mnt/moved")?;
    fs::write("/mnt/doomed", b"y")?;
    fs::remove_file("/mnt/doomed")?;
    std::os::unix::fs::symlink("small.txt", "/mnt/link-to-small")?;
    fs::hard_link("/mnt/small.txt", "/mnt/hardlink")?;
    if fs::metadata("/mnt/small.txt")?.ino() != fs::metadata("/mnt/hardlink")?.ino() {
        return Err(io::Error::other("hard link has another inode"));
    }
    read_expect("/mnt/link-to-small", b"small file content\n").map_err(io::Error::other)
}

fn append() -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open("/mnt/guest-wrote.txt")?;
    f.write_all(b"appended\n")?;
    drop(f);
    read_expect("/mnt/guest-wrote.txt", b"written by the guest\nappended\n")
        .map_err(io::Error::other)
}

fn ro_refuses() -> Result<(), String> {
    let erofs = |what: &str, r: io::Result<()>| match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
        Err(e) => Err(format!("{what}: {e} (want EROFS)")),
        Ok(()) => Err(format!("{what} succeeded")),
    };
    erofs(
        "open for writing",
        fs::OpenOptions::new()
            .write(true)
            .open("/ro/file")
            .map(drop),
    )?;
    erofs("create", fs::write("/ro/new", b"x"))?;
    erofs("mkdir", fs::create_dir("/ro/newdir"))?;
    erofs("unlink", fs::remove_file("/ro/file"))?;
    erofs("rename", fs::rename("/ro/file", "/ro/renamed"))?;
    erofs(
        "chmod",
        fs::set_permissions(
            "/ro/file",
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        ),
    )?;
    Ok(())
}

pub fn err(e: io::Error) -> String {
    e.to_string()
}

/// Reads `path` and compares it with `want`.
pub fn read_expect(path: &str, want: &[u8]) -> Result<(), String> {
    let got = fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    if got == want {
        Ok(())
    } else {
        Err(format!("{path}: unexpected content {:?}", preview(&got)))
    }
}

fn read_pattern(path: &str, len: usize) -> Result<(), String> {
    let mut data = Vec::with_capacity(len);
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| format!("{path}: {e}"))?;
    if data.len() != len || data.iter().enumerate().any(|(i, &b)| b != pattern(i)) {
        return Err(format!("{path}: {} bytes, not the pattern", data.len()));
    }
    Ok(())
}

/// Raises the readahead of the file system at `path` (its backing device in sysfs) to `kib`:
/// the guest's default is 128 KiB, the server accepts 1 MiB requests.
fn set_readahead(path: &str, kib: u32) -> Result<(), String> {
    let dev = fs::metadata(path).map_err(err)?.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    fs::write(&knob, format!("{kib}\n")).map_err(|e| format!("{knob}: {e}"))
}

fn write_file(path: &str, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("{path}: {e}"))
}

fn list(path: &str, want: usize) -> Result<(), String> {
    let n = fs::read_dir(path).map_err(err)?.count();
    if n == want {
        Ok(())
    } else {
        Err(format!("{path}: {n} entries, want {want}"))
    }
}

pub fn preview(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned()
}

/// Forks and execs `argv`, and waits for exit status 0.
pub fn run(argv: &[&str]) -> Result<(), String> {
    let args: Vec<CString> = argv.iter().map(|a| cstring(a)).collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: the child only calls execv and _exit with pointers prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: `ptrs` is a NULL-terminated array of valid C strings.
        unsafe {
            libc::execv(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer and `pid` our child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", io::Error::last_os_error()));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        say(&format!("{argv:?} ended with status {status:#x}"));
        Err(format!("{} failed", argv.join(" ")))
    }
}

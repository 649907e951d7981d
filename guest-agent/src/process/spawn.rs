//! Starting a program with the fewest guest-kernel operations: `clone(CLONE_VM | CLONE_VFORK)`
//! (no copy of the agent's page tables, no copy-on-write faults afterwards, unlike `fork`), a
//! handful of raw syscalls in the child, then `execve`.
//!
//! The child shares the agent's memory until it execs, so it only reads data prepared here and
//! makes raw syscalls: no allocation, no locks, no glibc wrappers that assume a normal thread
//! (glibc's `setuid` family would try to signal the agent's other threads). It reports failure by
//! writing the failed step and errno into a slot the parent reads once the vfork is released.
//!
//! Everything the agent opens is close-on-exec, so the child keeps only fds 0, 1 and 2.

use std::ffi::{c_int, c_long, c_void, CString};
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::reaper::Reaper;

/// Default search path when the process environment has no PATH (what runc/Docker use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Stack of the vfork child; it only runs the short function below.
const CHILD_STACK: usize = 64 * 1024;

/// A program ready to start: all strings already NUL-terminated.
#[derive(Debug)]
pub struct Command {
    /// `argv[0]` as the caller gave it (for messages).
    pub program: String,
    /// Full paths `execve` tries in order (PATH search done in advance).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// `None`: keep the agent's credentials (root, no supplementary groups).
    pub creds: Option<Creds>,
}

/// Credentials to switch to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The fds the child gets as 0, 1, 2 (all must be >= 3 or already in place).
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// Make stdin the controlling terminal (it is a pty slave).
    pub terminal: bool,
}

/// The step of the child setup that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Setsid = 1,
    Ctty,
    Dup,
    Setgroups,
    Setgid,
    Setuid,
    Chdir,
    Exec,
}

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {program:?}: {}", errno_text(*.errno))]
    Exec { program: String, errno: Errno },
    #[error("chdir to cwd ({cwd:?}) set in config.json failed: {}", errno_text(*.errno))]
    Chdir { cwd: String, errno: Errno },
    #[error("{step:?} in the new process: {}", errno_text(*.errno))]
    Setup { step: Step, errno: Errno },
    #[error("clone: {}", errno_text(*.0))]
    Clone(Errno),
    #[error("argument contains a NUL byte")]
    Nul,
}

/// "No such file or directory" → "no such file or directory", as Go (runc) prints errnos.
pub fn errno_text(errno: Errno) -> String {
    let desc = errno.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => desc.to_owned(),
    }
}

impl Command {
    /// Builds a command; `args[0]` without a '/' is looked up in `PATH` from `env` (or
    /// [`DEFAULT_PATH`]) the way `execvp` does, but only when started.
    pub fn new(
        args: &[String],
        env: &[String],
        cwd: &str,
        creds: Option<Creds>,
    ) -> Result<Command, SpawnError> {
        let program = args.first().cloned().unwrap_or_default();
        if program.is_empty() {
            return Err(SpawnError::NotFound(program));
        }
        let cstr = |s: &str| CString::new(s).map_err(|_| SpawnError::Nul);
        let candidates = if program.contains('/') {
            vec![cstr(&program)?]
        } else {
            let path = env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(DEFAULT_PATH);
            path.split(':')
                .map(|dir| if dir.is_empty() { "." } else { dir })
                .map(|dir| cstr(&format!("{}/{program}", dir.trim_end_matches('/'))))
                .collect::<Result<_, _>>()?
        };
        Ok(Command {
            candidates,
            argv: args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
            envp: env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?,
            cwd: match cwd {
                "" | "/" => None,
                dir => Some(cstr(dir)?),
            },
            creds,
            program,
        })
    }
}

/// Reusable spawning state: the child's stack is allocated (and faulted in) once.
pub struct Spawner {
    stack: Vec<u8>,
}

impl Default for Spawner {
    fn default() -> Self {
        Spawner {
            stack: vec![0; CHILD_STACK],
        }
    }
}

/// What the child reads (pointers into the parent's memory) and where it reports failure.
#[repr(C)]
struct ChildArgs {
    candidates: *const *const libc::c_char,
    n_candidates: usize,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: ChildFds,
    set_creds: bool,
    uid: u32,
    gid: u32,
    groups: *const libc::gid_t,
    n_groups: usize,
    /// Written by the child on failure: (step, errno).
    failed_step: i32,
    failed_errno: i32,
}

impl Spawner {
    /// Starts `cmd` with `fds` as its stdio, in a new session. Returns once the child has
    /// exec'd; if it failed, its exit status (127) is collected from `reaper` before returning.
    pub fn spawn(
        &mut self,
        cmd: &Command,
        fds: ChildFds,
        reaper: &Reaper,
    ) -> Result<Pid, SpawnError> {
        let candidates: Vec<*const libc::c_char> =
            cmd.candidates.iter().map(|c| c.as_ptr()).collect();
        let argv = null_terminated(&cmd.argv);
        let envp = null_terminated(&cmd.envp);
        let groups: Vec<libc::gid_t> = cmd
            .creds
            .as_ref()
            .map(|c| c.groups.clone())
            .unwrap_or_default();
        let mut args = ChildArgs {
            candidates: candidates.as_ptr(),
            n_candidates: candidates.len(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: cmd.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds,
            set_creds: cmd.creds.is_some(),
            uid: cmd.creds.as_ref().map_or(0, |c| c.uid),
            gid: cmd.creds.as_ref().map_or(0, |c| c.gid),
            groups: groups.as_ptr(),
            n_groups: groups.len(),
            failed_step: 0,
            failed_errno: 0,
        };
        // The stack grows down from the (16-byte aligned) top.
        let top = (self.stack.as_mut_ptr() as usize + self.stack.len()) & !15;
        // SAFETY: `child` only reads `args` and the arrays it points to, all alive until clone
        // returns; CLONE_VFORK suspends this thread until the child has exec'd or exited, so
        // nothing here runs concurrently with it, and its stack is ours and unused otherwise.
        let pid = unsafe {
            libc::clone(
                child,
                top as *mut c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut args).cast::<c_void>(),
            )
        };
        if pid < 0 {
            return Err(SpawnError::Clone(Errno::last()));
        }
        // The child wrote these (if at all) before the vfork released us.
        // SAFETY: plain reads of our own stack variable; volatile because the compiler cannot
        // see the child's writes.
        let (step, errno) = unsafe {
            (
                std::ptr::read_volatile(&args.failed_step),
                std::ptr::read_volatile(&args.failed_errno),
            )
        };
        if step == 0 {
            return Ok(Pid::from_raw(pid));
        }
        // The child has exited (that released the vfork); nobody else will claim it.
        reaper.wait(Pid::from_raw(pid));
        let errno = Errno::from_raw(errno);
        Err(match step_from(step) {
            Step::Exec if errno == Errno::ENOENT && !cmd.program.contains('/') => {
                SpawnError::NotFound(cmd.program.clone())
            }
            Step::Exec => SpawnError::Exec {
                program: cmd.program.clone(),
                errno,
            },
            Step::Chdir => SpawnError::Chdir {
                cwd: cmd
                    .cwd
                    .as_ref()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                errno,
            },
            step => SpawnError::Setup { step, errno },
        })
    }
}

fn step_from(v: i32) -> Step {
    match v {
        1 => Step::Setsid,
        2 => Step::Ctty,
        3 => Step::Dup,
        4 => Step::Setgroups,
        5 => Step::Setgid,
        6 => Step::Setuid,
        7 => Step::Chdir,
        _ => Step::Exec,
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A raw syscall; `Err(errno)` on failure. Only the errno of this task is touched.
///
/// # Safety
/// The arguments must be valid for syscall `nr`.
unsafe fn sys(nr: c_long, a: usize, b: usize, c: usize, d: usize) -> Result<c_long, i32> {
    // SAFETY: forwarded to the caller.
    let ret = unsafe { libc::syscall(nr, a, b, c, d) };
    if ret < 0 {
        // SAFETY: errno location of this task (shared TLS with the suspended parent thread,
        // which does not read it).
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(ret)
    }
}

/// Body of the vfork child. Never returns.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed; it stays valid while the parent is
    // suspended by CLONE_VFORK.
    let a = unsafe { &mut *arg.cast::<ChildArgs>() };
    // SAFETY: every call below is a raw syscall with arguments prepared by the parent; on
    // failure the child records the step and exits without touching anything else.
    unsafe {
        let fail = |a: &mut ChildArgs, step: Step, errno: i32| -> ! {
            std::ptr::write_volatile(&mut a.failed_errno, errno);
            std::ptr::write_volatile(&mut a.failed_step, step as i32);
            libc::syscall(libc::SYS_exit, 127);
            #[allow(clippy::empty_loop)]
            loop {}
        };
        if let Err(e) = sys(libc::SYS_setsid, 0, 0, 0, 0) {
            fail(a, Step::Setsid, e);
        }
        let fds = a.fds;
        if fds.terminal {
            if let Err(e) = sys(
                libc::SYS_ioctl,
                fds.stdin as usize,
                libc::TIOCSCTTY as usize,
                0,
                0,
            ) {
                fail(a, Step::Ctty, e);
            }
        }
        for (src, dst) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            if src != dst {
                if let Err(e) = sys(libc::SYS_dup2, src as usize, dst as usize, 0, 0) {
                    fail(a, Step::Dup, e);
                }
            }
        }
        if a.set_creds {
            if let Err(e) = sys(libc::SYS_setgroups, a.n_groups, a.groups as usize, 0, 0) {
                fail(a, Step::Setgroups, e);
            }
            let gid = a.gid as usize;
            if let Err(e) = sys(libc::SYS_setresgid, gid, gid, gid, 0) {
                fail(a, Step::Setgid, e);
            }
            let uid = a.uid as usize;
            if let Err(e) = sys(libc::SYS_setresuid, uid, uid, uid, 0) {
                fail(a, Step::Setuid, e);
            }
        }
        if !a.cwd.is_null() {
            if let Err(e) = sys(libc::SYS_chdir, a.cwd as usize, 0, 0, 0) {
                fail(a, Step::Chdir, e);
            }
        }
        // The agent blocks SIGCHLD and SIGPIPE (see reaper::block_sigchld_and_sigpipe); the
        // program must start with an empty mask.
        let empty: u64 = 0;
        let _ = sys(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as usize,
            (&raw const empty) as usize,
            0,
            8,
        );
        // Like execvp: skip candidates that do not exist, remember EACCES, stop at other errors.
        let mut errno = libc::ENOENT;
        let mut saw_eacces = false;
        for i in 0..a.n_candidates {
            let path = *a.candidates.add(i);
            match sys(
                libc::SYS_execve,
                path as usize,
                a.argv as usize,
                a.envp as usize,
                0,
            ) {
                Ok(_) => {}
                Err(e @ (libc::ENOENT | libc::ENOTDIR)) => errno = e,
                Err(libc::EACCES) => saw_eacces = true,
                Err(e) => {
                    errno = e;
                    break;
                }
            }
        }
        if saw_eacces && errno == libc::ENOENT {
            errno = libc::EACCES;
        }
        fail(a, Step::Exec, errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::{tests::shared, ExitStatus};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn run(args: &[&str], env: &[&str], cwd: &str) -> (Result<Pid, SpawnError>, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        let cmd = match Command::new(&args, &env, cwd, None) {
            Ok(c) => c,
            Err(e) => return (Err(e), String::new()),
        };
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fds = ChildFds {
            stdin: devnull.as_raw_fd(),
            stdout: w.as_raw_fd(),
            stderr: w.as_raw_fd(),
            terminal: false,
        };
        let result = Spawner::default().spawn(&cmd, fds, &shared());
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        (result, out)
    }

    #[test]
    fn runs_with_path_search_env_and_cwd() {
        let (pid, out) = run(
            &["sh", "-c", "echo $FOO; pwd; exit 5"],
            &["FOO=bar", "PATH=/nonexistent:/bin:/usr/bin"],
            "/tmp",
        );
        let pid = pid.unwrap();
        assert_eq!(out, "bar\n/tmp\n");
        assert_eq!(shared().wait(pid), ExitStatus::Exited(5));
    }

    #[test]
    fn signal_mask_is_reset() {
        // SIGPIPE's disposition comes from the agent's main (see reaper.rs); the test harness
        // ignores it, so only the mask is checked here.
        let (pid, out) = run(
            &["/bin/sh", "-c", "grep -E '^SigBlk' /proc/self/status"],
            &[],
            "",
        );
        shared().wait(pid.unwrap());
        let mask = out.split_whitespace().nth(1).unwrap();
        assert_eq!(u64::from_str_radix(mask, 16).unwrap(), 0, "{out}");
    }

    #[test]
    fn failures_name_the_step_like_runc() {
        let (r, _) = run(&["no-such-program-x"], &[], "");
        assert_eq!(
            r.unwrap_err().to_string(),
            "exec: \"no-such-program-x\": executable file not found in $PATH"
        );
        let (r, _) = run(&["/no/such"], &[], "");
        assert_eq!(
            r.unwrap_err().to_string(),
            "exec: \"/no/such\": no such file or directory"
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "data").unwrap();
        let plain = plain.to_str().unwrap();
        let (r, _) = run(&[plain], &[], "");
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("exec: {plain:?}: permission denied")
        );
        let (r, _) = run(&["sh"], &[], "/no/dir");
        assert_eq!(
            r.unwrap_err().to_string(),
            "chdir to cwd (\"/no/dir\") set in config.json failed: no such file or directory"
        );
        assert!(matches!(
            Command::new(&["a\0b".into()], &[], "", None),
            Err(SpawnError::Nul)
        ));
        assert!(matches!(
            Command::new(&[], &[], "", None),
            Err(SpawnError::NotFound(_))
        ));
    }
}

//! `bulkhead exec`: run a process in a running container. The process's stdio fds go to the
//! monitor over the control socket; this process (or, with --detach, the exec proxy it forks,
//! whose pid goes to --pid-file) stays until the exec'd process exits and exits with its status,
//! forwarding the signals it receives.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, Process, User};

use super::{io, usage, Ctx, Result};
use crate::cli::ExecArgs;
use crate::console::RawTerminal;
use crate::control::{Client, ExecControl, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &ExecArgs) -> Result<i32> {
    let st = ctx.check(&args.id, Status::can_exec)?;
    let process = process(&st.bundle, args)?;
    let tty = process.terminal().unwrap_or(false);
    let dir = ctx.store.dir(&args.id)?;
    let stdio = ExecStdio::prepare(tty, args)?;
    let request = Request::Exec {
        process: Box::new(process),
        tty,
        stdin: stdio.has_stdin,
    };
    // Blocked before any thread or fork, so none is lost and one thread takes them.
    let signals = crate::process::block_forwarded();
    if !args.detach {
        let _raw = stdio.own_terminal.then(RawTerminal::stdin).flatten();
        let mut client = Client::connect(&dir)?;
        client.call_with_fds(&request, &stdio.raw_fds())?;
        // Our own terminal's size is read from our stdin, which stays open.
        let sizes = stdio.own_terminal.then_some(0);
        drop(stdio);
        return Ok(wait_forwarding(client, signals, sizes));
    }
    let (pid, ready) = crate::process::fork_with_ready(move |ready| {
        let client = match Client::connect(&dir)
            .and_then(|mut c| c.call_with_fds(&request, &stdio.raw_fds()).map(|_| c))
        {
            Ok(c) => c,
            Err(e) => {
                ready.report(Some(bulkhead_protocol::error_chain(&e)));
                return 1;
            }
        };
        client.set_read_timeout(None);
        // With a console socket the proxy keeps the pty's slave as its controlling terminal,
        // so the engine's resizes of the master reach it as SIGWINCH.
        let sizes = stdio
            .console
            .inspect(crate::console::take_as_controlling_terminal);
        drop(stdio.fds);
        ready.report(None);
        crate::process::null_stdio();
        wait_forwarding(client, signals, sizes.as_ref().map(AsRawFd::as_raw_fd))
    })?;
    crate::process::wait_ready(ready)?;
    if let Some(p) = &args.pid_file {
        crate::process::write_pid_file(p, pid.as_raw())?;
    }
    Ok(0)
}

/// Forwards our signals to the exec'd process — and, on SIGWINCH, the new size of the terminal
/// `sizes` — until its exit status arrives.
fn wait_forwarding(client: Client, signals: nix::sys::signal::SigSet, sizes: Option<RawFd>) -> i32 {
    if let Ok(stream) = client.try_clone_stream() {
        std::thread::spawn(move || {
            while let Some(signal) = crate::process::next_signal(&signals) {
                let msg = if signal == libc::SIGWINCH {
                    match sizes.and_then(crate::console::get_winsize) {
                        Some((rows, cols)) => ExecControl::Resize { rows, cols },
                        None => continue,
                    }
                } else {
                    ExecControl::Signal { signal }
                };
                if crate::control::write_json(&stream, &msg).is_err() {
                    break;
                }
            }
        });
    }
    let mut client = client;
    // No exit event means the monitor went away (the container stopped, its VM is gone) and
    // the exec'd process died with it: report it as killed.
    client
        .read_exec_event()
        .map(|e| e.exit_status)
        .unwrap_or(crate::signal::killed_status(libc::SIGKILL))
}

/// The exec'd process's stdio as fds to send.
struct ExecStdio {
    fds: Vec<OwnedFd>,
    has_stdin: bool,
    own_terminal: bool,
    /// The pty slave when the master went to `--console-socket`.
    console: Option<OwnedFd>,
}

impl ExecStdio {
    fn prepare(tty: bool, args: &ExecArgs) -> Result<ExecStdio> {
        if tty {
            if let Some(sock) = &args.console_socket {
                let pty = crate::console::open_pty()?;
                crate::console::make_raw(&pty.slave).map_err(|e| io("pty raw mode")(e.into()))?;
                crate::console::send_to_socket(sock, &pty.name, &pty.master)?;
                let keep = pty.slave.try_clone().map_err(io("dup pty"))?;
                return Ok(ExecStdio {
                    fds: vec![own_description(pty.slave, libc::O_RDWR)],
                    has_stdin: false,
                    own_terminal: false,
                    console: Some(keep),
                });
            }
            if args.detach {
                return Err(usage(
                    "cannot allocate tty if runc will detach without setting console socket",
                ));
            }
            let t = dup(0).ok_or_else(|| usage("exec --tty needs a terminal on stdin"))?;
            return Ok(ExecStdio {
                fds: vec![own_description(t, libc::O_RDWR)],
                has_stdin: false,
                own_terminal: true,
                console: None,
            });
        }
        let mut fds = Vec::new();
        let stdin = dup(0).map(|fd| own_description(fd, libc::O_RDONLY));
        let has_stdin = stdin.is_some();
        fds.extend(stdin);
        fds.extend(dup(1).map(|fd| own_description(fd, libc::O_WRONLY)));
        fds.extend(dup(2).map(|fd| own_description(fd, libc::O_WRONLY)));
        Ok(ExecStdio {
            fds,
            has_stdin,
            own_terminal: false,
            console: None,
        })
    }

    fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// The monitor's own description of `fd`, opened here (`access`: `O_RDONLY`, `O_WRONLY` or
/// `O_RDWR`), non-blocking, when it is a pipe, FIFO or terminal; anything else, or what cannot
/// be reopened (a pipe without a reader), as it is.
///
/// The monitor polls what it relays, and setting `O_NONBLOCK` on the caller's description
/// would change it for the caller too (a shell whose terminal turned non-blocking breaks after
/// the exec): it needs a description of its own. It used to reopen the fds itself, through its
/// `/proc/self/fd`; reopened here, as the caller's user, a locked-down monitor needs no
/// permission on other users' terminals and pipes (it has none: see `monitor::jail`).
fn own_description(fd: OwnedFd, access: libc::c_int) -> OwnedFd {
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::from(fd);
    let reopenable = file.metadata().is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_char_device()
    });
    if !reopenable {
        return file.into();
    }
    let (read, write) = (access != libc::O_WRONLY, access != libc::O_RDONLY);
    match crate::vm::hostio::reopen_non_blocking(&file, read, write) {
        Ok(own) => own.into(),
        Err(_) => file.into(),
    }
}

fn dup(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC on a standard descriptor; returns a new fd or -1.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: a fresh descriptor that nobody else owns.
    (n >= 0).then(|| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// The OCI process to run: `--process FILE`, or the container's own process with runc's
/// command-line overrides.
pub fn process(bundle: &std::path::Path, args: &ExecArgs) -> Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
        let invalid =
            |e: serde_json::Error| usage(format!("{}: invalid process: {e}", path.display()));
        let mut raw: serde_json::Value = serde_json::from_slice(&text).map_err(invalid)?;
        // runc reads the file into a zero-valued process: no `user` means root.
        if let Some(obj) = raw.as_object_mut() {
            obj.entry("user")
                .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
        }
        let p: Process = serde_json::from_value(raw).map_err(invalid)?;
        if p.args().as_ref().is_none_or(Vec::is_empty) {
            return Err(usage("process args must not be empty"));
        }
        return Ok(p);
    }
    if args.command.is_empty() {
        return Err(usage("exec: no command given"));
    }
    let mut p = crate::spec::Bundle::load(bundle)
        .ok()
        .and_then(|b| b.spec.process().clone())
        .unwrap_or_else(base_process);
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.into());
    }
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        let mut u = User::default();
        u.set_uid(uid);
        u.set_gid(gid);
        p.set_user(u);
    }
    if !args.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(args.additional_gids.clone()));
    }
    if !args.cap.is_empty() {
        let added = args
            .cap
            .iter()
            .map(|c| {
                // As the spec spells them (CAP_NET_ADMIN), which is how runc takes them too.
                serde_json::from_value::<Capability>(serde_json::Value::String(c.clone()))
                    .map_err(|_| usage(format!("unknown capability {c:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut caps = p.capabilities().clone().unwrap_or_else(no_capabilities);
        let with = |set: &Option<Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.extend(added.iter().copied());
            Some(set)
        };
        caps.set_bounding(with(caps.bounding()));
        caps.set_effective(with(caps.effective()));
        caps.set_permitted(with(caps.permitted()));
        p.set_capabilities(Some(caps));
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Empty capability sets (oci-spec's default holds Docker's defaults).
fn no_capabilities() -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(None);
    c.set_effective(None);
    c.set_inheritable(None);
    c.set_permitted(None);
    c.set_ambient(None);
    c
}

/// runc's process when the bundle has none: root in `/`, no environment.
fn base_process() -> Process {
    let mut p = Process::default();
    p.set_env(None);
    p.set_capabilities(None);
    p.set_rlimits(None);
    p.set_no_new_privileges(None);
    p
}

/// `uid[:gid]`, numeric (names would need the container's /etc/passwd, which is in the guest).
fn parse_user(s: &str) -> Result<(u32, u32)> {
    let bad = || usage(format!("invalid user {s:?} (want uid[:gid])"));
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    fn exec_args(argv: &[&str]) -> ExecArgs {
        let mut v = vec!["bulkhead", "exec"];
        v.extend_from_slice(argv);
        match crate::cli::Cli::try_parse_from(v).unwrap().command {
            Some(crate::cli::Command::Exec(e)) => e,
            _ => panic!(),
        }
    }

    #[test]
    fn overrides_apply_to_the_container_process() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = crate::spec::tests::minimal();
        spec["process"]["env"] = json!(["PATH=/bin", "A=old"]);
        spec["process"]["capabilities"] =
            json!({"bounding": ["CAP_KILL"], "effective": [], "permitted": []});
        crate::spec::tests::write_bundle(d.path(), &spec);
        let a = exec_args(&[
            "-e",
            "A=new",
            "-u",
            "1000:1000",
            "--cwd",
            "/tmp",
            "--cap",
            "CAP_NET_ADMIN",
            "-g",
            "5",
            "--no-new-privs",
            "c1",
            "id",
            "-u",
        ]);
        let p = serde_json::to_value(process(d.path(), &a).unwrap()).unwrap();
        assert_eq!(p["args"], json!(["id", "-u"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=new"]));
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [5]})
        );
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], false);
        let mut bounding: Vec<String> =
            serde_json::from_value(p["capabilities"]["bounding"].clone()).unwrap();
        bounding.sort();
        assert_eq!(bounding, ["CAP_KILL", "CAP_NET_ADMIN"]);
        assert_eq!(p["capabilities"]["effective"], json!(["CAP_NET_ADMIN"]));
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[test]
    fn process_file_wins_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.json");
        let p = r#"{"args":["sh"],"terminal":true,"cwd":"/","user":{"uid":0,"gid":0}}"#;
        std::fs::write(&f, p).unwrap();
        let a = exec_args(&["--process", f.to_str().unwrap(), "c1"]);
        assert_eq!(process(d.path(), &a).unwrap().terminal(), Some(true));
        std::fs::write(&f, r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        assert!(process(d.path(), &a).is_err());
        // Not an OCI process: refused here, not in the guest.
        std::fs::write(&f, r#"{"args":"sh"}"#).unwrap();
        assert!(process(d.path(), &a).is_err());
        let a = exec_args(&["c1"]);
        assert!(process(d.path(), &a).is_err());
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("bob").is_err());
    }
}

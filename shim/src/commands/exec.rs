//! `bulkhead exec`: run a process in a running container. The process's stdio fds go to the
//! monitor over the control socket; this process (or, with --detach, the exec proxy it forks,
//! whose pid goes to --pid-file) stays until the exec'd process exits and exits with its status,
//! forwarding the signals it receives.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde_json::{json, Value};

use super::{io, usage, Ctx, Result};
use crate::cli::ExecArgs;
use crate::control::{Client, ExecControl, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &ExecArgs) -> Result<i32> {
    let (st, status) = ctx.load(&args.id)?;
    match status {
        Status::Stopped => return Err(usage("cannot exec in a stopped container")),
        Status::Paused => return Err(usage("cannot exec in a paused container")),
        _ => {}
    }
    let process = process_json(&st.bundle, args)?;
    let tty = process
        .get("terminal")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let dir = ctx.store.dir(&args.id)?;
    let stdio = ExecStdio::prepare(tty, args)?;
    let request = Request::Exec {
        process,
        tty,
        stdin: stdio.has_stdin,
    };
    if !args.detach {
        let signals = crate::process::block_forwarded();
        let raw = stdio.raw_guard();
        let mut client = Client::connect(&dir)?;
        client.call_with_fds(&request, &stdio.raw_fds())?;
        drop(stdio);
        let code = wait_forwarding(client, signals);
        drop(raw);
        return Ok(code);
    }
    let signals = crate::process::block_forwarded();
    let (pid, ready) = crate::process::fork_with_ready(move |ready| {
        let client = match Client::connect(&dir)
            .and_then(|mut c| c.call_with_fds(&request, &stdio.raw_fds()).map(|_| c))
        {
            Ok(c) => c,
            Err(e) => {
                ready.report(Some(e.to_string()));
                return 1;
            }
        };
        client.set_read_timeout(None);
        drop(stdio);
        ready.report(None);
        crate::process::null_stdio();
        wait_forwarding(client, signals)
    })?;
    crate::process::wait_ready(ready)?;
    if let Some(p) = &args.pid_file {
        crate::process::write_pid_file(p, pid.as_raw())?;
    }
    Ok(0)
}

/// Forwards our signals to the exec'd process until its exit status arrives.
fn wait_forwarding(client: Client, signals: nix::sys::signal::SigSet) -> i32 {
    if let Ok(stream) = client.try_clone_stream() {
        std::thread::spawn(move || {
            while let Some(signal) = crate::process::next_signal(&signals) {
                if crate::control::write_json(&stream, &ExecControl::Signal { signal }).is_err() {
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
}

impl ExecStdio {
    fn prepare(tty: bool, args: &ExecArgs) -> Result<ExecStdio> {
        if tty {
            if let Some(sock) = &args.console_socket {
                let pty = crate::console::open_pty()?;
                crate::console::make_raw(&pty.slave).map_err(|e| io("pty raw mode")(e.into()))?;
                crate::console::send_to_socket(sock, &pty.name, &pty.master)?;
                return Ok(ExecStdio {
                    fds: vec![pty.slave],
                    has_stdin: false,
                    own_terminal: false,
                });
            }
            if args.detach {
                return Err(usage(
                    "cannot allocate tty if runc will detach without setting console socket",
                ));
            }
            let t = dup(0).ok_or_else(|| usage("exec --tty needs a terminal on stdin"))?;
            return Ok(ExecStdio {
                fds: vec![t],
                has_stdin: false,
                own_terminal: true,
            });
        }
        let mut fds = Vec::new();
        let stdin = dup(0);
        let has_stdin = stdin.is_some();
        fds.extend(stdin);
        fds.extend(dup(1));
        fds.extend(dup(2));
        Ok(ExecStdio {
            fds,
            has_stdin,
            own_terminal: false,
        })
    }

    fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }

    fn raw_guard(&self) -> Option<RawGuard> {
        if !self.own_terminal {
            return None;
        }
        let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok()?;
        crate::console::make_raw(std::io::stdin()).ok()?;
        Some(RawGuard(saved))
    }
}

struct RawGuard(nix::sys::termios::Termios);

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
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
pub fn process_json(bundle: &std::path::Path, args: &ExecArgs) -> Result<Value> {
    if let Some(path) = &args.process {
        let text = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| usage(format!("{}: invalid JSON: {e}", path.display())))?;
        match v.get("args").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => return Ok(v),
            _ => return Err(usage("process args must not be empty")),
        }
    }
    if args.command.is_empty() {
        return Err(usage("exec: no command given"));
    }
    let base = std::fs::read(bundle.join(crate::spec::CONFIG_FILE))
        .ok()
        .and_then(|t| serde_json::from_slice::<Value>(&t).ok())
        .and_then(|s| s.get("process").cloned())
        .unwrap_or_else(|| json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": []}));
    let mut p = base;
    p["args"] = json!(args.command);
    p["terminal"] = json!(args.tty);
    let mut env: Vec<String> = p
        .get("env")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    for kv in &args.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p["env"] = json!(env);
    if let Some(cwd) = &args.cwd {
        p["cwd"] = json!(cwd);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = parse_user(user)?;
        p["user"] = json!({"uid": uid, "gid": gid});
    }
    if !args.additional_gids.is_empty() {
        p["user"]["additionalGids"] = json!(args.additional_gids);
    }
    if !args.cap.is_empty() {
        for set in ["bounding", "effective", "permitted"] {
            let mut caps: Vec<String> = p
                .pointer(&format!("/capabilities/{set}"))
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            for c in &args.cap {
                if !caps.contains(c) {
                    caps.push(c.clone());
                }
            }
            p["capabilities"][set] = json!(caps);
        }
    }
    if args.no_new_privs {
        p["noNewPrivileges"] = json!(true);
    }
    Ok(p)
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
        let p = process_json(d.path(), &a).unwrap();
        assert_eq!(p["args"], json!(["id", "-u"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "A=new"]));
        assert_eq!(
            p["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [5]})
        );
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["terminal"], false);
        assert_eq!(
            p["capabilities"]["bounding"],
            json!(["CAP_KILL", "CAP_NET_ADMIN"])
        );
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[test]
    fn process_file_wins_and_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.json");
        std::fs::write(&f, r#"{"args":["sh"],"terminal":true,"cwd":"/"}"#).unwrap();
        let a = exec_args(&["--process", f.to_str().unwrap(), "c1"]);
        assert_eq!(process_json(d.path(), &a).unwrap()["terminal"], true);
        std::fs::write(&f, r#"{"args":[]}"#).unwrap();
        assert!(process_json(d.path(), &a).is_err());
        let a = exec_args(&["c1"]);
        assert!(process_json(d.path(), &a).is_err());
    }

    #[test]
    fn users() {
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("bob").is_err());
    }
}

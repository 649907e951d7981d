//! The `bulkhead` runtime CLI, as this shim calls it: the same commands, in the same order and
//! with the same flags, that containerd's runc shim gives runc. Every container's lifecycle
//! (VM, monitor, agent, jail) stays in that one binary; the shim only translates containerd's
//! task API into these calls and keeps the process table.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use containerd_shim::api::Options;

use crate::exits::Exits;

/// Where containerd's runc shim keeps runc's state, with our name: one directory per namespace.
const DEFAULT_ROOT: &str = "/run/containerd/bulkhead";
/// The runtime's log in the bundle (JSON lines; its last error line says why a call failed).
const LOG_FILE: &str = "bulkhead-log.json";
/// A runtime call's output is read up to this much (state, ps and stats are a few KiB).
const OUTPUT_CAP: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("bulkhead {command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("reading the output of bulkhead {command}: {source}")]
    Output {
        command: String,
        source: std::io::Error,
    },
}

/// The container's own stdio for `create` and `exec`: what the runtime's process (and so the
/// container's process) gets as fds 0, 1 and 2. `None` is /dev/null.
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

impl Runtime {
    /// The runtime for a bundle: the runc options' binary and root when containerd gave them
    /// (`ctr run --runc-binary`, a CRI runtime's `options`), else the `bulkhead` next to this
    /// shim (how it is installed), else `bulkhead` on PATH.
    pub fn new(options: &Options, bundle: &Path, namespace: &str) -> Runtime {
        let binary = if options.binary_name.is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("bulkhead")))
                .filter(|path| path.is_file())
                .or_else(|| on_path("bulkhead"))
                .unwrap_or_else(|| PathBuf::from("bulkhead"))
        } else {
            PathBuf::from(&options.binary_name)
        };
        let root = if options.root.is_empty() {
            Path::new(DEFAULT_ROOT).join(namespace)
        } else {
            PathBuf::from(&options.root)
        };
        Runtime {
            binary,
            root,
            log: bundle.join(LOG_FILE),
        }
    }

    /// The command line for `args`. A binary that is not there is refused before any fork:
    /// a child whose exec fails is reaped by std's `spawn` itself, which races with the
    /// crate's reaper (and std panics when it loses).
    fn command(&self, args: &[OsString]) -> Result<Command, Error> {
        if !self.binary.is_file() {
            return Err(self.spawn_error(std::io::ErrorKind::NotFound.into()));
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"])
            .args(args);
        Ok(cmd)
    }

    /// Runs one command that the container's processes do not outlive (start, kill, delete,
    /// state…): its stdout, or its error line.
    pub async fn call(
        &self,
        exits: &Exits,
        args: &[OsString],
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, Error> {
        let name = command_name(args);
        let mark = self.log_len();
        let mut cmd = self.command(args)?;
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let read = tokio::task::spawn_blocking(move || {
            if let (Some(mut w), Some(data)) = (stdin, input) {
                use std::io::Write;
                // A runtime that exits without reading its input fails on its own.
                let _ = w.write_all(&data);
            }
            let out = read_capped(stdout);
            let err = read_capped(stderr);
            (out, err)
        });
        let status = exits.wait(pid).await;
        let (out, err) = read
            .await
            .unwrap_or_else(|_| (Ok(Vec::new()), Ok(Vec::new())));
        let out = out.map_err(|source| Error::Output {
            command: name.clone(),
            source,
        })?;
        if status != 0 {
            let err = err.unwrap_or_default();
            return Err(Error::Failed {
                message: self.failure(mark, &err, status),
                command: name,
            });
        }
        Ok(out)
    }

    /// Runs `create` or `exec --detach`, whose daemon keeps `io` as the container process's
    /// stdio; its errors are read from the runtime's log (its stderr is the container's).
    pub async fn launch(
        &self,
        exits: &Exits,
        args: &[OsString],
        io: ProcessIo,
    ) -> Result<(), Error> {
        let name = command_name(args);
        let mark = self.log_len();
        let mut cmd = self.command(args)?;
        cmd.stdin(io.stdin.map(Stdio::from).unwrap_or_else(Stdio::null))
            .stdout(io.stdout.map(Stdio::from).unwrap_or_else(Stdio::null))
            .stderr(io.stderr.map(Stdio::from).unwrap_or_else(Stdio::null));
        let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        // The fds now belong to the runtime's process (and its daemon): ours close with `cmd`.
        drop(cmd);
        let status = exits.wait(child.id()).await;
        if status != 0 {
            return Err(Error::Failed {
                message: self.failure(mark, &[], status),
                command: name,
            });
        }
        Ok(())
    }

    /// What the log holds past `mark`, up to [`OUTPUT_CAP`]: a monitor logs to the same file.
    fn log_since(&self, mark: u64) -> Option<Vec<u8>> {
        let mut f = fs::File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(mark)).ok()?;
        read_capped(Some(f)).ok()
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The last error line the call added to the runtime's log (from `mark`, its length
    /// before), else its stderr's last line, else the status.
    fn failure(&self, mark: u64, stderr: &[u8], status: i32) -> String {
        let logged = self.log_since(mark).and_then(|added| {
            String::from_utf8_lossy(&added)
                .lines()
                .rev()
                .find_map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).ok()?;
                    (v.get("level")?.as_str()? == "error")
                        .then(|| v.get("msg")?.as_str().map(str::to_string))?
                })
        });
        logged
            .or_else(|| {
                String::from_utf8_lossy(stderr)
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim_start_matches("bulkhead: ").to_string())
            })
            .unwrap_or_else(|| format!("exit status {status}"))
    }

    fn spawn_error(&self, source: std::io::Error) -> Error {
        Error::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }
}

/// `name` in a directory of PATH (a relative name would be searched for after the fork).
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn command_name(args: &[OsString]) -> String {
    args.first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_capped(from: Option<impl Read>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(r) = from {
        r.take(OUTPUT_CAP).read_to_end(&mut buf)?;
    }
    Ok(buf)
}

/// `args` as the OS strings a command takes.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_choose_the_binary_and_root() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            binary_name: "/opt/bh".into(),
            root: "/run/x".into(),
            ..Default::default()
        };
        let rt = Runtime::new(&opts, dir.path(), "ns");
        assert_eq!(rt.binary, Path::new("/opt/bh"));
        assert_eq!(rt.root, Path::new("/run/x"));
        let rt = Runtime::new(&Options::default(), dir.path(), "ns");
        assert_eq!(rt.root, Path::new("/run/containerd/bulkhead/ns"));
        assert_eq!(rt.log, dir.path().join(LOG_FILE));
    }

    #[tokio::test]
    async fn a_missing_binary_is_refused_without_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            binary_name: "/nonexistent/bulkhead".into(),
            ..Default::default()
        };
        let rt = Runtime::new(&opts, dir.path(), "ns");
        let e = rt
            .call(&Exits::default(), &args(["state", "c"]), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/bulkhead"), "{e}");
    }

    #[test]
    fn a_failure_is_the_last_logged_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(&Options::default(), dir.path(), "ns");
        assert_eq!(rt.failure(0, b"bulkhead: from stderr\n", 1), "from stderr");
        fs::write(
            dir.path().join(LOG_FILE),
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n\
             {\"level\":\"error\",\"msg\":\"kernel not found\"}\nnot json\n",
        )
        .unwrap();
        assert_eq!(rt.failure(0, b"other", 1), "kernel not found");
        // What an earlier call logged is not this call's failure.
        let mark = rt.log_len();
        assert_eq!(rt.failure(mark, b"", 3), "exit status 3");
    }
}

//! Error and debug output in the forms engines read.
//!
//! Every failing command prints one line `bulkhead: <msg>` on stderr and exits 1. With `--log F`
//! the same message is also appended to F: as logrus-style JSON (`{"level":…,"msg":…,"time":…}`)
//! with `--log-format json` — containerd reads the last error line of that file to report why a
//! runtime call failed — or as a logrus-style text line otherwise.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

/// Where log lines go; set once per process by [`init`].
#[derive(Debug, Clone)]
pub struct Logger {
    pub file: Option<PathBuf>,
    pub format: LogFormat,
    pub debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
/// The log file opened once for good (see [`hold_file`]).
static HELD: OnceLock<File> = OnceLock::new();

/// Sets the process-wide logger (later calls are ignored).
pub fn init(logger: Logger) {
    let _ = LOGGER.set(logger);
}

/// Opens the log file once and appends to that fd from now on, instead of opening the path
/// for every line: the monitor calls it first thing, before its VM's threads (whose seccomp
/// lists allow no `open` of an existing file) can log, and before its lock-down, after which
/// the file's path may be out of its sight (the engine picks it, anywhere on the host).
pub fn hold_file() -> std::io::Result<()> {
    if let Some(path) = logger().and_then(|l| l.file.as_ref()) {
        let _ = HELD.set(crate::private::append(path)?);
    }
    Ok(())
}

fn logger() -> Option<&'static Logger> {
    LOGGER.get()
}

/// Logs a debug line (only with `--debug`).
pub fn debug(msg: &str) {
    if let Some(l) = logger() {
        if l.debug {
            l.write(Level::Debug, msg);
        }
    }
}

/// Logs a warning to the log file (and stderr when there is no log file).
pub fn warn(msg: &str) {
    match logger() {
        Some(l) if l.file.is_some() => l.write(Level::Warn, msg),
        _ => eprintln!("bulkhead: warning: {msg}"),
    }
}

/// Reports a fatal error: one stderr line plus the log line.
pub fn error(msg: &str) {
    let msg = one_line(msg);
    if let Some(l) = logger() {
        l.write(Level::Error, &msg);
    }
    eprintln!("bulkhead: {msg}");
}

impl Logger {
    fn write(&self, level: Level, msg: &str) {
        let Some(path) = &self.file else {
            if level == Level::Debug {
                eprintln!("bulkhead: debug: {msg}");
            }
            return;
        };
        let line = format_line(self.format, level, msg, SystemTime::now());
        // Logging must never turn a result into a different failure: write errors are dropped.
        let _ = match HELD.get() {
            Some(mut file) => file.write_all(line.as_bytes()),
            None => append(path, &line),
        };
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    crate::private::append(path)?.write_all(line.as_bytes())
}

/// Sends the report of a forbidden syscall (see `bulkhead_vmm::seccomp::report`) to the held
/// log file ([`hold_file`]) as an error line in its format, or to stderr without one. Called
/// before a thread of this process installs a seccomp list.
pub fn report_forbidden_syscalls() {
    let fd: BorrowedFd<'static> = match HELD.get() {
        Some(f) => f.as_fd(),
        // SAFETY: fd 2 stays open for the life of the process (the monitor's stderr is the
        // engine's or /dev/null; nothing closes it).
        None => unsafe { BorrowedFd::borrow_raw(libc::STDERR_FILENO) },
    };
    bulkhead_vmm::seccomp::report::report_to(fd, Some(report_line));
}

/// The report line, formatted in the SIGSYS handler: no allocation, no lock (the message
/// holds only our own words, so it needs no quoting).
fn report_line(out: &mut dyn fmt::Write, thread: &str, nr: i64) -> fmt::Result {
    write_report(logger().map(|l| l.format), out, thread, nr)
}

fn write_report(
    format: Option<LogFormat>,
    out: &mut dyn fmt::Write,
    thread: &str,
    nr: i64,
) -> fmt::Result {
    let msg = bulkhead_vmm::seccomp::report::Message { thread, nr };
    let time = Rfc3339(SystemTime::now());
    match format {
        Some(LogFormat::Json) => {
            writeln!(
                out,
                "{{\"level\":\"error\",\"msg\":\"{msg}\",\"time\":\"{time}\"}}"
            )
        }
        Some(LogFormat::Text) => writeln!(out, "time=\"{time}\" level=error msg=\"{msg}\""),
        None => writeln!(out, "bulkhead: {msg}"),
    }
}

/// Collapses a multi-line message into one line (engines show only the first line).
pub fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Formats one log line, newline included.
pub fn format_line(format: LogFormat, level: Level, msg: &str, at: SystemTime) -> String {
    let time = rfc3339(at);
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({"level": level.as_str(), "msg": msg, "time": time});
            format!("{v}\n")
        }
        LogFormat::Text => {
            format!(
                "time=\"{time}\" level={} msg={}\n",
                level.as_str(),
                quote(msg)
            )
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// UTC RFC 3339 timestamp with nanoseconds, as logrus writes with `time.RFC3339Nano`.
pub fn rfc3339(at: SystemTime) -> String {
    Rfc3339(at).to_string()
}

/// [`rfc3339`] without allocating (the seccomp report formats it in a signal handler).
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60,
            d.subsec_nanos()
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_795_578_289, 5);
        assert_eq!(rfc3339(t), "2026-11-25T03:44:49.000000005Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn json_lines_are_logrus_like() {
        let line = format_line(
            LogFormat::Json,
            Level::Error,
            "container \"x\" does not exist",
            UNIX_EPOCH,
        );
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn text_lines_quote_the_message() {
        let line = format_line(LogFormat::Text, Level::Warn, "a \"b\"", UNIX_EPOCH);
        assert_eq!(
            line,
            "time=\"1970-01-01T00:00:00.000000000Z\" level=warning msg=\"a \\\"b\\\"\"\n"
        );
    }

    #[test]
    fn the_seccomp_report_is_a_log_line() {
        let line = |format| {
            let mut out = String::new();
            write_report(format, &mut out, "vcpu", 41).unwrap();
            assert!(out.ends_with('\n'), "{out}");
            out
        };
        let v: serde_json::Value =
            serde_json::from_str(line(Some(LogFormat::Json)).trim()).unwrap();
        assert_eq!(v["level"], "error");
        let msg = v["msg"].as_str().unwrap();
        assert!(
            msg.starts_with("seccomp: the vcpu thread made system call 41 ("),
            "{msg}"
        );
        assert!(line(Some(LogFormat::Text)).contains(" level=error msg=\"seccomp: the vcpu "));
        assert!(line(None).starts_with("bulkhead: seccomp: "));
    }

    #[test]
    fn messages_become_one_line() {
        assert_eq!(one_line("a\nb\r\n\nc "), "a: b: c");
    }

    #[test]
    fn appends_to_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let l = Logger {
            file: Some(path.clone()),
            format: LogFormat::Json,
            debug: true,
        };
        l.write(Level::Error, "one");
        l.write(Level::Debug, "two");
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().last().unwrap().contains("\"two\""));
    }
}

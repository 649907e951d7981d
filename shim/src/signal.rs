//! Signal names and numbers as `kill` accepts them (runc's rules).

use std::str::FromStr;

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct SignalError(pub String);

/// Parses `9`, `KILL`, `SIGKILL`, `sigterm`, `SIGRTMIN+3`; real-time numbers up to 64 are fine.
pub fn parse(raw: &str) -> Result<i32, SignalError> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(SignalError(raw.into()))
        };
    }
    let upper = raw.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(rt) = name.strip_prefix("SIGRTMIN") {
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| SignalError(raw.into()))?
        };
        let n = libc::SIGRTMIN() + off;
        return if off >= 0 && n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(SignalError(raw.into()))
        };
    }
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| SignalError(raw.into()))
}

/// Exit status of a process killed by `sig`, the shell convention engines expect.
pub fn killed_status(sig: i32) -> i32 {
    128 + sig
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("9").unwrap(), 9);
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("SIGKILL").unwrap(), 9);
        assert_eq!(parse("sigterm").unwrap(), 15);
        assert_eq!(parse("term").unwrap(), 15);
        assert_eq!(parse("SIGWINCH").unwrap(), libc::SIGWINCH);
        assert_eq!(parse("RTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse("40").unwrap(), 40);
        for bad in ["0", "65", "-1", "SIGBOGUS", "", "RTMIN+99"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(killed_status(9), 137);
    }
}

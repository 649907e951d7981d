//! `bulkhead events`: statistics events in runc's shape (`{"type":"stats","id":…,"data":…}`),
//! once with --stats, else every --interval until the container stops.

use std::time::Duration;

use serde_json::json;

use super::{usage, Ctx, Result};
use crate::cli::EventsArgs;
use crate::control::{ControlError, Done, Request};
use crate::state::Status;

pub fn run(ctx: &Ctx, args: &EventsArgs) -> Result<()> {
    let interval = parse_duration(&args.interval)?;
    loop {
        let (_, status) = ctx.load(&args.id)?;
        // A container that stopped ends the stream; a single --stats asks for a live one.
        if status == Status::Stopped && !args.stats {
            return Ok(());
        }
        if status != Status::Creating {
            status.can_inspect()?;
        }
        let stats = match ctx.call(&args.id, &Request::Stats) {
            Ok(Done::Stats { stats }) => stats,
            Ok(_) => return Err(ControlError::Unexpected("stats").into()),
            Err(super::Error::Control(ControlError::Unreachable)) if !args.stats => return Ok(()),
            Err(e) => return Err(e),
        };
        println!("{}", json!({"type": "stats", "id": args.id, "data": stats}));
        if args.stats {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Go-style durations: `5s`, `500ms`, `1m`, `2h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || usage(format!("invalid interval {s:?}"));
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}

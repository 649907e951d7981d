//! The VMM library reports through `tracing` (a guest that breaks the virtio rules, a device
//! that fails, a vCPU that ends oddly); the CLI has its own logrus-style log (`logging`). This
//! bridge sends the library's events into that log, so they land in the file containerd or
//! podman gave us with `--log` instead of being dropped.
//!
//! Without `--log` nothing is forwarded: the monitor's stderr is the container's stderr, and
//! VMM warnings must not appear in `docker logs`. Warnings and errors go to the log; info and
//! debug only with `--debug`.
//!
//! Most of these events are the guest's doing (a bad descriptor, a failed request), and a
//! hostile guest can cause them as fast as it likes: every line passes a [`Limiter`] (a burst
//! per call site, then a trickle, and a cap over all of them), and the next line a call site
//! may write again says how many were dropped, so the engine's log cannot be flooded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use tracing::callsite::Identifier;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::logging;

/// Installs the bridge as the process's global `tracing` subscriber (once; later calls and
/// processes that have no log file do nothing).
pub fn install(has_log_file: bool, debug: bool) {
    if !has_log_file {
        return;
    }
    let max = if debug { Level::DEBUG } else { Level::WARN };
    let subscriber = tracing_subscriber::registry().with(Bridge {
        max,
        limiter: Mutex::new(Limiter::default()),
    });
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Bridge {
    max: Level,
    limiter: Mutex<Limiter<Identifier>>,
}

impl<S: Subscriber> Layer<S> for Bridge {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let dropped = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            match limiter.admit(meta.callsite(), Instant::now()) {
                Some(dropped) => dropped,
                None => return,
            }
        };
        let mut text = Text::default();
        event.record(&mut text);
        let mut msg = format!("{}: {}", meta.target(), text.0);
        if dropped > 0 {
            let _ = write!(msg, " ({dropped} more like this were not logged)");
        }
        match *meta.level() {
            Level::ERROR | Level::WARN => logging::warn(&msg),
            _ => logging::debug(&msg),
        }
    }
}

/// A token bucket: `burst` lines at once, then one every `every` seconds.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    const fn full(burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64, every: f64) {
        if let Some(last) = self.last {
            let add = now.saturating_duration_since(last).as_secs_f64() / every;
            self.tokens = (self.tokens + add).min(burst);
        }
        self.last = Some(now);
    }
}

/// Lines per call site: a burst of this many, then one every [`SITE_EVERY`] seconds.
const SITE_BURST: f64 = 20.0;
const SITE_EVERY: f64 = 10.0;
/// Lines over all call sites: a burst of this many, then one every [`ALL_EVERY`] seconds.
const ALL_BURST: f64 = 100.0;
const ALL_EVERY: f64 = 1.0;
/// Call sites tracked (they are the VMM's and the shim's own, a few hundred at most).
const MAX_SITES: usize = 1024;

/// Decides which log lines are written, by call site `K`.
#[derive(Debug)]
struct Limiter<K> {
    sites: HashMap<K, (Bucket, u64)>,
    all: Bucket,
}

impl<K> Default for Limiter<K> {
    fn default() -> Limiter<K> {
        Limiter {
            sites: HashMap::new(),
            all: Bucket::full(ALL_BURST),
        }
    }
}

impl<K: std::hash::Hash + Eq> Limiter<K> {
    /// `Some(n)`: write the line, `n` lines of this call site were dropped since its last
    /// one; `None`: drop it.
    fn admit(&mut self, site: K, now: Instant) -> Option<u64> {
        if !self.sites.contains_key(&site) && self.sites.len() >= MAX_SITES {
            return None;
        }
        let (bucket, dropped) = self
            .sites
            .entry(site)
            .or_insert((Bucket::full(SITE_BURST), 0));
        bucket.refill(now, SITE_BURST, SITE_EVERY);
        self.all.refill(now, ALL_BURST, ALL_EVERY);
        if bucket.tokens < 1.0 || self.all.tokens < 1.0 {
            *dropped += 1;
            return None;
        }
        bucket.tokens -= 1.0;
        self.all.tokens -= 1.0;
        Some(std::mem::take(dropped))
    }
}

/// The event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_call_site_is_cut_to_a_trickle_and_says_what_it_dropped() {
        let (a, b) = (1, 2);
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        let written = (0..1000).filter(|_| limiter.admit(a, t0).is_some()).count();
        assert_eq!(written, SITE_BURST as usize);
        // Another call site is not silenced by the first.
        assert_eq!(limiter.admit(b, t0), Some(0));
        // After one refill period, one more line, counting what was dropped.
        let later = t0 + std::time::Duration::from_secs_f64(SITE_EVERY);
        assert_eq!(limiter.admit(a, later), Some(1000 - SITE_BURST as u64));
        assert_eq!(limiter.admit(a, later), None);
    }

    #[test]
    fn all_call_sites_together_are_capped_too() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        let mut written = 0;
        for site in 0..MAX_SITES + 10 {
            for _ in 0..5 {
                written += usize::from(limiter.admit(site, t0).is_some());
            }
        }
        assert_eq!(written, ALL_BURST as usize);
        assert!(limiter.sites.len() <= MAX_SITES);
    }

    #[test]
    fn fields_follow_the_message() {
        let log = tempfile::tempdir().unwrap();
        let file = log.path().join("log.json");
        logging::init(logging::Logger {
            file: Some(file.clone()),
            format: crate::cli::LogFormat::Json,
            debug: false,
        });
        install(true, false);
        tracing::warn!(queue = 2, "descriptor chain too long");
        tracing::info!("not forwarded without --debug");
        for _ in 0..100 {
            tracing::warn!("a guest's flood");
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.matches("a guest's flood").count(),
            SITE_BURST as usize,
            "{text}"
        );
        assert!(
            text.contains("descriptor chain too long queue=2") && text.contains("\"warning\""),
            "{text}"
        );
        assert!(!text.contains("not forwarded"), "{text}");
    }
}

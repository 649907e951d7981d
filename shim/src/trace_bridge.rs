//! The VMM library reports through `tracing` (a guest that breaks the virtio rules, a device
//! that fails, a vCPU that ends oddly); the CLI has its own logrus-style log (`logging`). This
//! bridge sends the library's events into that log, so they land in the file containerd or
//! podman gave us with `--log` instead of being dropped.
//!
//! Without `--log` nothing is forwarded: the monitor's stderr is the container's stderr, and
//! VMM warnings must not appear in `docker logs`. Warnings and errors go to the log; info and
//! debug only with `--debug`.

use std::fmt::Write as _;

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
    let subscriber = tracing_subscriber::registry().with(Bridge { max });
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Bridge {
    max: Level,
}

impl<S: Subscriber> Layer<S> for Bridge {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let msg = format!("{}: {}", meta.target(), text.0);
        match *meta.level() {
            Level::ERROR | Level::WARN => logging::warn(&msg),
            _ => logging::debug(&msg),
        }
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
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("descriptor chain too long queue=2") && text.contains("\"warning\""),
            "{text}"
        );
        assert!(!text.contains("not forwarded"), "{text}");
    }
}

//! The engine suites' main: named trials, run in order on one thread, sharing one engine.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Arguments, Trial};

use crate::Need;

/// One engine (dockerd, podman's roots, containerd), started by the first trial that needs
/// it and stopped when the suite ends. A start that failed fails every later trial at once
/// with the same reason, instead of starting the engine again.
pub struct Shared<E> {
    start: fn() -> E,
    engine: OnceLock<Result<E, String>>,
}

impl<E> Shared<E> {
    pub fn new(start: fn() -> E) -> Arc<Shared<E>> {
        Arc::new(Shared {
            start,
            engine: OnceLock::new(),
        })
    }

    /// The engine, started now if no trial has started it yet.
    pub fn get(&self) -> &E {
        let started = self.engine.get_or_init(|| {
            catch_unwind(AssertUnwindSafe(self.start)).map_err(|p| panic_text(p.as_ref()))
        });
        match started {
            Ok(e) => e,
            Err(why) => panic!("the engine did not start: {why}"),
        }
    }
}

/// The text of a panic payload.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// A named trial: `body` panics to fail, as a `#[test]` does. Its wall time goes to stderr
/// (`trial <name>: <s> s`): the suites' logs then show where a slow run spent its time.
pub fn trial(name: impl Into<String>, body: impl FnOnce() + Send + 'static) -> Trial {
    let name = name.into();
    let label = name.clone();
    Trial::test(name, move || {
        let started = std::time::Instant::now();
        let result = catch_unwind(AssertUnwindSafe(body));
        eprintln!("trial {label}: {:.1} s", started.elapsed().as_secs_f64());
        result.map_err(|p| panic_text(p.as_ref()).into())
    })
}

/// The trials of one half of a suite (one runtime), named `<prefix>::<case>`. Each case gets
/// the shared engine and the half's state, made by `half` when the first of them runs (it may
/// need the engine, e.g. for the path of the engine's private `bulkhead`).
pub fn half_trials<E, H, C>(
    prefix: &str,
    shared: &Arc<Shared<E>>,
    half: impl Fn(&E) -> H + Send + Sync + 'static,
    cases: impl IntoIterator<Item = (&'static str, C)>,
) -> Vec<Trial>
where
    E: Send + Sync + 'static,
    H: Send + Sync + 'static,
    C: FnOnce(&E, &H) + Send + 'static,
{
    let (make, state) = (Arc::new(half), Arc::new(OnceLock::new()));
    cases
        .into_iter()
        .map(|(name, case)| {
            let (shared, make, state) = (Arc::clone(shared), Arc::clone(&make), Arc::clone(&state));
            trial(format!("{prefix}::{name}"), move || {
                let engine = shared.get();
                case(engine, state.get_or_init(|| make(engine)))
            })
        })
        .collect()
}

/// Runs `trials` in order, one at a time (they share one engine and the machine's two cores
/// run one VM each: another suite runs beside this one), then drops `keep` (the shared engine,
/// which stops it) and exits with the result.
///
/// End-to-end tests not asked for (no `BULKHEAD_E2E=1`): one skip line, every trial shown as
/// ignored. Asked for and a prerequisite in `needs` missing: the suite fails naming it.
pub fn run<K>(suite: &str, needs: &[Need], trials: Vec<Trial>, keep: K) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let wanted = crate::require_for(suite, needs);
    let trials = trials
        .into_iter()
        .map(|t| if wanted { t } else { t.with_ignored_flag(true) })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    drop(keep);
    conclusion.exit()
}

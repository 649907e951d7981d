//! What every Bulkhead test that needs something of its machine calls first: [`require`].
//!
//! A test that cannot run here (not root, no `/dev/kvm`, no engine, or end-to-end tests simply
//! not asked for) used to return early and *pass*. Now it either skips out loud — only when the
//! run did not ask for everything to run — or fails, naming what is missing:
//!
//! - `BULKHEAD_E2E=1` (what `scripts/test.sh`, and so CI, sets for every test step): every
//!   prerequisite must hold; a missing one panics with its name. End-to-end tests run.
//! - otherwise (a developer's quick `cargo test`): the test prints one [`SKIP_MARKER`] line
//!   naming the missing prerequisite and returns without checking anything.
//!
//! The skip line goes straight to the process's stderr, past libtest's output capture, so it is
//! seen even for a passing test; `scripts/test.sh` fails a run whose output has one.

mod need;

use std::io::Write;

pub use need::{a_disk, cgroup_v2_controllers, Need};

/// The environment variable that asks for every test to run (and so for every prerequisite).
pub const REQUEST_VAR: &str = "BULKHEAD_E2E";

/// How a skip line starts: `bulkhead-test-skip: <test>: <what is missing>`. `scripts/test.sh`
/// looks for it in every test log.
pub const SKIP_MARKER: &str = "bulkhead-test-skip:";

/// Whether this run asks for every test to run: `BULKHEAD_E2E=1`.
pub fn requested() -> bool {
    std::env::var(REQUEST_VAR).is_ok_and(|v| v == "1")
}

/// Whether the calling test can go on: `true` when every need in `needs` holds.
///
/// When one does not: with [`requested`] it panics naming it (the test fails); otherwise it
/// prints a [`SKIP_MARKER`] line and returns `false`, and the test returns at once:
///
/// ```no_run
/// use bulkhead_test_support::{require, Need};
/// if !require(&[Need::EndToEnd, Need::Kvm]) {
///     return;
/// }
/// ```
#[must_use = "the test must return when a prerequisite is missing"]
pub fn require(needs: &[Need]) -> bool {
    require_for(&current_test(), needs)
}

/// [`require`] with the test's name given (for harnesses whose threads are not named after
/// the test, such as the engine suites' `libtest-mimic` mains).
#[must_use = "the test must return when a prerequisite is missing"]
pub fn require_for(test: &str, needs: &[Need]) -> bool {
    let requested = requested();
    for need in needs {
        if let Some(missing) = need.missing(requested) {
            if requested {
                panic!("{test}: {missing} ({REQUEST_VAR}=1 asks for every test to run)");
            }
            skip_line(test, &missing);
            return false;
        }
    }
    true
}

/// Prints the skip line for `test` (see [`SKIP_MARKER`]) on the process's stderr.
pub fn skip_line(test: &str, why: &str) {
    // Not eprintln!: libtest captures that for passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "{SKIP_MARKER} {test}: {why}");
}

/// The running test's name: libtest runs each test on a thread named after it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_string()
}

#[cfg(test)]
mod tests;

//! Docker's network reaches a Bulkhead container as it reaches a runc one (issue 12): the cases
//! of `engine::network_cases`, runc first, then Bulkhead, on one private dockerd that runs —
//! with its default bridge, NAT rules and published ports — inside a network namespace this
//! suite makes: no packet leaves it and the containers' own. Gated by `BULKHEAD_E2E=1`;
//! `cargo test --test docker_network -- bulkhead::` runs a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use bulkhead_tests::engine::dockerd::Dockerd;
use bulkhead_tests::engine::network_cases::{self, assert_no_taps_in_namespaces_under, NetEngine};
use bulkhead_tests::engine::suite::{self, trial, Shared};
use bulkhead_tests::engine::{processes_of, text};
use bulkhead_tests::{vm_needs, Need};

/// Nothing of Bulkhead is left: no monitors, no containerd shims (a failed start once left one),
/// no taps or tc redirects in any container namespace Docker still has, no veths on dockerd's
/// bridge.
fn assert_nothing_left(d: &Dockerd) {
    let left = processes_of(d.bin());
    assert!(left.is_empty(), "bulkhead processes left: {left:?}");
    // A shim exits on its own after the task's delete: waited for, with a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut shims = d.shims();
    while !shims.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
        shims = d.shims();
    }
    assert!(shims.is_empty(), "containerd shims left: {shims:?}");
    let links = NetEngine::netns(d).links();
    assert!(
        !links.contains("veth") && !links.contains(": bh"),
        "links left in the engine's namespace: {links}"
    );
    assert_no_taps_in_namespaces_under(&d.dir.path().join("exec/netns"), || {
        text(&d.docker(&["ps", "-a"]).stdout)
    });
}

fn main() {
    let shared = Shared::new(Dockerd::start_networked);
    let mut trials = network_cases::trials(&shared, |_| "runc".into(), |_| "bulkhead".into());
    let d = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        assert_nothing_left(d.get())
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("docker_network", &needs, trials, shared)
}

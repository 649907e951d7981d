//! podman's default bridge network (netavark) reaches a Bulkhead container as it reaches a runc
//! one (issue 12): the cases of `engine::network_cases`, runc first, then Bulkhead, with every
//! podman command run inside a network namespace this suite makes, where netavark builds its
//! bridge and port forwarding: no packet leaves it and the containers' own. Gated by
//! `BULKHEAD_E2E=1`; `cargo test --test podman_network -- bulkhead::` runs a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use bulkhead_tests::engine::network_cases::{self, assert_no_taps_in_namespaces_under, NetEngine};
use bulkhead_tests::engine::podman::{Podman, RUNC};
use bulkhead_tests::engine::suite::{self, trial, Shared};
use bulkhead_tests::engine::{processes_of, text};
use bulkhead_tests::{vm_needs, Need};

fn main() {
    let shared = Shared::new(Podman::new_networked);
    let mut trials =
        network_cases::trials(&shared, |_| RUNC.into(), |p| p.bin.display().to_string());
    let p = Arc::clone(&shared);
    trials.push(trial("bulkhead::nothing_left_behind", move || {
        let p = p.get();
        let left = processes_of(&p.bin);
        assert!(left.is_empty(), "bulkhead processes left: {left:?}");
        let links = p.netns().links();
        assert!(!links.contains(": bh"), "taps left: {links}");
        // podman's container namespaces are bind mounts under /run/netns.
        assert_no_taps_in_namespaces_under(std::path::Path::new("/run/netns"), || {
            let o = p.cli().output(&p.bin.display().to_string(), &["ps", "-a"]);
            format!("{}{}", text(&o.stdout), text(&o.stderr))
        });
    }));
    let needs = [&vm_needs()[..], &[Need::Root]].concat();
    suite::run("podman_network", &needs, trials, shared)
}

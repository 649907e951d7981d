use super::*;

#[test]
fn end_to_end_holds_exactly_when_requested() {
    assert!(Need::EndToEnd.missing(true).is_none());
    let missing = Need::EndToEnd.missing(false).unwrap();
    assert!(missing.contains("BULKHEAD_E2E=1"), "{missing}");
}

#[test]
fn missing_things_are_named() {
    let missing = Need::File("/nonexistent/vmlinux".into(), "run scripts/setup.sh")
        .missing(true)
        .unwrap();
    assert_eq!(missing, "needs /nonexistent/vmlinux (run scripts/setup.sh)");
    let missing = Need::Program("no-such-program-4a1f").missing(true).unwrap();
    assert_eq!(missing, "needs no-such-program-4a1f on PATH");
    assert!(Need::Program("sh").missing(true).is_none());
    assert!(Need::CgroupV2Controller("no-such-controller")
        .missing(true)
        .is_some());
}

#[test]
fn the_test_is_named_after_its_thread() {
    assert_eq!(current_test(), "tests::the_test_is_named_after_its_thread");
}

//! `scripts/register-engines.sh` merges the runtime into Docker's and podman's settings without
//! clobbering what is there, and is idempotent.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::process::Command;

use bulkhead_tests::{require, Need};

fn register(dir: &Path, runtime: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/register-engines.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(runtime)
        .env("BULKHEAD_DOCKER_JSON", dir.join("daemon.json"))
        .env("BULKHEAD_CONTAINERS_CONF", dir.join("containers.conf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn merges_and_keeps_existing_settings() {
    if !require(&[Need::Program("python3")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    fs::write(
        d.path().join("daemon.json"),
        r#"{"log-level":"warn","runtimes":{"other":{"path":"/x"}}}"#,
    )
    .unwrap();
    fs::write(
        d.path().join("containers.conf"),
        "# keep me\n[engine.runtimes]\ncrun = [\"/usr/bin/crun\"]\n\n[network]\nx = 1\n",
    )
    .unwrap();
    register(d.path(), "/opt/a");
    register(d.path(), "/opt/b");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.path().join("daemon.json")).unwrap()).unwrap();
    assert_eq!(json["log-level"], "warn");
    assert_eq!(json["runtimes"]["other"]["path"], "/x");
    assert_eq!(json["runtimes"]["bulkhead"]["path"], "/opt/b");
    let conf = fs::read_to_string(d.path().join("containers.conf")).unwrap();
    assert!(conf.starts_with("# keep me\n"));
    assert_eq!(conf.matches("bulkhead = ").count(), 1, "{conf}");
    assert!(
        conf.contains("bulkhead = [\"/opt/b\"]\ncrun = [\"/usr/bin/crun\"]"),
        "{conf}"
    );
    assert!(conf.contains("[network]\nx = 1"));

    // From nothing.
    let e = tempfile::tempdir().unwrap();
    register(e.path(), "/usr/local/bin/bulkhead");
    assert!(fs::read_to_string(e.path().join("containers.conf"))
        .unwrap()
        .contains("[engine.runtimes]\nbulkhead = [\"/usr/local/bin/bulkhead\"]"));
}

//! Specs and binaries that must fail, with runc's wording, leaving nothing behind.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::{base_spec, container_test, create, Bundle, Output};
use crate::container::{ContainerError, CreateOptions};

/// Creating must fail with `want`, and leave no cgroup behind.
fn create_fails(bundle: &Bundle, spec: serde_json::Value, want: &str) {
    let (stdio, _output) = Output::capture();
    let err = create(&spec, &bundle.rootfs, stdio, CreateOptions::default()).unwrap_err();
    assert_eq!(bulkhead_protocol::error_chain(&err), want);
    let leftovers: Vec<_> = std::fs::read_dir(cgroup_parent())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            name.to_string_lossy()
                .starts_with(&format!("bulkhead-test-{}-", std::process::id()))
        })
        .collect();
    assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
}

fn cgroup_parent() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = info
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.starts_with("cgroup2 ")).then(|| left.split(' ').nth(4).unwrap().to_string())
        })
        .unwrap();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::path::Path::new(&mount).join(rel.trim_start_matches('/'))
}

container_test! {
    fn bad_specs_and_binaries_are_reported_like_runc() {
        let bundle = Bundle::busybox();
        let mut spec = base_spec("true");
        spec["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
        create_fails(&bundle, spec, "invalid spec: unsupported namespace type user");

        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["nope", "arg"]);
        create_fails(&bundle, spec, "exec: \"nope\": executable file not found in $PATH");

        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["/etc/passwd"]);
        create_fails(&bundle, spec, "exec: \"/etc/passwd\": permission denied");

        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["/etc"]);
        create_fails(&bundle, spec, "exec: \"/etc\": is a directory");

        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["/no/such"]);
        create_fails(&bundle, spec, "exec: \"/no/such\": stat /no/such: no such file or directory");

        let mut spec = base_spec("true");
        spec["mounts"].as_array_mut().unwrap().push(json!({"destination": "/x", "type": "nosuchfs"}));
        create_fails(&bundle, spec, "mount /x: ENODEV: No such device");

        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["sh"]);
        spec["process"]["cwd"] = json!("relative");
        create_fails(&bundle, spec, "invalid spec: process.cwd must be an absolute path");

        // Exists and is executable, but execve refuses it: reported by start.
        let junk = bundle.rootfs.join("bin/junk");
        std::fs::write(&junk, [0u8, 1, 2, 3]).unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = base_spec("true");
        spec["process"]["args"] = json!(["junk"]);
        let (stdio, _output) = Output::capture();
        let mut c = create(&spec, &bundle.rootfs, stdio, CreateOptions::default()).unwrap();
        let err = c.start().unwrap_err();
        assert!(matches!(err, ContainerError::Exec { .. }));
        assert_eq!(err.to_string(), "exec junk: exec format error");
        assert_eq!(super::wait(c.init_pid()), crate::reaper::ExitStatus::Exited(1));
        c.destroy().unwrap();
        assert!(matches!(c.start(), Err(ContainerError::AlreadyStarted)));
    }
}

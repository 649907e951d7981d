//! The busybox root filesystem every container test runs: Debian's busybox-static with its
//! applet links, a passwd/group with root and uid 1000. Never pulled from a registry.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the rootfs in `<dir>/busybox` and its tarball `<dir>/busybox.tar`; returns the
/// tarball's path.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let root = dir.join("busybox");
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "data"] {
        fs::create_dir_all(root.join(sub)).expect("create the rootfs");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is not installed");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n";
    fs::write(root.join("etc/passwd"), passwd).expect("passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
    let tar = dir.join("busybox.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(ok.success(), "tar of the busybox rootfs failed");
    tar
}

/// An OCI image archive (`oci-layout`, `index.json`, blobs) of one layer, `layer` (a rootfs
/// tarball such as [`busybox_tar`]'s), named `name` (`io.containerd.image.name`), for `ctr
/// images import`: images are made here, never pulled. Returns the archive's path.
pub fn oci_image_tar(dir: &Path, layer: &Path, name: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let layout = dir.join("oci-layout-dir");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create the image layout");
    let blob = |data: &[u8]| {
        let hex = format!("{:x}", Sha256::digest(data));
        fs::write(blobs.join(&hex), data).expect("write a blob");
        serde_json::json!({"digest": format!("sha256:{hex}"), "size": data.len()})
    };
    let layer = blob(&fs::read(layer).expect("read the layer"));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    });
    let mut config_ref = blob(config.to_string().as_bytes());
    config_ref["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut layer_ref = layer;
    layer_ref["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_ref, "layers": [layer_ref],
    });
    let mut manifest_ref = blob(manifest.to_string().as_bytes());
    manifest_ref["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_ref["annotations"] = serde_json::json!({"io.containerd.image.name": name});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_ref]});
    fs::write(layout.join("index.json"), index.to_string()).expect("write index.json");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let archive = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("run tar")
        .success();
    assert!(ok, "tar of the image layout failed");
    archive
}

//! Loading and validating a bundle's `config.json` on the host, before any VM starts.
//!
//! Booting a VM costs seconds (tens of seconds under PVM), so everything that can be found wrong
//! on the host is found here and reported as one line naming the cause. The raw JSON is kept next
//! to the typed [`Spec`] because the guest must receive the spec with every field the user wrote
//! (vendor extensions included); only the paths the share rewrites are changed in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::Value;

use crate::config::SizeHints;

pub const CONFIG_FILE: &str = "config.json";

const NAMESPACES: &[&str] = &[
    "pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("open {0}: no such file or directory")]
    Missing(PathBuf),
    #[error("read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("config.json: {0}")]
    Invalid(String),
    /// `docker run --network host` and the like: runc would share the host's network stack,
    /// a micro-VM has a kernel of its own and cannot (Kata refuses it too).
    #[error("the container would share the host's network namespace ({0}), which a micro-VM cannot do: use a network namespace of its own (not --network host)")]
    HostNetwork(&'static str),
    #[error("rootfs ({0}) does not exist")]
    NoRootfs(PathBuf),
    #[error("rootfs ({0}) is not a directory")]
    RootfsNotDir(PathBuf),
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// A validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute host path of the rootfs.
    pub rootfs: PathBuf,
    pub spec: Spec,
    /// The spec exactly as written, for forwarding to the guest.
    pub raw: Value,
}

impl Bundle {
    /// Reads and validates `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = std::path::absolute(dir).map_err(|source| SpecError::Read {
            path: dir.into(),
            source,
        })?;
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::Missing(path))
            }
            Err(source) => return Err(SpecError::Read { path, source }),
        };
        let raw: Value = serde_json::from_slice(&text).map_err(|e| SpecError::Json {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        validate_raw(&raw)?;
        let spec: Spec = serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
        let rootfs = rootfs_path(&dir, &spec)?;
        Ok(Bundle {
            dir,
            rootfs,
            spec,
            raw,
        })
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// `linux.resources`, if the spec has any.
    pub fn resources(&self) -> Option<oci_spec::runtime::LinuxResources> {
        self.spec.linux().as_ref()?.resources().clone()
    }

    pub fn size_hints(&self) -> SizeHints {
        let res = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone());
        let memory_limit = res
            .as_ref()
            .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()));
        let cpu = res.as_ref().and_then(|r| r.cpu().clone());
        SizeHints {
            memory_limit,
            cpu_quota: cpu.as_ref().and_then(|c| c.quota()),
            cpu_period: cpu.as_ref().and_then(|c| c.period()),
        }
    }

    pub fn cgroups_path(&self) -> Option<String> {
        let linux = self.spec.linux().as_ref()?;
        linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// The namespace entry of `kind` ("network", …) if the spec asks for one, with its path.
    pub fn namespace(&self, kind: &str) -> Option<Option<PathBuf>> {
        let list = self.raw.pointer("/linux/namespaces")?.as_array()?;
        list.iter()
            .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))
            .map(|n| {
                n.get("path")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
            })
    }

    /// Fails when the container would share the network namespace the runtime runs in: the
    /// spec has no network namespace, or names ours by path.
    pub fn check_own_network(&self) -> Result<(), SpecError> {
        match self.namespace("network") {
            None => Err(SpecError::HostNetwork("the spec has no network namespace")),
            Some(None) => Ok(()),
            Some(Some(path)) => {
                let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
                    use std::os::unix::fs::MetadataExt;
                    a.dev() == b.dev() && a.ino() == b.ino()
                };
                match (
                    std::fs::metadata(&path),
                    std::fs::metadata("/proc/self/ns/net"),
                ) {
                    (Ok(theirs), Ok(ours)) if same(&theirs, &ours) => Err(SpecError::HostNetwork(
                        "its namespace path is the runtime's own",
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }
}

/// Checks made on the raw JSON, so the message can name exactly what is wrong (a typed parse
/// would only say "unknown variant" somewhere).
fn validate_raw(raw: &Value) -> Result<(), SpecError> {
    let obj = raw
        .as_object()
        .ok_or_else(|| invalid("not a JSON object"))?;
    let process = match obj.get("process") {
        None | Some(Value::Null) => return Err(invalid("missing \"process\"")),
        Some(p) => p
            .as_object()
            .ok_or_else(|| invalid("\"process\" is not an object"))?,
    };
    match process.get("args").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => {}
        _ => return Err(invalid("args must not be empty")),
    }
    if let Some(cwd) = process.get("cwd") {
        let cwd = cwd
            .as_str()
            .ok_or_else(|| invalid("\"process.cwd\" is not a string"))?;
        if !cwd.starts_with('/') {
            return Err(invalid(format!("cwd {cwd:?} is not an absolute path")));
        }
    }
    match obj
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
    {
        Some(p) if !p.is_empty() => {}
        _ => return Err(invalid("missing \"root.path\"")),
    }
    validate_namespaces(raw)?;
    validate_mounts(raw)?;
    validate_hooks(raw)
}

fn validate_namespaces(raw: &Value) -> Result<(), SpecError> {
    let Some(list) = raw.pointer("/linux/namespaces") else {
        return Ok(());
    };
    let list = list
        .as_array()
        .ok_or_else(|| invalid("\"linux.namespaces\" is not a list"))?;
    let mut seen = Vec::new();
    for ns in list {
        let kind = ns
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("namespace without a type"))?;
        if !NAMESPACES.contains(&kind) {
            return Err(invalid(format!("unknown namespace type {kind:?}")));
        }
        if seen.contains(&kind) {
            return Err(invalid(format!("namespace {kind:?} listed twice")));
        }
        seen.push(kind);
    }
    Ok(())
}

fn validate_mounts(raw: &Value) -> Result<(), SpecError> {
    let Some(list) = raw.get("mounts") else {
        return Ok(());
    };
    let list = list
        .as_array()
        .ok_or_else(|| invalid("\"mounts\" is not a list"))?;
    for m in list {
        let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
        if !dest.starts_with('/') {
            return Err(invalid(format!(
                "mount destination {dest:?} is not an absolute path"
            )));
        }
    }
    Ok(())
}

fn validate_hooks(raw: &Value) -> Result<(), SpecError> {
    let Some(hooks) = raw.get("hooks").and_then(Value::as_object) else {
        return Ok(());
    };
    for (kind, list) in hooks {
        for h in list.as_array().into_iter().flatten() {
            let path = h.get("path").and_then(Value::as_str).unwrap_or("");
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "{kind} hook path {path:?} is not absolute"
                )));
            }
            if let Some(t) = h.get("timeout").and_then(Value::as_i64) {
                if t <= 0 {
                    return Err(invalid(format!("{kind} hook timeout must be positive")));
                }
            }
        }
    }
    Ok(())
}

fn rootfs_path(dir: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("missing \"root.path\""))?;
    let path = dir.join(root.path());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(SpecError::RootfsNotDir(path)),
        Err(_) => Err(SpecError::NoRootfs(path)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal valid spec for tests.
    pub(crate) fn minimal() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    pub(crate) fn write_bundle(dir: &Path, spec: &Value) {
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec(spec).unwrap()).unwrap();
    }

    fn load_err(spec: &Value) -> String {
        let d = tempfile::tempdir().unwrap();
        write_bundle(d.path(), spec);
        Bundle::load(d.path()).unwrap_err().to_string()
    }

    #[test]
    fn valid_bundle_loads() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = minimal();
        spec["annotations"] = json!({"io.bulkhead.vcpus": "2"});
        spec["linux"]["resources"] =
            json!({"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}});
        spec["linux"]["cgroupsPath"] = json!("/docker/abc");
        spec["linux"]["namespaces"] =
            json!([{"type": "network", "path": "/run/netns/x"}, {"type": "pid"}]);
        write_bundle(d.path(), &spec);
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        assert_eq!(
            b.annotations().get("io.bulkhead.vcpus").map(String::as_str),
            Some("2")
        );
        assert_eq!(b.size_hints().memory_limit, Some(64 << 20));
        assert_eq!(b.size_hints().cpu_quota, Some(50000));
        assert_eq!(b.cgroups_path().as_deref(), Some("/docker/abc"));
        assert_eq!(
            b.namespace("network"),
            Some(Some(PathBuf::from("/run/netns/x")))
        );
        assert_eq!(b.namespace("pid"), Some(None));
        assert_eq!(b.namespace("uts"), None);
        assert!(!b.terminal());
    }

    #[test]
    fn only_a_network_namespace_of_its_own_is_accepted() {
        let d = tempfile::tempdir().unwrap();
        let check = |namespaces: Value| {
            let mut spec = minimal();
            spec["linux"]["namespaces"] = namespaces;
            write_bundle(d.path(), &spec);
            Bundle::load(d.path())
                .unwrap()
                .check_own_network()
                .map_err(|e| e.to_string())
        };
        let host = check(json!([{"type": "pid"}])).unwrap_err();
        assert!(
            host.contains("share the host's network namespace") && host.contains("--network host"),
            "{host}"
        );
        let ours = check(json!([{"type": "network", "path": "/proc/self/ns/net"}])).unwrap_err();
        assert!(ours.contains("the runtime's own"), "{ours}");
        check(json!([{"type": "network"}])).unwrap();
        check(json!([{"type": "network", "path": "/proc/1/task/1/ns/mnt"}])).unwrap();
    }

    #[test]
    fn missing_config_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let err = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("config.json: no such file or directory"),
            "{err}"
        );
    }

    #[test]
    fn bad_json() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CONFIG_FILE), "{\"process\": ").unwrap();
        let err = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn each_cause_is_named() {
        let mut s = minimal();
        s.as_object_mut().unwrap().remove("process");
        assert_eq!(load_err(&s), "config.json: missing \"process\"");

        let mut s = minimal();
        s["process"]["args"] = json!([]);
        assert_eq!(load_err(&s), "config.json: args must not be empty");

        let mut s = minimal();
        s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "bogus"}]);
        assert_eq!(
            load_err(&s),
            "config.json: unknown namespace type \"bogus\""
        );

        let mut s = minimal();
        s["root"]["path"] = json!("no-such-dir");
        assert!(load_err(&s).starts_with("rootfs ("), "{}", load_err(&s));
        assert!(load_err(&s).ends_with("no-such-dir) does not exist"));

        let mut s = minimal();
        s["process"]["cwd"] = json!("tmp");
        assert!(load_err(&s).contains("not an absolute path"));

        let mut s = minimal();
        s["mounts"] = json!([{"destination": "relative", "type": "tmpfs"}]);
        assert!(load_err(&s).contains("mount destination"));

        let mut s = minimal();
        s["hooks"] = json!({"prestart": [{"path": "hook"}]});
        assert!(load_err(&s).contains("prestart hook path"));

        assert_eq!(load_err(&json!([1])), "config.json: not a JSON object");
    }
}

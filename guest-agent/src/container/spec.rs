//! Checks on the OCI spec and the small conversions every plan needs (C strings, clean paths).
//!
//! Everything the container's processes do after `clone` is decided here, in the agent, so the
//! cloned child only executes a finished plan. Fields we cannot honour are rejected, never
//! silently skipped; fields that belong to the host (hooks) or to security modules the guest
//! does not have (AppArmor, SELinux labels) are ignored, like runc does without those modules.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// A spec we refuse, with the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("missing process")]
    MissingProcess,
    #[error("process.args must not be empty")]
    NoArgs,
    #[error("{0} must be an absolute path")]
    NotAbsolute(&'static str),
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("unsupported namespace type {0}")]
    UnsupportedNamespace(String),
    #[error("namespace {0} listed twice")]
    DuplicateNamespace(String),
    #[error("a new mount namespace is required")]
    MountNamespaceRequired,
    #[error("open namespace path {0}")]
    NamespacePath(String),
    #[error("hostname needs a new uts namespace")]
    HostnameWithoutUts,
    #[error("sysctl {0} is not allowed in a container")]
    Sysctl(String),
    #[error("unsupported field {0}")]
    Unsupported(&'static str),
    #[error("unsupported mount option {0}")]
    MountOption(String),
    #[error("mount {0}: bind source must be an absolute path")]
    BindSource(String),
    #[error("mount destination {0} is the root")]
    MountOnRoot(String),
    #[error("device {0}: {1}")]
    Device(String, &'static str),
    #[error("container id {0:?} is not valid")]
    Id(String),
    #[error("path {0} is too long")]
    TooLong(String),
}

/// Longest path the child handles (its buffers are on the stack).
pub const PATH_MAX: usize = 4096;

/// Deepest path the child's resolver walks.
pub const MAX_COMPONENTS: usize = 128;

/// Converts a string to a C string, naming `field` on failure.
pub fn cstring(field: &'static str, s: impl Into<Vec<u8>>) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::Nul(field))
}

/// Lexically cleans an absolute container path into a relative one without `.`/`..`
/// (`/a/./b/../c/` → `a/c`, `/` → ``), like Go's `filepath.Clean` on a rooted path.
pub fn clean_relative(field: &'static str, path: &Path) -> Result<CString, SpecError> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.len() > MAX_COMPONENTS {
        return Err(SpecError::TooLong(path.display().to_string()));
    }
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part.as_encoded_bytes());
    }
    if out.len() >= PATH_MAX {
        return Err(SpecError::TooLong(path.display().to_string()));
    }
    cstring(field, out)
}

/// Lexically cleans an absolute container path, keeping it absolute (`/a/../b` → `/b`).
pub fn clean_absolute(field: &'static str, path: &Path) -> Result<CString, SpecError> {
    let rel = clean_relative(field, path)?;
    let mut out = Vec::with_capacity(rel.as_bytes().len() + 1);
    out.push(b'/');
    out.extend_from_slice(rel.as_bytes());
    cstring(field, out)
}

/// Checks a container id with the one id rule (`bulkhead_protocol::validate_id`); its cgroup
/// directory is named by `bulkhead_protocol::id_file_name`, which fits any valid id.
pub fn check_id(id: &str) -> Result<(), SpecError> {
    bulkhead_protocol::validate_id(id).map_err(|_| SpecError::Id(id.to_string()))
}

/// How the container gets each namespace.
#[derive(Debug, Default)]
pub struct Namespaces {
    /// `CLONE_NEW*` flags of the namespaces to create.
    pub create: u64,
    /// Namespaces to join: an open namespace file and its `CLONE_NEW*` type.
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// A pid namespace is joined by path, so the init must be forked after `setns`.
    pub join_pid: bool,
    /// Types the container has its own of (created or joined): what `exec` must join.
    pub exec_flags: libc::c_int,
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// Reads `linux.namespaces`: pid, mount, ipc, uts and cgroup are created or joined by path;
/// network is joined by path or else stays the guest's own (the VM is the container's network);
/// user and time namespaces are refused.
pub fn namespaces(spec: &Spec) -> Result<Namespaces, SpecError> {
    let mut out = Namespaces::default();
    let mut seen = Vec::new();
    let mut has_mount = false;
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in &list {
        let t = ns.typ();
        if seen.contains(&t) {
            return Err(SpecError::DuplicateNamespace(ns_name(t).into()));
        }
        seen.push(t);
        let flag = match t {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::User | LinuxNamespaceType::Time => {
                return Err(SpecError::UnsupportedNamespace(ns_name(t).into()))
            }
        };
        match ns.path() {
            Some(path) => {
                if t == LinuxNamespaceType::Mount {
                    return Err(SpecError::MountNamespaceRequired);
                }
                let file = std::fs::File::open(path)
                    .map_err(|_| SpecError::NamespacePath(path.display().to_string()))?;
                out.join.push((file.into(), flag));
                out.join_pid |= t == LinuxNamespaceType::Pid;
                out.exec_flags |= flag;
            }
            None if t == LinuxNamespaceType::Network => {}
            None => {
                has_mount |= t == LinuxNamespaceType::Mount;
                out.create |= flag as u64;
                out.exec_flags |= flag;
            }
        }
    }
    if !has_mount {
        return Err(SpecError::MountNamespaceRequired);
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && out.create & libc::CLONE_NEWUTS as u64 == 0
    {
        return Err(SpecError::HostnameWithoutUts);
    }
    Ok(out)
}

/// Turns `linux.sysctl` into `/proc/sys/...` paths and values, refusing keys that are not
/// namespaced to the container: only IPC (in a new IPC namespace), UTS names, and `net.*`
/// (the guest's network is the container's) are allowed, as runc allows.
pub fn sysctls(spec: &Spec, ns: &Namespaces) -> Result<Vec<(CString, CString)>, SpecError> {
    let Some(map) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(Vec::new());
    };
    let new_ipc = ns.create & libc::CLONE_NEWIPC as u64 != 0;
    let new_uts = ns.create & libc::CLONE_NEWUTS as u64 != 0;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let path = key.replace('.', "/");
        let allowed = (new_ipc
            && (matches!(
                key.as_str(),
                "kernel.msgmax" | "kernel.msgmnb" | "kernel.msgmni"
            ) || matches!(
                key.as_str(),
                "kernel.sem" | "kernel.shmall" | "kernel.shmmax"
            ) || matches!(key.as_str(), "kernel.shmmni" | "kernel.shm_rmid_forced")
                || key.starts_with("fs.mqueue.")))
            || (new_uts && matches!(key.as_str(), "kernel.hostname" | "kernel.domainname"))
            || key.starts_with("net.");
        let clean = path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
        if !allowed || !clean {
            return Err(SpecError::Sysctl(key.clone()));
        }
        let value = map.get(key).cloned().unwrap_or_default();
        out.push((
            cstring("linux.sysctl", format!("/proc/sys/{path}"))?,
            cstring("linux.sysctl", value)?,
        ));
    }
    Ok(out)
}

/// Refuses spec fields that ask for something the guest cannot do.
pub fn reject_unsupported(spec: &Spec) -> Result<(), SpecError> {
    if let Some(linux) = spec.linux() {
        if linux.personality().is_some() {
            return Err(SpecError::Unsupported("linux.personality"));
        }
        if linux.memory_policy().is_some() {
            return Err(SpecError::Unsupported("linux.memoryPolicy"));
        }
        if linux.time_offsets().is_some() {
            return Err(SpecError::Unsupported("linux.timeOffsets"));
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(SpecError::Unsupported("linux.netDevices"));
        }
        if linux.intel_rdt().is_some() {
            return Err(SpecError::Unsupported("linux.intelRdt"));
        }
        if let Some(seccomp) = linux.seccomp() {
            if seccomp.listener_path().is_some() {
                return Err(SpecError::Unsupported("linux.seccomp.listenerPath"));
            }
        }
    }
    if let Some(process) = spec.process() {
        reject_unsupported_process(process)?;
    }
    Ok(())
}

/// The process fields we refuse, for the init and for exec.
pub fn reject_unsupported_process(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    if process.io_priority().is_some() {
        return Err(SpecError::Unsupported("process.ioPriority"));
    }
    if process.scheduler().is_some() {
        return Err(SpecError::Unsupported("process.scheduler"));
    }
    if process.exec_cpu_affinity().is_some() {
        return Err(SpecError::Unsupported("process.execCPUAffinity"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_lexically() {
        let c = |p: &str| clean_relative("t", Path::new(p)).unwrap();
        assert_eq!(c("/proc").as_bytes(), b"proc");
        assert_eq!(c("/a/./b/../c/").as_bytes(), b"a/c");
        assert_eq!(c("/../../etc").as_bytes(), b"etc");
        assert_eq!(c("/").as_bytes(), b"");
        assert_eq!(c("dev//pts").as_bytes(), b"dev/pts");
        let a = clean_absolute("t", Path::new("/x/../y")).unwrap();
        assert_eq!(a.as_bytes(), b"/y");
        assert_eq!(
            clean_relative("t", Path::new("/a\0b")),
            Err(SpecError::Nul("t"))
        );
    }

    #[test]
    fn ids_name_a_single_directory() {
        assert!(check_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(1025)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"x".repeat(1024)).is_ok());
    }

    fn spec_with(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn namespaces_are_created_joined_or_refused() {
        let spec = spec_with(
            r#"{"ociVersion":"1.0.2","hostname":"h","linux":{"namespaces":[
            {"type":"pid"},{"type":"mount"},{"type":"network"},{"type":"uts"},
            {"type":"ipc","path":"/proc/self/ns/ipc"}]}}"#,
        );
        let ns = namespaces(&spec).unwrap();
        let want = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS) as u64;
        assert_eq!(ns.create, want);
        assert_eq!(ns.join.len(), 1);
        assert_eq!(ns.join[0].1, libc::CLONE_NEWIPC);
        assert!(!ns.join_pid);
        assert_eq!(ns.exec_flags as u64, want | libc::CLONE_NEWIPC as u64);

        let user = spec_with(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"},{"type":"user"}]}}"#,
        );
        assert_eq!(
            namespaces(&user).unwrap_err().to_string(),
            "unsupported namespace type user"
        );
        let no_mnt = spec_with(r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"}]}}"#);
        assert_eq!(
            namespaces(&no_mnt).unwrap_err(),
            SpecError::MountNamespaceRequired
        );
        let host_uts = spec_with(
            r#"{"ociVersion":"1.0.2","hostname":"x","linux":{"namespaces":[{"type":"mount"}]}}"#,
        );
        assert_eq!(
            namespaces(&host_uts).unwrap_err(),
            SpecError::HostnameWithoutUts
        );
        let twice = spec_with(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"},{"type":"mount"}]}}"#,
        );
        assert!(matches!(
            namespaces(&twice),
            Err(SpecError::DuplicateNamespace(_))
        ));
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        let spec = spec_with(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"},{"type":"ipc"}],
            "sysctl":{"kernel.shmmax":"1000","net.ipv4.ip_forward":"1"}}}"#,
        );
        let ns = namespaces(&spec).unwrap();
        let list = sysctls(&spec, &ns).unwrap();
        assert_eq!(list[0].0.as_bytes(), b"/proc/sys/kernel/shmmax");
        assert_eq!(list[1].0.as_bytes(), b"/proc/sys/net/ipv4/ip_forward");
        assert_eq!(list[1].1.as_bytes(), b"1");
        for bad in [
            "kernel.panic",
            "net..x",
            "net/../../x",
            "vm.overcommit_memory",
        ] {
            let spec = spec_with(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{{"type":"mount"}},
                {{"type":"ipc"}}],"sysctl":{{"{bad}":"1"}}}}}}"#
            ));
            let ns = namespaces(&spec).unwrap();
            assert!(sysctls(&spec, &ns).is_err(), "{bad}");
        }
    }
}

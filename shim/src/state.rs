//! The container state store: `<root>/<id>/state.json`, written atomically.
//!
//! Every CLI call is a new process, so everything later calls need lives here. The file holds the
//! OCI state (`ociVersion`, `id`, `status`, `pid`, `bundle`, `annotations`) plus our own fields:
//! the sandbox monitor's pid *and its start time*, so a recycled pid is never mistaken for a live
//! monitor. The status written by the monitor is the last one it knew; a monitor that is gone (or
//! a zombie) means the container is stopped, whatever the file says.
//!
//! Two files, because the host acts on what they say with root's powers (`delete` runs the
//! bundle's poststop hooks and SIGKILLs the monitor's pid, `update` writes the cgroup
//! directories): `state.json` is written by the monitor during its set-up only, and is
//! read-only to it once it is locked down (`monitor::jail`), so a monitor taken over by its guest
//! cannot point a later `delete` at another bundle, pid or directory. What changes afterwards —
//! the status and the exit status — is in [`LIVE_DIR`]`/status.json`, the one file the locked-down
//! monitor writes, and nothing but those two values is taken from it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// OCI runtime spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";

const STATE_FILE: &str = "state.json";

/// The directory in a container's state directory that its monitor may still write once
/// locked down: the live part of its state (status, exit status).
pub const LIVE_DIR: &str = "live";
const LIVE_FILE: &str = "status.json";
/// Longest live file read: it holds two values, and its writer may be hostile.
const LIVE_MAX_BYTES: u64 = 4096;

/// What `<root>/<id>/live/status.json` holds: the only values taken from it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Live {
    status: Status,
    exit_status: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotExist(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("invalid container id {id:?}")]
    InvalidId {
        id: String,
        source: bulkhead_protocol::IdError,
    },
    #[error("state of container {id:?} is unreadable")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("state directory {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::lifecycle::Status;

/// What `<root>/<id>/state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The sandbox monitor's pid: what `--pid-file` holds and engines wait for.
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time (containerd parses it as a time).
    pub created: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Start time of the monitor (clock ticks since boot, /proc/PID/stat field 22).
    #[serde(default)]
    pub monitor_start_time: u64,
    /// Host cgroup directories the monitor created and joined (removed on delete).
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
    /// The VM's size (`update` keeps the host limits that cover it).
    #[serde(default)]
    pub vm: Option<crate::config::VmSize>,
    /// Exit status of the container init once known (128+signal when killed).
    #[serde(default)]
    pub exit_status: Option<i32>,
}

impl State {
    /// Takes the status and exit status from `<dir>/live/status.json` when it holds them. The
    /// file is the locked-down monitor's, so it is read as untrusted: a few KiB at most, only
    /// its two fields, and anything else (missing, garbled, too long) leaves the state as
    /// `state.json` has it.
    fn apply_live(&mut self, dir: &Path) {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        // Not through a symlink, and a FIFO put there does not block the reader.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join(LIVE_DIR).join(LIVE_FILE));
        let Ok(file) = file else { return };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return;
        }
        let mut data = Vec::new();
        if file
            .take(LIVE_MAX_BYTES + 1)
            .read_to_end(&mut data)
            .is_err()
            || data.len() as u64 > LIVE_MAX_BYTES
        {
            return;
        }
        if let Ok(live) = serde_json::from_slice::<Live>(&data) {
            self.status = live.status;
            self.exit_status = live.exit_status;
        }
    }

    /// The status as seen now: a dead monitor means stopped.
    pub fn current_status(&self) -> Status {
        if self.status == Status::Stopped || !process_alive(self.pid, self.monitor_start_time) {
            Status::Stopped
        } else {
            self.status
        }
    }

    /// The OCI state JSON that `bulkhead state` prints (runc's field set).
    pub fn oci_json(&self) -> serde_json::Value {
        let status = self.current_status();
        let pid = if status == Status::Stopped {
            0
        } else {
            self.pid
        };
        serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "pid": pid,
            "status": status.to_string(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
        })
    }
}

/// The state directories under `--root`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>`, after checking the id: the name is the id, or for ids too long to
    /// name a file, a short stable form of it (`bulkhead_protocol::id_file_name`).
    pub fn dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.root.join(&*bulkhead_protocol::id_file_name(id)))
    }

    /// Reserves `<root>/<id>`; fails if the container already exists.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir(id)?;
        crate::private::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        match crate::private::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.into()))
            }
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let live = dir.join(LIVE_DIR);
        crate::private::create_dir(&live).map_err(io_err(&live))?;
        Ok(dir)
    }

    /// The state, with the live status over the one `state.json` holds.
    pub fn load(&self, id: &str) -> Result<State, StateError> {
        let dir = self.dir(id)?;
        let path = dir.join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotExist(id.into()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut state: State =
            serde_json::from_slice(&data).map_err(|source| StateError::Corrupt {
                id: id.into(),
                source,
            })?;
        state.apply_live(&dir);
        Ok(state)
    }

    /// Writes the whole state (the monitor, during its set-up).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let dir = self.dir(&state.id)?;
        let data = serde_json::to_vec(state).map_err(|source| StateError::Corrupt {
            id: state.id.clone(),
            source,
        })?;
        write_atomically(&dir, STATE_FILE, &data).map_err(io_err(&dir))
    }

    /// Writes the state's status and exit status to its live file (the monitor, at every
    /// change of status; after its lock-down the only state it can write).
    pub fn save_live(&self, state: &State) -> Result<(), StateError> {
        let dir = self.dir(&state.id)?.join(LIVE_DIR);
        let live = Live {
            status: state.status,
            exit_status: state.exit_status,
        };
        let data = serde_json::to_vec(&live).map_err(|source| StateError::Corrupt {
            id: state.id.clone(),
            source,
        })?;
        write_atomically(&dir, LIVE_FILE, &data).map_err(io_err(&dir))
    }

    /// Removes `<root>/<id>` and everything in it (the share must already be unmounted).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// States of all containers under the root, sorted by id; a missing root means none.
    /// (Directory names are not always ids, so each state file says whose it is.)
    pub fn list(&self) -> Result<Vec<State>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut states: Vec<State> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let data = fs::read(e.path().join(STATE_FILE)).ok()?;
                let mut st = serde_json::from_slice::<State>(&data).ok()?;
                st.apply_live(&e.path());
                Some(st)
            })
            .filter(|st| self.dir(&st.id).is_ok())
            .collect();
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }
}

/// Writes `dir/name` atomically: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = crate::private::create_new_or_truncate(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// The one id rule (`bulkhead_protocol::validate_id`: runc's characters, 1..=1024 bytes, not
/// `.` or `..`), checked before anything is created.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    bulkhead_protocol::validate_id(id).map_err(|source| StateError::InvalidId {
        id: id.into(),
        source,
    })
}

/// Start time of a process in clock ticks since boot, `None` if it does not exist.
pub fn process_start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// True if `pid` is alive, not a zombie, and (when `start_time` is non-zero) started at that time.
pub fn process_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match stat_fields(pid) {
        Some((state, start)) => {
            state != 'Z' && state != 'X' && (start_time == 0 || start == start_time)
        }
        None => false,
    }
}

/// (state letter, start time) from `/proc/PID/stat`.
fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; starttime is field 22, i.e. 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> State {
        State {
            oci_version: OCI_VERSION.into(),
            id: id.into(),
            status: Status::Created,
            pid: std::process::id() as i32,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-11-25T00:00:00Z".into(),
            owner: String::new(),
            annotations: BTreeMap::new(),
            monitor_start_time: process_start_time(std::process::id() as i32).unwrap(),
            cgroup_dirs: vec![],
            vm: None,
            exit_status: None,
        }
    }

    #[test]
    fn save_load_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("root"));
        assert!(store.list().unwrap().is_empty());
        let b = store.create_dir("b").unwrap();
        store.create_dir("a").unwrap();
        // Other host users see neither the store nor a container's state.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(store.root()), mode(&b)), (0o700, 0o700));
        assert!(matches!(store.create_dir("a"), Err(StateError::Exists(_))));
        assert_eq!(
            store.create_dir("a").unwrap_err().to_string(),
            "container with id exists: a"
        );
        store.save(&sample("a")).unwrap();
        store.save(&sample("b")).unwrap();
        assert_eq!(store.load("a").unwrap(), sample("a"));
        let ids: Vec<String> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, vec!["a", "b"]);
        // No temporary file is left behind: the state and the (empty) live directory.
        assert_eq!(fs::read_dir(store.dir("a").unwrap()).unwrap().count(), 2);
        store.remove("a").unwrap();
        store.remove("a").unwrap();
        let err = store.load("a").unwrap_err();
        assert_eq!(err.to_string(), "container \"a\" does not exist");
    }

    #[test]
    fn ids_cannot_escape_the_root() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "a\0",
            &"x".repeat(1025),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "A-b_c.d+e", "0123456789abcdef", &"y".repeat(1024)] {
            validate_id(good).unwrap();
        }
    }

    /// Ids up to 1024 bytes get a state directory (file names end at 255 bytes) and are listed
    /// by their real id.
    #[test]
    fn long_ids_have_state_too() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("root"));
        for len in [255, 256, 1024] {
            let id = "l".repeat(len - 1) + &len.to_string()[..1];
            store.create_dir(&id).unwrap();
            store.save(&sample(&id)).unwrap();
            assert_eq!(store.load(&id).unwrap().id, id);
        }
        assert_eq!(store.list().unwrap().len(), 3);
    }

    /// The live file gives the status and exit status, and nothing else; a garbled, oversized
    /// or foreign one is ignored (its writer, the locked-down monitor, may be hostile).
    #[test]
    fn only_status_and_exit_status_come_from_the_live_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("root"));
        let dir = store.create_dir("a").unwrap();
        let live_dir = dir.join(LIVE_DIR);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&live_dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut st = sample("a");
        store.save(&st).unwrap();
        st.status = Status::Stopped;
        st.exit_status = Some(137);
        st.bundle = "/elsewhere".into();
        st.pid = 1;
        store.save_live(&st).unwrap();
        let loaded = store.load("a").unwrap();
        assert_eq!(
            (loaded.status, loaded.exit_status),
            (Status::Stopped, Some(137))
        );
        assert_eq!(
            (loaded.bundle, loaded.pid),
            (sample("a").bundle, sample("a").pid)
        );
        assert_eq!(store.list().unwrap()[0].status, Status::Stopped);
        assert_eq!(
            fs::read_dir(&live_dir).unwrap().count(),
            1,
            "no temporary file"
        );

        let live = live_dir.join(LIVE_FILE);
        for bad in [
            r#"{"status":"stopped","exitStatus":0,"bundle":"/x"}"#.to_string(),
            "not json".to_string(),
            format!(
                r#"{{"status":"stopped","exitStatus":{}}}"#,
                " ".repeat(5000) + "1"
            ),
        ] {
            fs::write(&live, bad).unwrap();
            let loaded = store.load("a").unwrap();
            assert_eq!((loaded.status, loaded.exit_status), (Status::Created, None));
        }
        fs::remove_file(&live).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &live).unwrap();
        assert_eq!(store.load("a").unwrap().status, Status::Created);
        fs::remove_file(&live).unwrap();
        nix::unistd::mkfifo(&live, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(
            store.load("a").unwrap().status,
            Status::Created,
            "a FIFO does not block"
        );
    }

    #[test]
    fn dead_or_recycled_monitor_means_stopped() {
        let mut s = sample("x");
        assert_eq!(s.current_status(), Status::Created);
        s.monitor_start_time += 1; // same pid, different start: a recycled pid
        assert_eq!(s.current_status(), Status::Stopped);
        let mut s = sample("x");
        s.pid = i32::MAX; // no such process
        assert_eq!(s.current_status(), Status::Stopped);
        assert_eq!(s.oci_json()["pid"], 0);
        assert_eq!(s.oci_json()["status"], "stopped");
    }

    #[test]
    fn zombies_are_dead() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Give it time to exit; it stays a zombie until waited for.
        for _ in 0..100 {
            if stat_fields(pid).map(|(s, _)| s) == Some('Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process_alive(pid, 0));
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn oci_json_has_runc_fields() {
        let v = sample("x").oci_json();
        for k in [
            "ociVersion",
            "id",
            "pid",
            "status",
            "bundle",
            "rootfs",
            "created",
            "owner",
            "annotations",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["status"], "created");
    }
}

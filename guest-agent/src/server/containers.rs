//! The container calls: the server's side of the container module (`crate::container`).
//!
//! A container's init is also a process in the table, under the container's id, so the
//! process calls (wait, signal, resize, close stdin) and the stream port work on it unchanged;
//! StartContainer is StartProcess on it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::rpc::{Code, Status};
use bulkhead_protocol::{api, GUEST_SHARE_DIR};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;

use super::calls::{chain, check_id, empty, ok, size_of, Handled};
use super::{Entry as ProcEntry, Launch, Server};
use crate::container::{Container, ContainerError};
use crate::process::{Process, State, Streams};

/// How long RemoveContainer (forced) waits for the killed init's status.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A container and what the agent did for it.
pub struct Entry {
    pub container: Container,
    /// The share mounted for it, unmounted on removal.
    share: Option<PathBuf>,
}

pub fn missing(id: &str) -> Status {
    Status::new(Code::NotFound, format!("container {id:?} does not exist"))
}

/// A container error as the host sees it: runc's wording where it has one.
pub fn status(e: &ContainerError) -> Status {
    let code = match e {
        ContainerError::Spec(_) | ContainerError::Seccomp(_) => Code::InvalidArgument,
        ContainerError::NotFound(_) | ContainerError::Stat { .. } => Code::NotFound,
        ContainerError::PermissionDenied(_) => Code::PermissionDenied,
        ContainerError::NotRunning | ContainerError::Paused | ContainerError::AlreadyStarted => {
            Code::FailedPrecondition
        }
        _ => Code::Internal,
    };
    Status::new(code, chain(e))
}

fn bad(what: &str, e: impl std::fmt::Display) -> Status {
    Status::new(Code::InvalidArgument, format!("{what}: {e}"))
}

/// `rel` inside `base`, refusing anything that could leave it.
fn beneath(base: &Path, rel: &str) -> Result<PathBuf, Status> {
    let rel = Path::new(rel);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(
            "rootfs",
            format!("{rel:?} is not a plain relative path"),
        ));
    }
    Ok(base.join(rel))
}

/// Mounts virtio-fs `tag` at [`GUEST_SHARE_DIR`].
fn mount_share(tag: &str) -> Result<PathBuf, Status> {
    let dir = PathBuf::from(GUEST_SHARE_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Status::new(Code::Internal, format!("mkdir {GUEST_SHARE_DIR}: {e}")))?;
    mount(
        Some(tag),
        &dir,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| {
        Status::new(
            Code::FailedPrecondition,
            format!(
                "mount share {tag:?}: {}",
                crate::process::spawn::errno_text(e)
            ),
        )
    })?;
    Ok(dir)
}

impl Server {
    fn container(&self, id: &str) -> Result<&Container, Status> {
        self.containers
            .get(id)
            .map(|c| &c.container)
            .ok_or_else(|| missing(id))
    }

    /// What an exec into container `id` will run (checked now, started by StartProcess).
    pub(super) fn exec_launch(&self, id: &str, process_json: &[u8]) -> Result<Launch, Status> {
        self.container(id)?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(process_json).map_err(|e| bad("oci_process", e))?;
        Ok(Launch::Exec {
            container: id.to_owned(),
            process: Box::new(process),
        })
    }

    pub(super) fn create_container(&mut self, r: api::CreateContainerRequest) -> Handled {
        check_id(&r.id)?;
        if self.containers.contains_key(&r.id) || self.by_id.contains_key(&r.id) {
            return Err(Status::new(
                Code::AlreadyExists,
                format!("container {:?} already exists", r.id),
            ));
        }
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&r.oci_spec).map_err(|e| bad("oci_spec", e))?;
        let streams = Streams {
            stdin: r.stdio.stdin,
            stdout: r.stdio.stdout,
            stderr: r.stdio.stderr,
        };
        if r.terminal && !(streams.stdin || streams.stdout || streams.stderr) {
            return Err(bad(
                "terminal",
                "a terminal needs its stream (set a stdio flag)",
            ));
        }
        let mut share = None;
        let rootfs = if r.share_tag.is_empty() {
            PathBuf::from(&r.rootfs)
        } else {
            if self.containers.values().any(|c| c.share.is_some()) {
                return Err(Status::new(
                    Code::FailedPrecondition,
                    "a share is already mounted in this guest",
                ));
            }
            let dir = mount_share(&r.share_tag)?;
            share = Some(dir.clone());
            if Path::new(&r.rootfs).is_absolute() {
                PathBuf::from(&r.rootfs)
            } else {
                beneath(&dir, &r.rootfs)?
            }
        };
        let unmount = |share: &Option<PathBuf>| {
            if let Some(dir) = share {
                let _ = umount2(dir, MntFlags::MNT_DETACH);
            }
        };
        if !rootfs.is_absolute() {
            unmount(&share);
            return Err(bad(
                "rootfs",
                "must be an absolute guest path without a share",
            ));
        }
        let terminal = r.terminal.then(|| size_of(&r.terminal_size));
        let mut process = match Process::new(terminal, streams, None) {
            Ok(p) => p,
            Err(e) => {
                unmount(&share);
                return Err(Status::new(Code::Internal, chain(&e)));
            }
        };
        let Some(stdio) = process.child_stdio.take() else {
            unmount(&share);
            return Err(Status::new(Code::Internal, "process without stdio"));
        };
        let mut container = match Container::create(&r.id, &spec, &rootfs, stdio, &self.reaper) {
            Ok(c) => c,
            Err(e) => {
                unmount(&share);
                return Err(status(&e));
            }
        };
        if let Some(master) = container.take_console() {
            if let Err(e) = process.replace_terminal(master, terminal.flatten()) {
                let _ = container.destroy();
                unmount(&share);
                return Err(Status::new(Code::Internal, chain(&e)));
            }
        }
        let pid = container.init_pid();
        process.state = State::Created(Some(pid));
        let i = self.procs.insert(ProcEntry {
            process,
            launch: Some(Launch::Init {
                container: r.id.clone(),
            }),
            waiters: Vec::new(),
            start: None,
        });
        self.by_id.insert(r.id.clone(), i);
        self.containers.insert(r.id, Entry { container, share });
        self.sync_proc(i);
        let mut resp = api::CreateContainerResponse::new();
        resp.pid = pid.as_raw();
        ok(&resp)
    }

    pub(super) fn list_processes(&mut self, id: &str) -> Handled {
        let pids = self.container(id)?.pids().map_err(|e| status(&e))?;
        let mut r = api::ListProcessesResponse::new();
        r.pids = pids.into_iter().map(|p| p.as_raw()).collect();
        ok(&r)
    }

    pub(super) fn pause_container(&mut self, id: &str, pause: bool) -> Handled {
        let c = self.container(id)?;
        let result = if pause { c.pause() } else { c.resume() };
        result.map_err(|e| status(&e))?;
        empty()
    }

    pub(super) fn update_container(&mut self, r: api::UpdateContainerRequest) -> Handled {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&r.resources).map_err(|e| bad("resources", e))?;
        self.container(&r.id)?
            .update(&resources)
            .map_err(|e| status(&e))?;
        empty()
    }

    pub(super) fn stats(&mut self, id: &str) -> Handled {
        let s = self.container(id)?.stats().map_err(|e| status(&e))?;
        let mut r = api::StatsResponse::new();
        let cpu = r.cpu.mut_or_insert_default();
        cpu.usage_usec = s.cpu.usage_usec;
        cpu.user_usec = s.cpu.user_usec;
        cpu.system_usec = s.cpu.system_usec;
        cpu.nr_periods = s.cpu.nr_periods;
        cpu.nr_throttled = s.cpu.nr_throttled;
        cpu.throttled_usec = s.cpu.throttled_usec;
        if let Some(m) = s.memory {
            let mem = r.memory.mut_or_insert_default();
            mem.usage_bytes = m.usage;
            mem.limit_bytes = m.limit;
            mem.max_usage_bytes = m.max_usage;
            mem.swap_usage_bytes = m.swap_usage;
            mem.swap_limit_bytes = m.swap_limit;
            mem.oom_events = m.oom_events;
            mem.oom_kill_events = m.oom_kill_events;
            mem.stat = m.stat.into_iter().collect();
        }
        if let Some(p) = s.pids {
            let pids = r.pids.mut_or_insert_default();
            pids.current = p.current;
            pids.limit = p.limit;
        }
        r.io =
            s.io.into_iter()
                .map(|io| api::IoStats {
                    major: io.major,
                    minor: io.minor,
                    read_bytes: io.read_bytes,
                    write_bytes: io.write_bytes,
                    read_ios: io.read_ios,
                    write_ios: io.write_ios,
                    ..Default::default()
                })
                .collect();
        ok(&r)
    }

    /// Removes a stopped container (any container with `force`, killing it first): its cgroup,
    /// its init's process entry and status, and its share.
    pub(super) fn remove_container(&mut self, r: api::RemoveContainerRequest) -> Handled {
        self.container(&r.id)?;
        let i = self.index(&r.id).ok();
        let live = i
            .and_then(|i| self.procs.get(i))
            .and_then(|e| match e.process.state {
                State::Running(pid) | State::Created(Some(pid)) => Some(pid),
                _ => None,
            });
        if live.is_some() && !r.force {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("container {:?} is running", r.id),
            ));
        }
        let Some(mut entry) = self.containers.remove(&r.id) else {
            return Err(missing(&r.id));
        };
        if live.is_some() {
            let _ = entry.container.signal_all(Signal::SIGKILL);
        }
        let destroyed = entry.container.destroy();
        if let Some(pid) = live {
            // Claim the killed init's status so the reaper does not keep it.
            let _ = self.reaper.wait_timeout(pid, KILL_WAIT);
        }
        if let Some(i) = i {
            self.forget(i, &r.id);
        }
        if let Some(dir) = &entry.share {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
        }
        destroyed.map_err(|e| status(&e))?;
        empty()
    }

    /// Kills and removes every container (host test mode's shutdown).
    pub(super) fn remove_all_containers(&mut self) {
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            let _ = self.remove_container(api::RemoveContainerRequest {
                id,
                force: true,
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_stays_inside_the_share() {
        let base = Path::new(GUEST_SHARE_DIR);
        assert_eq!(beneath(base, "rootfs").unwrap(), base.join("rootfs"));
        assert_eq!(beneath(base, "a/b").unwrap(), base.join("a/b"));
        assert!(beneath(base, "../etc").is_err());
        assert!(beneath(base, "a/../../x").is_err());
        assert!(beneath(base, "./x").is_err());
        assert!(beneath(base, "").is_ok_and(|p| p == base));
    }
}

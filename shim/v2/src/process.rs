//! The shim's table of tasks: each container's init and its exec'd processes, with what
//! containerd asks about them (state, pid, exit) and what it waits for.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::runtime::Runtime;
use crate::stdio::Stdio;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, 128 + the signal for a signalled process (what runc's shim reports).
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

/// One process of a task (the init, or an exec).
pub struct Proc {
    pub stdio: Stdio,
    /// The host process that stands for it: the container's monitor for the init, the `exec`
    /// process for an exec. Its exit status is the container process's.
    pub pid: u32,
    pub status: Status,
    /// The terminal's master, for ResizePty (kept while the process runs).
    pub master: Option<Arc<OwnedFd>>,
    /// An exec's process (the OCI `process` JSON containerd sent), until it starts.
    pub spec: Option<Vec<u8>>,
    exit_tx: watch::Sender<Option<Exit>>,
}

impl Proc {
    pub fn new(stdio: Stdio, spec: Option<Vec<u8>>) -> Proc {
        Proc {
            stdio,
            pid: 0,
            status: Status::CREATED,
            master: None,
            spec,
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// A receiver that sees the exit once it happened.
    pub fn exited(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    pub fn set_exited(&mut self, exit: Exit) {
        self.status = Status::STOPPED;
        self.master = None;
        self.exit_tx.send_replace(Some(exit));
    }
}

/// One container: its bundle, runtime, init and execs.
pub struct Container {
    pub bundle: PathBuf,
    pub runtime: Runtime,
    /// Whether the shim mounted containerd's rootfs mounts on `bundle/rootfs`.
    pub mounted_rootfs: bool,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
}

impl Container {
    /// The process `exec_id` names: the init for an empty one.
    pub fn process(&self, exec_id: &str) -> Option<&Proc> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_sees_the_exit() {
        let mut p = Proc::new(Stdio::default(), None);
        let mut rx = p.exited();
        assert_eq!(p.exit(), None);
        let exit = Exit {
            status: 137,
            at: SystemTime::UNIX_EPOCH,
        };
        p.set_exited(exit);
        let seen = *rx.wait_for(Option::is_some).await.unwrap();
        assert_eq!(seen, Some(exit));
        assert_eq!(p.status, Status::STOPPED);
    }

    #[test]
    fn timestamps_are_unix_time() {
        let t = timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7));
        assert_eq!((t.seconds, t.nanos), (5, 7));
    }
}

//! The OCI lifecycle of a container and its rules, in one place: which operation each status
//! allows, and runc's wording when it does not. The CLI applies a rule to the status on disk to
//! fail fast (the monitor may be gone: then the container is stopped), and the monitor applies
//! the same rule to its own status, which is the truth while it lives.
//!
//! `creating` is ours, not runc's: a VM takes seconds to boot where runc's `create` takes
//! milliseconds, so callers written against runc may come while it lasts. Operations on a
//! creating container wait (in the monitor) until creation has ended, then apply the rules.

use serde::{Deserialize, Serialize};

use crate::error::{HasKind, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// An operation the status does not allow, in runc's words (Docker, podman and containerd
/// match some of them: "container not running", "cannot exec in a stopped container").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartOther(Status),
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("cannot exec in a paused container")]
    ExecPaused,
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteLive { id: String, status: Status },
    /// The container was still being created when the wait for it ran out.
    #[error("container is still being created after {0} s")]
    StillCreating(u64),
}

impl HasKind for Refused {
    fn kind(&self) -> Kind {
        match self {
            Refused::StillCreating(_) => Kind::DeadlineExceeded,
            _ => Kind::FailedPrecondition,
        }
    }
}

/// What `delete` must do before removing the container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delete {
    /// Nothing runs: remove.
    Remove,
    /// Kill the container (and its monitor, which ends the VM) first.
    StopFirst,
}

impl Status {
    /// `start`: only a created container. (A creating one is waited for first.)
    pub fn can_start(self) -> Result<(), Refused> {
        match self {
            Status::Created => Ok(()),
            Status::Stopped => Err(Refused::StartStopped),
            Status::Running => Err(Refused::StartRunning),
            other => Err(Refused::StartOther(other)),
        }
    }

    /// `kill`: anything that still has an init (created, running, paused).
    pub fn can_kill(self) -> Result<(), Refused> {
        self.live()
    }

    /// `exec`: a created or running container; runc refuses paused and stopped ones.
    pub fn can_exec(self) -> Result<(), Refused> {
        match self {
            Status::Created | Status::Running | Status::Creating => Ok(()),
            Status::Paused => Err(Refused::ExecPaused),
            Status::Stopped => Err(Refused::ExecStopped),
        }
    }

    /// `pause`: only a running container.
    pub fn can_pause(self) -> Result<(), Refused> {
        match self {
            Status::Running => Ok(()),
            _ => Err(Refused::NotRunning),
        }
    }

    /// `resume`: only a paused container.
    pub fn can_resume(self) -> Result<(), Refused> {
        match self {
            Status::Paused => Ok(()),
            Status::Stopped => Err(Refused::NotRunning),
            _ => Err(Refused::NotPaused),
        }
    }

    /// `update`, `ps`, `events`: anything whose VM still runs.
    pub fn can_inspect(self) -> Result<(), Refused> {
        self.live()
    }

    /// `delete`: a stopped container is removed; a created (or still creating) one is killed
    /// first, as runc does; a running or paused one only with `--force`.
    pub fn can_delete(self, id: &str, force: bool) -> Result<Delete, Refused> {
        match self {
            Status::Stopped => Ok(Delete::Remove),
            Status::Created | Status::Creating => Ok(Delete::StopFirst),
            Status::Running | Status::Paused if force => Ok(Delete::StopFirst),
            status => Err(Refused::DeleteLive {
                id: id.to_string(),
                status,
            }),
        }
    }

    fn live(self) -> Result<(), Refused> {
        match self {
            Status::Stopped => Err(Refused::NotRunning),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 5] = [
        Status::Creating,
        Status::Created,
        Status::Running,
        Status::Paused,
        Status::Stopped,
    ];

    /// The whole table, so a change to one rule shows as a change here.
    #[test]
    fn every_rule_for_every_status() {
        let ok = |r: Result<(), Refused>| r.map_err(|e| e.to_string());
        let table: Vec<_> = ALL
            .iter()
            .map(|s| {
                (
                    *s,
                    ok(s.can_start()),
                    ok(s.can_kill()),
                    ok(s.can_exec()),
                    ok(s.can_pause()),
                    ok(s.can_resume()),
                    ok(s.can_inspect()),
                )
            })
            .collect();
        let e = |m: &str| Err(m.to_string());
        assert_eq!(
            table,
            vec![
                (
                    Status::Creating,
                    e("cannot start a container in the creating state"),
                    Ok(()),
                    Ok(()),
                    e("container not running"),
                    e("container not paused"),
                    Ok(())
                ),
                (
                    Status::Created,
                    Ok(()),
                    Ok(()),
                    Ok(()),
                    e("container not running"),
                    e("container not paused"),
                    Ok(())
                ),
                (
                    Status::Running,
                    e("cannot start an already running container"),
                    Ok(()),
                    Ok(()),
                    Ok(()),
                    e("container not paused"),
                    Ok(())
                ),
                (
                    Status::Paused,
                    e("cannot start a container in the paused state"),
                    Ok(()),
                    e("cannot exec in a paused container"),
                    e("container not running"),
                    Ok(()),
                    Ok(())
                ),
                (
                    Status::Stopped,
                    e("cannot start a container that has stopped"),
                    e("container not running"),
                    e("cannot exec in a stopped container"),
                    e("container not running"),
                    e("container not running"),
                    e("container not running")
                ),
            ]
        );
    }

    #[test]
    fn delete_kills_created_containers_and_needs_force_for_live_ones() {
        assert_eq!(Status::Stopped.can_delete("c", false), Ok(Delete::Remove));
        assert_eq!(
            Status::Created.can_delete("c", false),
            Ok(Delete::StopFirst)
        );
        assert_eq!(
            Status::Creating.can_delete("c", false),
            Ok(Delete::StopFirst)
        );
        assert_eq!(Status::Running.can_delete("c", true), Ok(Delete::StopFirst));
        assert_eq!(
            Status::Paused
                .can_delete("c", false)
                .unwrap_err()
                .to_string(),
            "cannot delete container c that is not stopped: paused"
        );
    }

    #[test]
    fn refusals_are_precondition_failures() {
        assert_eq!(Refused::NotRunning.kind(), Kind::FailedPrecondition);
        assert_eq!(Refused::StillCreating(180).kind(), Kind::DeadlineExceeded);
    }
}

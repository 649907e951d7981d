//! The stdio a new process gets: the child's ends of the pipes, or the slave of its terminal.
//!
//! The agent creates these (the parent ends stay with the agent, which relays them to the host's
//! stream connections) and hands them to whoever spawns the process: the agent's own spawner for
//! plain guest processes, the container module for a container's init and for exec. The spawner
//! installs them as fds 0, 1, 2 of the child and drops its copies once the child is running, so
//! the agent sees EOF when the process (and everything it forked) is done with them.

use std::os::fd::OwnedFd;

/// The child's side of its standard streams.
#[derive(Debug)]
pub enum Stdio {
    /// One fd per stream. `None`: the host attaches no stream; the child gets `/dev/null`.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// The slave side of a fresh pseudo-terminal: fds 0, 1 and 2 and the controlling terminal
    /// of the child (which must start a new session and `TIOCSCTTY` it).
    Terminal(OwnedFd),
}

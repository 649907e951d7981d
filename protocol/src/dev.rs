//! What the agent makes in a container's `/dev` when no mount provides it, shared with the shim,
//! which makes the same entries on the host beforehand where the guest cannot (a read-only root
//! without a `/dev` mount).

use std::ffi::CStr;

/// The device nodes runc creates in every container: (name in `/dev`, major, minor).
pub const DEFAULT_NODES: [(&CStr, u32, u32); 6] = [
    (c"null", 1, 3),
    (c"zero", 1, 5),
    (c"full", 1, 7),
    (c"random", 1, 8),
    (c"urandom", 1, 9),
    (c"tty", 5, 0),
];

/// Symlinks in `/dev`: (name, target).
pub const LINKS: [(&CStr, &CStr); 5] = [
    (c"fd", c"/proc/self/fd"),
    (c"stdin", c"/proc/self/fd/0"),
    (c"stdout", c"/proc/self/fd/1"),
    (c"stderr", c"/proc/self/fd/2"),
    (c"ptmx", c"pts/ptmx"),
];

/// Directories in `/dev` that the agent makes unless the spec mounts something there.
pub const DIRS: [&CStr; 2] = [c"pts", c"shm"];

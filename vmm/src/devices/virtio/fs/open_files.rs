//! The cap on host file descriptors one share holds for its guest.
//!
//! `PassthroughFs` keeps an `O_PATH` fd for every inode the guest knows (from the LOOKUP, CREATE,
//! MKNOD, MKDIR, SYMLINK, LINK or READDIRPLUS entry that told it, until FORGET) and one fd per
//! open handle. A guest that creates or looks up files without end would fill the VMM's fd table
//! — it is the monitor's, shared with its control socket, vsock and stdio — up to the process's
//! hard limit (a million under Docker), pinning host kernel memory for each. The crate exposes
//! no count, so this mirrors FUSE's own bookkeeping: each entry the guest receives adds one
//! reference to its inode, FORGET removes what it names, a handle lives from OPEN/CREATE/OPENDIR
//! to RELEASE/RELEASEDIR. Inodes the guest already knows always stay reachable (a revalidating
//! LOOKUP must not fail at the cap); what the cap refuses is a new one, and new handles, with
//! `ENFILE`.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

type Inode = u64;

/// Live inodes (with the guest's reference counts) and handles of one share.
#[derive(Debug)]
pub struct OpenFiles {
    cap: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    inodes: HashMap<Inode, u64>,
    handles: usize,
}

impl Counts {
    fn total(&self) -> usize {
        self.inodes.len() + self.handles
    }
}

fn enfile() -> io::Error {
    io::Error::from_raw_os_error(libc::ENFILE)
}

impl OpenFiles {
    /// At most `cap` inodes and handles together (`usize::MAX`: no cap beyond the fd limit).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before an operation that always makes `needed` new inodes or handles (CREATE: two).
    pub fn check_room(&self, needed: usize) -> io::Result<()> {
        if self.counts().total().saturating_add(needed) > self.cap {
            return Err(enfile());
        }
        Ok(())
    }

    /// The guest was told about `inode` (0 is a negative entry: nothing). A new inode past the
    /// cap is refused: the caller must then drop the crate's reference and fail.
    pub fn entry(&self, inode: Inode) -> io::Result<()> {
        if inode == 0 {
            return Ok(());
        }
        let mut c = self.counts();
        if !c.inodes.contains_key(&inode) && c.total() >= self.cap {
            return Err(enfile());
        }
        *c.inodes.entry(inode).or_insert(0) += 1;
        Ok(())
    }

    /// FORGET of `count` references.
    pub fn forget(&self, inode: Inode, count: u64) {
        let mut c = self.counts();
        if let Some(refs) = c.inodes.get_mut(&inode) {
            *refs = refs.saturating_sub(count);
            if *refs == 0 {
                c.inodes.remove(&inode);
            }
        }
    }

    /// A handle was opened.
    pub fn opened(&self) {
        self.counts().handles += 1;
    }

    /// A handle was released.
    pub fn released(&self) {
        let mut c = self.counts();
        c.handles = c.handles.saturating_sub(1);
    }

    /// Forgets everything (the guest's session ended: DESTROY, a device reset).
    pub fn reset(&self) {
        *self.counts() = Counts::default();
    }

    /// Inodes and handles held now.
    pub fn held(&self) -> usize {
        self.counts().total()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_inodes_and_handles_stop_at_the_cap_known_ones_do_not() {
        let f = OpenFiles::new(3);
        f.entry(1).unwrap(); // the root, known from INIT's first lookup
        f.entry(10).unwrap();
        f.entry(10).unwrap(); // a second reference to a known inode
        f.opened();
        assert_eq!(f.held(), 3);
        assert!(f.check_room(1).is_err());
        assert_eq!(f.entry(11).unwrap_err().raw_os_error(), Some(libc::ENFILE));
        f.entry(10).unwrap(); // revalidating a known inode at the cap
        f.entry(0).unwrap(); // negative entries hold nothing
        f.forget(10, 2);
        assert_eq!(f.held(), 3, "one reference left");
        f.forget(10, 1);
        f.forget(99, 5); // a FORGET of something unknown changes nothing
        assert_eq!(f.held(), 2);
        f.entry(11).unwrap();
        f.released();
        f.released(); // never below zero
        assert_eq!(f.held(), 2);
        f.check_room(1).unwrap();
        assert!(f.check_room(2).is_err());
        f.reset();
        assert_eq!(f.held(), 0);
    }
}

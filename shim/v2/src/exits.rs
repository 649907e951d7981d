//! Exit statuses of this shim's children, by pid.
//!
//! The shim is a child subreaper and the containerd-shim crate reaps every child on SIGCHLD
//! (`waitpid(-1)`), so `Child::wait` can never be used here: a status is taken from the crate's
//! exit notifications instead. One subscription, made before the first child is spawned, keeps
//! every status until someone asks for it, so an exit that comes before its waiter (a runtime
//! call that ends at once, a container whose init dies before `create` returned its pid) is
//! not lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::monitor::{Subject, Topic};
use tokio::sync::Notify;

/// Statuses nobody asked for are kept up to this many, oldest dropped first: processes of
/// the runtime the shim never waits on (a daemon's intermediate fork) must not grow it forever.
const KEPT: usize = 4096;

#[derive(Default)]
struct Table {
    statuses: HashMap<u32, i32>,
    order: VecDeque<u32>,
}

#[derive(Default)]
pub struct Exits {
    table: Mutex<Table>,
    changed: Notify,
}

impl Exits {
    /// Subscribes to the crate's exit notifications and starts recording them.
    pub async fn start() -> containerd_shim::Result<Arc<Exits>> {
        let mut sub = monitor_subscribe(Topic::Pid).await?;
        let exits = Arc::new(Exits::default());
        let recorder = Arc::clone(&exits);
        tokio::spawn(async move {
            while let Some(e) = sub.rx.recv().await {
                if let Subject::Pid(pid) = e.subject {
                    if let Ok(pid) = u32::try_from(pid) {
                        recorder.record(pid, e.exit_code);
                    }
                }
            }
        });
        Ok(exits)
    }

    fn record(&self, pid: u32, status: i32) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if t.statuses.insert(pid, status).is_none() {
            t.order.push_back(pid);
        }
        while t.order.len() > KEPT {
            if let Some(old) = t.order.pop_front() {
                t.statuses.remove(&old);
            }
        }
        drop(t);
        self.changed.notify_waiters();
    }

    fn take(&self, pid: u32) -> Option<i32> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let status = t.statuses.remove(&pid)?;
        t.order.retain(|&p| p != pid);
        Some(status)
    }

    /// The exit status of `pid` (128 + signal for a signalled process), once it has ended.
    pub async fn wait(&self, pid: u32) -> i32 {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a record between the two still wakes us.
            changed.as_mut().enable();
            if let Some(status) = self.take(pid) {
                return status;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exit_before_its_waiter_is_kept() {
        let exits = Exits::default();
        exits.record(10, 3);
        assert_eq!(exits.wait(10).await, 3);
        assert_eq!(exits.take(10), None);
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_its_own_pid() {
        let exits = Arc::new(Exits::default());
        let w = Arc::clone(&exits);
        let waiter = tokio::spawn(async move { w.wait(7).await });
        tokio::task::yield_now().await;
        exits.record(8, 1);
        exits.record(7, 137);
        assert_eq!(waiter.await.unwrap(), 137);
        assert_eq!(exits.take(8), Some(1));
    }

    #[test]
    fn unclaimed_statuses_are_capped() {
        let exits = Exits::default();
        for pid in 0..(KEPT as u32 + 10) {
            exits.record(pid, 0);
        }
        assert_eq!(exits.take(0), None);
        assert_eq!(exits.take(KEPT as u32 + 9), Some(0));
    }
}

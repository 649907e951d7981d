//! [`Monitor::lock_down`] with a sandbox that records what the monitor asks of it: a jail that
//! cannot be entered kills the init and stays failed; one that can is entered once. Each case
//! runs as root on a thread with its own mount namespace (as the monitor's set-up leaves its
//! main thread), so the test process keeps its root.

use std::cell::RefCell;
use std::path::Path;

use oci_spec::runtime::{LinuxResources, Process};
use serde_json::Value;

use super::*;
use crate::sandbox::SandboxError;
use crate::stats::GuestStats;
use bulkhead_test_support::{require, Need};

/// A sandbox that runs nothing and records the signals sent to the init.
struct Recorder {
    confinable: bool,
    kills: RefCell<Vec<(i32, bool)>>,
}

impl Sandbox for Recorder {
    async fn create(&self, _: &Value, _: Stdio) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn start(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn kill(&self, target: Target<'_>, signal: i32, all: bool) -> Result<(), SandboxError> {
        if target == Target::Init {
            self.kills.borrow_mut().push((signal, all));
        }
        Ok(())
    }
    async fn wait(&self, _: Target<'_>) -> Result<i32, SandboxError> {
        std::future::pending().await
    }
    async fn exec(&self, _: &str, _: &Process, _: Stdio) -> Result<(), SandboxError> {
        Err(SandboxError::Unsupported("exec"))
    }
    async fn resize(&self, _: Target<'_>, _: Option<(u16, u16)>) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn pids(&self) -> Result<Vec<i32>, SandboxError> {
        Ok(Vec::new())
    }
    async fn pause(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn resume(&self) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn update(&self, _: &LinuxResources) -> Result<(), SandboxError> {
        Ok(())
    }
    async fn stats(&self) -> Result<GuestStats, SandboxError> {
        Err(SandboxError::Unsupported("stats"))
    }
    fn confinable(&self) -> bool {
        self.confinable
    }
    fn init_exited(&self) -> bool {
        false
    }
    async fn power_off(&self) {}
    async fn shutdown(&self) -> Option<String> {
        None
    }
}

/// A created container's monitor over a [`Recorder`], its state and logs under `dir`.
fn monitor(dir: &Path, confinable: bool) -> Monitor<Recorder> {
    let bundle_dir = dir.join("bundle");
    crate::spec::tests::write_bundle(&bundle_dir, &crate::spec::tests::minimal());
    let state_dir = Store::new(dir.join("root")).create_dir("c1").unwrap();
    std::fs::write(state_dir.join("state.json"), "{}").unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let config = Config {
        log_dir: dir.join("logs"),
        ..Config::default()
    };
    let plan = Plan {
        id: "c1".into(),
        bundle: Bundle::load(&bundle_dir).unwrap(),
        config,
        size: VmSize {
            vcpus: 1,
            memory_mib: 128,
        },
        store: Store::new(dir.join("root")),
        state_dir,
        stdio: StdioPlan::Inherited,
        cgroup: "c1".into(),
        created: String::new(),
    };
    let sandbox = OnceCell::new();
    let _ = sandbox.set(Recorder {
        confinable,
        kills: RefCell::new(Vec::new()),
    });
    Monitor::new(plan, Status::Created, sandbox)
}

/// Runs `f` on the monitor's runtime, on a thread with its own mount namespace.
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS | nix::sched::CloneFlags::CLONE_NEWNS)
            .unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_SLAVE | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_failed_lock_down_kills_the_init_and_stays_failed() {
    if !require(&[Need::Root]) {
        return;
    }
    let _one = super::jail::one_jail_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (first, second, kills, lock) = on_own_thread(move || {
        let m = monitor(&dir, true);
        // A directory of the host held open: the jail refuses to be entered with it.
        let _etc = std::fs::File::open("/etc").unwrap();
        block_on(async {
            let first = m.lock_down().await.unwrap_err().message;
            let second = m.lock_down().await.unwrap_err().message;
            let kills = m.sandbox.get().unwrap().kills.borrow().clone();
            (first, second, kills, m.lock.get())
        })
    });
    assert!(
        first.starts_with("container c1: lock-down failed: "),
        "{first}"
    );
    assert!(first.contains("/etc outside the jail"), "{first}");
    assert!(!first.contains('\n'));
    assert_eq!(kills, [(libc::SIGKILL, true)], "the init is killed, once");
    assert_eq!(second, "monitor lock-down failed", "no second attempt");
    assert_eq!(lock, Lock::Failed);
}

#[test]
fn a_lock_down_happens_once_and_only_for_a_confinable_sandbox() {
    if !require(&[Need::Root]) {
        return;
    }
    let _one = super::jail::one_jail_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (etc_seen, again, kills, lock, state_saved) = on_own_thread(move || {
        let m = monitor(&dir, true);
        block_on(async {
            m.lock_down().await.unwrap();
            let etc_seen = Path::new("/etc").exists();
            // Idempotent: a second call (an exec after the start) changes nothing.
            let again = m.lock_down().await.is_ok();
            // The state store still works from the jail: its live part, and only that.
            m.set_status(Status::Running);
            let state_saved = std::fs::read_to_string(dir.join("root/c1/live/status.json"))
                .is_ok_and(|s| s.contains("running"))
                && std::fs::write(dir.join("root/c1/state.json"), "{}")
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EROFS));
            let kills = m.sandbox.get().unwrap().kills.borrow().len();
            (etc_seen, again, kills, m.lock.get(), state_saved)
        })
    });
    assert!(!etc_seen, "the monitor is in its jail");
    assert!(again && state_saved);
    assert_eq!((kills, lock), (0, Lock::Locked));

    // A sandbox whose processes are host processes (tests) keeps the host in view.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (etc_seen, lock) = on_own_thread(move || {
        let m = monitor(&dir, false);
        block_on(async {
            m.lock_down().await.unwrap();
            (Path::new("/etc").exists(), m.lock.get())
        })
    });
    assert!(etc_seen);
    assert_eq!(lock, Lock::Locked);
}

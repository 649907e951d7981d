//! The issue-5 cases for any docker-compatible engine CLI and runtime, each a named trial.
//!
//! Cases that only read what one container printed share that container (one guest boot for
//! output and exit code; one for `-e`, `-w`, `-u`, `-v` and `uname -r`; one for `--read-only`
//! and `--cap-drop`), and the `exec` cases share one detached container: a Bulkhead container is a VM boot, tens of seconds on
//! PVM hosts. No case waits for a fixed time or measures one: each waits for what the
//! container says, bounded by a generous timeout that only turns a hang into a failure.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::Trial;

use super::suite::{half_trials, Shared};
use super::{text, EngineCli, COMMAND_TIMEOUT};

/// What an engine gives the cases.
pub trait Engine: Send + Sync + 'static {
    /// Its docker-compatible CLI.
    fn cli(&self) -> EngineCli;
}

/// One half of a suite: one runtime, the containers its cases share.
pub struct Half {
    /// What the engine's `--runtime` takes for it (a name or a path).
    pub runtime: String,
    pub image: &'static str,
    /// The container must see a kernel other than the host's.
    pub guest_kernel: bool,
    /// The one run whose output and exit code 3 are checked.
    printed: OnceLock<Output>,
    /// The one run that `-e`, `-w`, `-u`, `-v` and `uname -r` are read from.
    flags: OnceLock<Output>,
    /// The one `--read-only --cap-drop ALL` run.
    locked_down: OnceLock<Output>,
    /// The detached container the `exec` cases use, until `kill` removes it.
    detached: Mutex<Option<String>>,
}

/// One case: its name and what it checks.
type Case = (&'static str, fn(&Ctx));

/// Everything, in the order it runs.
pub const CASES: &[Case] = &[
    ("run_prints_output", printed_output),
    ("run_reports_exit_code_3", exit_code_3),
    ("run_reports_exit_code_0", exit_code_0),
    ("run_of_a_missing_command_exits_127", missing_command_127),
    ("flag_e_sets_the_environment", flag_e),
    ("flag_w_sets_the_working_directory", flag_w),
    ("flag_u_sets_uid_and_gid", flag_u),
    ("uname_shows_the_expected_kernel", kernel),
    ("volume_is_shared_both_ways", volume_both_ways),
    ("read_only_root_refuses_writes", read_only_root),
    ("cap_drop_all_leaves_no_capability", cap_drop_all),
    ("pids_limit_stops_the_third_process", pids_limit),
    ("memory_limit_is_enforced_by_an_oom_kill_137", memory_limit),
    ("run_d_output_reaches_logs", detached_logs),
    ("exec_prints_output", exec_output),
    ("exec_reports_exit_code_4", exec_exit_code),
    ("exec_it_gets_a_terminal", exec_it),
    (
        "without_a_pids_limit_the_same_forks_succeed",
        pids_unlimited,
    ),
    ("kill_then_wait_reports_137", kill_137),
    ("run_it_gets_the_container_terminal", run_it),
    ("stop_sends_sigterm_first", stop_sigterm),
    ("stop_sends_sigkill_after_its_timeout", stop_sigkill),
];

/// The trials of one half, named `<prefix>::<case>`.
pub fn trials<E: Engine>(
    prefix: &str,
    shared: &Arc<Shared<E>>,
    runtime: fn(&E) -> String,
    image: &'static str,
    guest_kernel: bool,
) -> Vec<Trial> {
    let half = move |engine: &E| Half {
        runtime: runtime(engine),
        image,
        guest_kernel,
        printed: OnceLock::new(),
        flags: OnceLock::new(),
        locked_down: OnceLock::new(),
        detached: Mutex::new(None),
    };
    let cases = CASES.iter().map(|&(name, case)| {
        let run = move |engine: &E, half: &Half| {
            case(&Ctx {
                e: &engine.cli(),
                half,
            })
        };
        (name, run)
    });
    half_trials(prefix, shared, half, cases)
}

/// What a case runs with.
pub struct Ctx<'a> {
    pub e: &'a EngineCli,
    pub half: &'a Half,
}

impl Ctx<'_> {
    fn rt(&self) -> &str {
        &self.half.runtime
    }

    fn image(&self) -> &str {
        self.half.image
    }

    /// `run --rm ARGS…`.
    fn run(&self, args: &[&str]) -> Output {
        self.e
            .output(self.rt(), &self.e.run_args(self.rt(), "--rm", args))
    }

    fn code(&self, args: &[&str]) -> Option<i32> {
        self.run(args).status.code()
    }

    /// An engine command that must succeed; its trimmed stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.e.output(self.rt(), args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.rt(),
            text(&o.stderr)
        );
        text(&o.stdout).trim().to_string()
    }

    /// `run -d ARGS…`; the container's id.
    fn detached(&self, args: &[&str]) -> String {
        let o = self
            .e
            .output(self.rt(), &self.e.run_args(self.rt(), "-d", args));
        assert!(
            o.status.success(),
            "{} run -d {args:?}: {}",
            self.rt(),
            text(&o.stderr)
        );
        text(&o.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until container `id`'s log has the line `line` (what the container prints once
    /// it is ready for the next step), bounded by [`COMMAND_TIMEOUT`].
    fn wait_for_log_line(&self, id: &str, line: &str) {
        let t = Instant::now();
        loop {
            let logs = self.ok(&["logs", id]);
            if logs.lines().any(|l| l == line) {
                return;
            }
            assert!(
                t.elapsed() < COMMAND_TIMEOUT,
                "container {id} did not print {line:?}; logs: {logs:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The shared detached container (see [`detached_logs`]).
    fn detached_id(&self) -> String {
        self.half
            .detached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("no detached container: run_d_output_reaches_logs failed or did not run")
    }
}

/// The one container whose output and exit status are checked: `echo hi; exit 3`.
fn printed<'a>(c: &'a Ctx) -> &'a Output {
    c.half
        .printed
        .get_or_init(|| c.run(&[c.image(), "sh", "-c", "echo hi; exit 3"]))
}

fn printed_output(c: &Ctx) {
    let o = printed(c);
    assert_eq!(text(&o.stdout), "hi\n", "{}", text(&o.stderr));
}

fn exit_code_3(c: &Ctx) {
    let o = printed(c);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}

/// The flags run ends with a command that succeeded.
fn exit_code_0(c: &Ctx) {
    let o = flags_run(c);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}

fn missing_command_127(c: &Ctx) {
    assert_eq!(c.code(&[c.image(), "no-such-command"]), Some(127));
}

/// The volume of the flags run: a host directory anyone may write to, with a file in it.
fn volume(c: &Ctx) -> PathBuf {
    c.e.scratch
        .join(format!("vol-{}", c.rt().replace('/', "_")))
}

/// The one container `-e`, `-w`, `-u`, `-v` and `uname -r` are read from: `key=value` lines.
/// It reads the volume's file and writes one back as uid 1000.
fn flags_run<'a>(c: &'a Ctx) -> &'a Output {
    c.half.flags.get_or_init(|| {
        let vol = volume(c);
        fs::create_dir_all(&vol).expect("volume directory");
        fs::set_permissions(&vol, fs::Permissions::from_mode(0o777)).expect("chmod the volume");
        fs::write(vol.join("from-host"), "host data\n").expect("write the volume");
        let spec = format!("{}:/data", vol.display());
        let script = "echo foo=$FOO; echo cwd=$(pwd); echo ids=$(id -u):$(id -g); \
                      echo release=$(uname -r); echo volume=$(cat /data/from-host); \
                      echo guest data > /data/from-guest && echo wrote=yes";
        c.run(&[
            "-e",
            "FOO=bar",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "-v",
            &spec,
            c.image(),
            "sh",
            "-c",
            script,
        ])
    })
}

/// The value of `key=` in the flags run, which must have succeeded with exactly its 6 lines.
fn flag_value(c: &Ctx, key: &str) -> String {
    let o = flags_run(c);
    let out = text(&o.stdout);
    assert!(
        o.status.success() && out.lines().count() == 6,
        "{:?}: {out:?} {}",
        o.status,
        text(&o.stderr)
    );
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .to_string()
}

fn flag_e(c: &Ctx) {
    assert_eq!(flag_value(c, "foo"), "bar");
}

fn flag_w(c: &Ctx) {
    assert_eq!(flag_value(c, "cwd"), "/tmp");
}

fn flag_u(c: &Ctx) {
    assert_eq!(flag_value(c, "ids"), "1000:1000");
}

fn kernel(c: &Ctx) {
    let host = text(
        &Command::new("uname")
            .arg("-r")
            .output()
            .expect("uname")
            .stdout,
    );
    let release = flag_value(c, "release");
    assert!(!release.is_empty());
    assert_eq!(
        release != host.trim(),
        c.half.guest_kernel,
        "uname -r: {release}, host {host}"
    );
}

/// `-v` both ways: the host's file read, the guest's file written (as uid 1000).
fn volume_both_ways(c: &Ctx) {
    assert_eq!(flag_value(c, "volume"), "host data");
    assert_eq!(flag_value(c, "wrote"), "yes");
    assert_eq!(
        fs::read_to_string(volume(c).join("from-guest")).expect("the guest's file"),
        "guest data\n"
    );
}

/// The one `--read-only --cap-drop ALL` container: prints its effective capabilities, then
/// tries to write to its root (as uid 0, which owns `/`: only the read-only mount refuses).
fn locked_down<'a>(c: &'a Ctx) -> &'a Output {
    c.half.locked_down.get_or_init(|| {
        c.run(&[
            "--read-only",
            "--cap-drop",
            "ALL",
            c.image(),
            "sh",
            "-c",
            "grep CapEff /proc/self/status; touch /x",
        ])
    })
}

fn read_only_root(c: &Ctx) {
    let o = locked_down(c);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "touch: /x: Read-only file system\n",
        "stdout: {}",
        text(&o.stdout)
    );
}

fn cap_drop_all(c: &Ctx) {
    let o = locked_down(c);
    assert_eq!(
        text(&o.stdout),
        "CapEff:\t0000000000000000\n",
        "{}",
        text(&o.stderr)
    );
}

/// Starts 4 background processes and says which started; the same command with and without a
/// pids limit. Their output goes nowhere so an `exec` of it does not wait for them. (Few: each
/// fork and exec costs ~1 s of the VM's vCPU on PVM hosts.)
const FORKS: &str = "for i in 1 2 3 4; do \
                     sleep 1000 </dev/null >/dev/null 2>&1 & echo started $i; done";

/// `--pids-limit 3`: the shell and 2 children; the 3rd fork fails with EAGAIN, which busybox's
/// shell reports before it gives up (exit 2).
fn pids_limit(c: &Ctx) {
    let o = c.run(&["--pids-limit", "3", c.image(), "sh", "-c", FORKS]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(
        out, "started 1\nstarted 2\n",
        "pids limit not what stopped the forks; stderr: {err}"
    );
    assert!(
        err.contains("can't fork: Resource temporarily unavailable"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(2), "{err}");
}

/// The same forks without the limit, in the detached container: all 4 start.
fn pids_unlimited(c: &Ctx) {
    let id = c.detached_id();
    let o = c.e.output(c.rt(), &["exec", &id, "sh", "-c", FORKS]);
    let want: String = (1..=4).map(|i| format!("started {i}\n")).collect();
    assert_eq!(text(&o.stdout), want, "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
}

/// One read buffer twice the limit that the kernel fills: the fewest guest-kernel
/// instructions per charged page (a guest's page faults are emulated on PVM hosts). The
/// 48 MiB-over-32 MiB run is in `bench/docker-run.sh`.
///
/// 137 here is the same whether the guest's OOM killer ended the process or the host killed
/// the whole VM; `tests/monitor_vm.rs` tells them apart through the monitor's log.
fn memory_limit(c: &Ctx) {
    let hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"];
    let o = c.run(&[&["--memory", "8m", c.image()][..], &hog].concat());
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
}

/// `run -d`: its first line reaches `logs`; the container stays for the `exec` cases.
fn detached_logs(c: &Ctx) {
    let id = c.detached(&[c.image(), "sh", "-c", "echo started; sleep 1000"]);
    *c.half.detached.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
    c.wait_for_log_line(&id, "started");
}

fn exec_output(c: &Ctx) {
    let id = c.detached_id();
    assert_eq!(c.ok(&["exec", &id, "echo", "in-exec"]), "in-exec");
}

fn exec_exit_code(c: &Ctx) {
    let id = c.detached_id();
    let o = c.e.output(c.rt(), &["exec", &id, "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
}

fn exec_it(c: &Ctx) {
    let id = c.detached_id();
    let (s, err) = c.e.in_terminal(
        c.rt(),
        &["exec", "-it", &id, "sh", "-c", "tty; echo tty-ok"],
    );
    assert!(
        s.contains("/dev/pts/") && s.contains("tty-ok"),
        "exec -it: {s} {err}"
    );
}

fn kill_137(c: &Ctx) {
    let id = c.detached_id();
    c.ok(&["kill", &id]);
    assert_eq!(c.ok(&["wait", &id]), "137");
    c.ok(&["rm", &id]);
    *c.half.detached.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The init's terminal is a /dev/pts/N of the container, /dev/console a bind of it.
fn run_it(c: &Ctx) {
    let script = "tty; [ /dev/console -ef \"$(tty)\" ] && echo console-ok; echo run-tty-ok";
    let run_it =
        c.e.run_args(c.rt(), "--rm", &["-it", c.image(), "sh", "-c", script]);
    let (s, err) = c.e.in_terminal(c.rt(), &run_it);
    assert!(
        s.contains("/dev/pts/") && s.contains("console-ok") && s.contains("run-tty-ok"),
        "run -it: {s} {err}"
    );
}

/// `stop` sends SIGTERM, which a trap honours: exit 0, not the SIGKILL's 137. Sent only once
/// the container says its trap is set — before that a PID 1 ignores SIGTERM. The shell waits
/// in `wait`, which a trapped signal interrupts at once (a `sleep 1` loop would cost a fork a
/// second, ~0.5 s of the VM's one vCPU on PVM hosts).
fn stop_sigterm(c: &Ctx) {
    let id = c.detached(&[
        c.image(),
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 1000 & echo trap-set; wait",
    ]);
    c.wait_for_log_line(&id, "trap-set");
    // The timeout only bounds a failure: the KILL after it would make the status 137.
    c.ok(&["stop", "-t", "300", &id]);
    assert_eq!(c.ok(&["wait", &id]), "0", "SIGTERM not honoured");
    c.ok(&["rm", &id]);
}

/// …and SIGKILL after the timeout: a PID 1 without a handler ignores SIGTERM.
fn stop_sigkill(c: &Ctx) {
    let id = c.detached(&[c.image(), "sleep", "1000"]);
    c.ok(&["stop", "-t", "2", &id]);
    assert_eq!(c.ok(&["wait", &id]), "137");
    c.ok(&["rm", &id]);
}

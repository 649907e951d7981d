//! Command line of `bulkhead`: runc's global flags and subcommands, parsed with clap.
//!
//! Engines call runtimes with runc's exact flag spellings, and put flags on either side of the
//! container id (`delete --force ID`, `kill ID 9`, `exec --detach ID --pid-file F cmd`), so every
//! flag is accepted before or after positional arguments. Flags runc accepts but that do not apply
//! to a VM (`--no-pivot`, `--no-new-keyring`, `--criu`, …) are accepted and ignored.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default state directory, like runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/bulkhead";

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    disable_version_flag = true,
    about = "Run OCI containers in micro-VMs"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    /// Print the version and the OCI spec version, like runc.
    #[arg(short = 'v', long = "version", global = true)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Directory holding the containers' state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// File that log lines are appended to.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of the log lines.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug messages too.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Read `linux.cgroupsPath` in systemd's `slice:prefix:name` form.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (`true|false|auto`); Bulkhead needs root.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container: boot its VM and prepare the init process.
    Create(CreateArgs),
    /// Start the init process of a created container.
    Start(IdArg),
    /// Print the OCI state of a container as JSON.
    State(IdArg),
    /// Send a signal to the container's init (or all) processes.
    Kill(KillArgs),
    /// Delete a stopped container (or any, with --force).
    Delete(DeleteArgs),
    /// Create and start a container, in the foreground unless --detach.
    Run(RunArgs),
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the processes running in a container.
    Ps(PsArgs),
    /// List the containers under --root.
    List(ListArgs),
    /// Freeze all processes of a container.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Print the features this runtime supports as JSON.
    Features,
    /// Write a default config.json into a bundle.
    Spec(SpecArgs),
    /// Change the resource limits of a running container.
    Update(UpdateArgs),
    /// Print container events and resource statistics.
    Events(EventsArgs),
    /// Manage the templates (snapshots of a booted guest) that container VMs start from.
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List the templates.
    #[command(alias = "list")]
    Ls {
        #[arg(short = 'f', long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Remove templates (the next container of their kind makes them again).
    Rm {
        /// Keys as `ls` shows them.
        keys: Vec<String>,
        /// Remove every template.
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Make the template for a VM size (default: the configured one) now, so that the first
    /// container does not wait for it.
    Build {
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long = "memory-mib")]
        memory_mib: Option<u32>,
        /// Make it again even if it exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct IdArg {
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    pub id: String,
    /// Bundle directory (holding config.json); default: the current directory.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the terminal's master fd.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File the sandbox monitor's pid is written to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Pass this many extra fds (3…) through; accepted, not forwarded to the guest.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility; the guest always pivots.
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility (containerd's go-runc may pass it).
    #[arg(short = 'd', long, hide = true)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    pub id: String,
    /// Signal name (with or without SIG) or number; default SIGTERM.
    pub signal: Option<String>,
    /// Signal every process of the container, not only init.
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub id: String,
    /// Kill the container first if it is still running.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Keep the container's state after it exits (runc --keep).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    pub id: String,
    /// Command and arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// OCI process JSON file describing the process to run.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    /// Leave an exec proxy behind and return at once.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// File the exec proxy's pid is written to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the terminal's master fd.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Extra environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// User as uid[:gid].
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Additional group ids.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Add a capability (CAP_…).
    #[arg(short = 'c', long = "cap")]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process.
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Accepted for runc compatibility; extra fds are not forwarded to the guest.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted for runc compatibility.
    #[arg(long = "process-label", hide = true)]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    pub cgroup: Option<String>,
    /// Accepted for runc compatibility.
    #[arg(long = "ignore-paused", hide = true)]
    pub ignore_paused: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    pub id: String,
    /// Extra arguments for the guest's ps (table format only).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short = 'f', long, value_enum, default_value = "table")]
    pub format: ListFormat,
    /// Print only the container ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Bundle directory to write config.json into.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for rootless containers: set from the global `--rootless`, which clap also takes
    /// after `spec` (runc has both; two `--rootless` flags would collide in clap).
    #[arg(skip)]
    pub rootless: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// OCI `linux.resources` JSON file, or `-` for stdin.
    #[arg(short = 'r', long)]
    pub resources: Option<String>,
    /// Memory limit (bytes, or with k/m/g suffix).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    #[arg(long = "blkio-weight", hide = true)]
    pub blkio_weight: Option<u16>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    pub id: String,
    /// Print one statistics event and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between statistics events, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "5s")]
    pub interval: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["bulkhead"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks duplicate flags and type mismatches only here (or at a panic at runtime).
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn spec_takes_rootless_before_or_after_the_command() {
        for args in [&["spec"][..], &["spec", "-b", "/b"]] {
            let cli = parse(args);
            assert!(cli.global.rootless.is_none());
            assert!(matches!(cli.command, Some(Command::Spec(_))));
        }
        for args in [&["spec", "--rootless"][..], &["--rootless", "true", "spec"]] {
            assert_eq!(parse(args).global.rootless.as_deref(), Some("true"));
        }
    }

    #[test]
    fn global_flags_and_defaults() {
        let cli = parse(&["state", "c1"]);
        assert_eq!(cli.global.root, PathBuf::from("/run/bulkhead"));
        assert_eq!(cli.global.log_format, LogFormat::Text);
        let cli = parse(&[
            "--root",
            "/r",
            "--log",
            "/l.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "--debug",
            "state",
            "c1",
        ]);
        assert_eq!(cli.global.root, PathBuf::from("/r"));
        assert_eq!(
            cli.global.log.as_deref(),
            Some(std::path::Path::new("/l.json"))
        );
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert!(cli.global.systemd_cgroup && cli.global.debug);
    }

    #[test]
    fn flags_after_the_id() {
        let cli = parse(&["delete", "c1", "--force"]);
        assert!(matches!(
            cli.command,
            Some(Command::Delete(DeleteArgs { force: true, .. }))
        ));
        let cli = parse(&["delete", "--force", "c1"]);
        assert!(matches!(
            cli.command,
            Some(Command::Delete(DeleteArgs { force: true, .. }))
        ));
        let cli = parse(&["create", "c1", "--bundle", "/b", "--pid-file", "/p"]);
        let Some(Command::Create(c)) = cli.command else {
            panic!()
        };
        assert_eq!(c.bundle, PathBuf::from("/b"));
        assert_eq!(c.pid_file, Some(PathBuf::from("/p")));
        // Global flags after the subcommand too.
        let cli = parse(&["state", "c1", "--root", "/x"]);
        assert_eq!(cli.global.root, PathBuf::from("/x"));
    }

    #[test]
    fn kill_forms() {
        let cli = parse(&["kill", "c1", "9"]);
        let Some(Command::Kill(k)) = cli.command else {
            panic!()
        };
        assert_eq!(
            (k.id.as_str(), k.signal.as_deref(), k.all),
            ("c1", Some("9"), false)
        );
        let cli = parse(&["kill", "--all", "c1", "KILL"]);
        let Some(Command::Kill(k)) = cli.command else {
            panic!()
        };
        assert!(k.all);
        assert_eq!(k.signal.as_deref(), Some("KILL"));
        let cli = parse(&["kill", "c1"]);
        let Some(Command::Kill(k)) = cli.command else {
            panic!()
        };
        assert_eq!(k.signal, None);
    }

    #[test]
    fn exec_stops_at_the_command() {
        let cli = parse(&[
            "exec", "-e", "A=1", "--env", "B=2", "-t", "c1", "--cwd", "/tmp", "sh", "-c", "ls -l",
        ]);
        let Some(Command::Exec(e)) = cli.command else {
            panic!()
        };
        assert_eq!(e.id, "c1");
        assert_eq!(e.env, vec!["A=1", "B=2"]);
        assert!(e.tty);
        assert_eq!(e.cwd.as_deref(), Some("/tmp"));
        assert_eq!(e.command, vec!["sh", "-c", "ls -l"]);
        // Flags after the command belong to the command.
        let cli = parse(&["exec", "c1", "ls", "--tty"]);
        let Some(Command::Exec(e)) = cli.command else {
            panic!()
        };
        assert!(!e.tty);
        assert_eq!(e.command, vec!["ls", "--tty"]);
        let cli = parse(&[
            "exec",
            "--process",
            "/p.json",
            "--detach",
            "--pid-file",
            "/pid",
            "c1",
        ]);
        let Some(Command::Exec(e)) = cli.command else {
            panic!()
        };
        assert!(e.detach && e.command.is_empty());
        assert_eq!(e.process, Some(PathBuf::from("/p.json")));
    }

    #[test]
    fn list_ps_and_version() {
        let cli = parse(&["list", "-q", "--format", "json"]);
        let Some(Command::List(l)) = cli.command else {
            panic!()
        };
        assert!(l.quiet && l.format == ListFormat::Json);
        let cli = parse(&["ps", "--format", "json", "c1"]);
        let Some(Command::Ps(p)) = cli.command else {
            panic!()
        };
        assert_eq!(p.format, ListFormat::Json);
        assert!(parse(&["--version"]).version);
        assert!(parse(&["-v"]).version);
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(Cli::try_parse_from(["bulkhead", "start", "--bogus", "c1"]).is_err());
        assert!(Cli::try_parse_from(["bulkhead", "start"]).is_err());
    }
}

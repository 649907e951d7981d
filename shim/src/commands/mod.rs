//! One file per subcommand, each a small function over the library modules.

mod create;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod resume;
mod run;
mod spec;
mod start;
mod state;
mod template;
mod update;
mod version;

use crate::cli::{Cli, Command, GlobalOpts};
use crate::control::{Done, Request};
use crate::error::{HasKind, Kind};
use crate::lifecycle::Refused;
use crate::sandbox::SandboxFactory;
use crate::state::{State, Status, Store};

/// Errors of all commands; each source keeps its own one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Signal(#[from] crate::signal::SignalError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl HasKind for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::State(crate::state::StateError::NotExist(_)) => Kind::NotFound,
            Error::State(crate::state::StateError::Exists(_)) => Kind::AlreadyExists,
            Error::Control(e) => e.kind(),
            Error::Refused(r) => r.kind(),
            Error::Spec(_) | Error::Config(_) | Error::Signal(_) | Error::Usage(_) => {
                Kind::InvalidArgument
            }
            _ => Kind::Internal,
        }
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What every command gets.
pub struct Ctx {
    pub global: GlobalOpts,
    pub store: Store,
}

impl Ctx {
    /// Loads a container's state and its current status.
    fn load(&self, id: &str) -> Result<(State, Status)> {
        let st = self.store.load(id)?;
        let status = st.current_status();
        Ok((st, status))
    }

    /// Loads a container and applies a lifecycle rule to the status on disk, so a stopped
    /// container (whose monitor is gone) gets runc's answer at once. A container that is
    /// still being created is left to its monitor, which waits for the creation to end and
    /// then applies the same rule.
    fn check(
        &self,
        id: &str,
        rule: fn(Status) -> std::result::Result<(), Refused>,
    ) -> Result<State> {
        let (st, status) = self.load(id)?;
        if status != Status::Creating {
            rule(status)?;
        }
        Ok(st)
    }

    /// Sends one request to the container's monitor.
    fn call(&self, id: &str, req: &Request) -> Result<Done> {
        Ok(crate::control::call(&self.store.dir(id)?, req)?)
    }
}

pub fn dispatch<F: SandboxFactory>(cli: Cli, factory: &F) -> Result<i32> {
    if cli.version {
        version::run();
        return Ok(0);
    }
    let ctx = Ctx {
        store: Store::new(cli.global.root.clone()),
        global: cli.global,
    };
    let Some(cmd) = cli.command else {
        return Err(usage("no command given (see --help)"));
    };
    match cmd {
        Command::Create(a) => create::run(&ctx, factory, &a).map(|_| 0),
        Command::Start(a) => start::run(&ctx, &a.id).map(|()| 0),
        Command::State(a) => state::run(&ctx, &a.id).map(|()| 0),
        Command::Kill(a) => kill::run(&ctx, &a).map(|()| 0),
        Command::Delete(a) => delete::run(&ctx, &a.id, a.force).map(|()| 0),
        Command::Run(a) => run::run(&ctx, factory, &a),
        Command::Exec(a) => exec::run(&ctx, &a),
        Command::Ps(a) => ps::run(&ctx, &a).map(|()| 0),
        Command::List(a) => list::run(&ctx, &a).map(|()| 0),
        Command::Pause(a) => pause::run(&ctx, &a.id).map(|()| 0),
        Command::Resume(a) => resume::run(&ctx, &a.id).map(|()| 0),
        Command::Features => features::run().map(|()| 0),
        Command::Spec(mut a) => {
            a.rootless = ctx.global.rootless.as_deref().is_some_and(|v| v != "false");
            spec::run(&a).map(|()| 0)
        }
        Command::Update(a) => update::run(&ctx, &a).map(|()| 0),
        Command::Events(a) => events::run(&ctx, &a).map(|()| 0),
        Command::Template(t) => template::run(&t).map(|()| 0),
    }
}

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
mod update;
mod version;

use crate::cli::{Cli, Command, GlobalOpts};
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
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// What every command gets.
pub struct Ctx<'a> {
    pub global: GlobalOpts,
    pub store: Store,
    pub factory: &'a dyn SandboxFactory,
}

impl Ctx<'_> {
    /// Loads a container's state and its current status.
    fn load(&self, id: &str) -> Result<(State, Status)> {
        let st = self.store.load(id)?;
        let status = st.current_status();
        Ok((st, status))
    }
}

pub fn dispatch(cli: Cli, factory: &dyn SandboxFactory) -> Result<i32> {
    if cli.version {
        version::run();
        return Ok(0);
    }
    let ctx = Ctx {
        store: Store::new(cli.global.root.clone()),
        global: cli.global,
        factory,
    };
    let Some(cmd) = cli.command else {
        return Err(usage("no command given (see --help)"));
    };
    match cmd {
        Command::Create(a) => create::run(&ctx, &a).map(|_| 0),
        Command::Start(a) => start::run(&ctx, &a.id).map(|()| 0),
        Command::State(a) => state::run(&ctx, &a.id).map(|()| 0),
        Command::Kill(a) => kill::run(&ctx, &a).map(|()| 0),
        Command::Delete(a) => delete::run(&ctx, &a.id, a.force).map(|()| 0),
        Command::Run(a) => run::run(&ctx, &a),
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
    }
}

//! The agent API's calls: decoding, checking, and acting on the process table.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use bulkhead_protocol::frame::Frame;
use bulkhead_protocol::protobuf::{self, Message};
use bulkhead_protocol::rpc::{self, Call, Code, Method, RpcError, Status};
use bulkhead_protocol::stream::StreamHeader;
use bulkhead_protocol::{api, validate_id, PROTOCOL_VERSION};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{token, Entry, Launch, Server, Waiter, START_TIMEOUT, T_PROC};
use crate::process::relay::{Reg, GUEST_IN, HOST_IN};
use crate::process::spawn::{ChildFds, Command, Creds, SpawnError};
use crate::process::{Process, State, Stdio, Streams};
use crate::reaper::ExitStatus;

/// What a handler decided.
pub(super) enum Reply {
    /// Answer now with this encoded message.
    Now(Vec<u8>),
    /// The call was parked; it is answered later.
    Later,
}

pub(super) type Handled = Result<Reply, Status>;

pub(super) fn ok<M: Message>(msg: &M) -> Handled {
    msg.write_to_bytes()
        .map(Reply::Now)
        .map_err(|_| Status::new(Code::Internal, "encode response"))
}

pub(super) fn empty() -> Handled {
    ok(&api::Empty::new())
}

fn decode<M: Message>(call: &Call) -> Result<M, Status> {
    rpc::decode_message(&call.payload).map_err(|e| {
        Status::new(
            Code::InvalidArgument,
            format!("bad {} request: {}", call.method.name(), chain(&e)),
        )
    })
}

pub(super) use bulkhead_protocol::error_chain as chain;

fn not_found(id: &str) -> Status {
    Status::new(Code::NotFound, format!("process {id:?} does not exist"))
}

pub(super) fn check_id(id: &str) -> Result<(), Status> {
    validate_id(id).map_err(|e| Status::new(Code::InvalidArgument, format!("id {id:?}: {e}")))
}

fn exit_response(status: ExitStatus) -> api::WaitProcessResponse {
    let mut r = api::WaitProcessResponse::new();
    match status {
        ExitStatus::Exited(code) => r.exit_code = code,
        ExitStatus::Signaled(sig) => r.signal = sig,
    }
    r
}

pub(super) fn size_of(size: &protobuf::MessageField<api::TerminalSize>) -> Option<(u16, u16)> {
    size.as_ref()
        .filter(|s| s.rows > 0 && s.cols > 0)
        .map(|s| (clamp16(s.rows), clamp16(s.cols)))
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The child's fds 0-2 for `stdio`; streams the host does not attach get `devnull`.
fn child_fds(stdio: &Stdio, devnull: RawFd) -> ChildFds {
    let fd = |f: &Option<OwnedFd>| f.as_ref().map_or(devnull, |f| f.as_raw_fd());
    match stdio {
        Stdio::Terminal(slave) => ChildFds {
            stdin: slave.as_raw_fd(),
            stdout: slave.as_raw_fd(),
            stderr: slave.as_raw_fd(),
            terminal: true,
        },
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => ChildFds {
            stdin: fd(stdin),
            stdout: fd(stdout),
            stderr: fd(stderr),
            terminal: false,
        },
    }
}

fn spawn_status(err: SpawnError) -> Status {
    let code = match err {
        SpawnError::NotFound(_) => Code::NotFound,
        SpawnError::Exec {
            errno: nix::errno::Errno::EACCES,
            ..
        } => Code::PermissionDenied,
        _ => Code::FailedPrecondition,
    };
    Status::new(code, err.to_string())
}

impl Server {
    /// Handles one frame from control connection `conn`.
    pub(super) fn handle_frame(&mut self, conn: usize, serial: u64, frame: &Frame) {
        let waiter = Waiter {
            conn,
            serial,
            stream_id: frame.stream_id,
        };
        let result = match rpc::decode_request(frame) {
            Ok(call) => self.handle(waiter, &call),
            Err(RpcError::UnknownMethod(path)) => Err(Status::new(
                Code::Unimplemented,
                format!("{path} is not a method of this agent"),
            )),
            Err(e) => Err(Status::new(Code::InvalidArgument, chain(&e))),
        };
        match result {
            Ok(Reply::Now(bytes)) => self.answer(waiter, Ok(&bytes)),
            Ok(Reply::Later) => {}
            Err(status) => self.answer(waiter, Err(&status)),
        }
    }

    fn answer(&mut self, w: Waiter, result: Result<&[u8], &Status>) {
        let mut out = Vec::new();
        if rpc::encode_response(w.stream_id, result, &mut out).is_ok() {
            self.respond(w, &out);
        }
    }

    pub(super) fn fail(&mut self, w: Waiter, code: Code, message: String) {
        self.answer(w, Err(&Status::new(code, message)));
    }

    fn handle(&mut self, w: Waiter, call: &Call) -> Handled {
        match call.method {
            Method::Version => {
                let mut r = api::VersionResponse::new();
                r.agent_version = env!("CARGO_PKG_VERSION").to_owned();
                r.kernel_release = self.kernel_release.clone();
                r.protocol_version = PROTOCOL_VERSION;
                ok(&r)
            }
            Method::CreateProcess => self.create_process(decode(call)?),
            Method::StartProcess => {
                let r: api::StartProcessRequest = decode(call)?;
                self.start_process(w, &r.id)
            }
            Method::SignalProcess => self.signal_process(decode(call)?),
            Method::WaitProcess => {
                let r: api::WaitProcessRequest = decode(call)?;
                self.wait_process(w, &r.id)
            }
            Method::ResizeTerminal => self.resize_terminal(decode(call)?),
            Method::CloseStdin => {
                let r: api::CloseStdinRequest = decode(call)?;
                self.close_stdin(&r.id)
            }
            Method::RemoveProcess => {
                let r: api::RemoveProcessRequest = decode(call)?;
                self.remove_process(&r.id)
            }
            Method::CreateContainer => self.create_container(decode(call)?),
            Method::StartContainer => {
                let r: api::StartContainerRequest = decode(call)?;
                self.start_process(w, &r.id)
            }
            Method::ListProcesses => {
                self.list_processes(&decode::<api::ListProcessesRequest>(call)?.id)
            }
            Method::PauseContainer => {
                self.pause_container(&decode::<api::PauseContainerRequest>(call)?.id, true)
            }
            Method::ResumeContainer => {
                self.pause_container(&decode::<api::ResumeContainerRequest>(call)?.id, false)
            }
            Method::UpdateContainer => self.update_container(decode(call)?),
            Method::Stats => self.stats(&decode::<api::StatsRequest>(call)?.id),
            Method::RemoveContainer => self.remove_container(decode(call)?),
            Method::Shutdown => {
                self.shutdown = true;
                empty()
            }
            Method::Refresh => self.refresh(decode(call)?),
            Method::ConfigureNetwork => self.configure_network(&decode(call)?),
        }
    }

    /// Makes the container's NICs appear and configures them (see `crate::network`). The
    /// request is checked in test mode too, but only a guest's agent changes its network: on
    /// the host it would be the host's.
    fn configure_network(&mut self, r: &api::ConfigureNetworkRequest) -> Handled {
        use crate::network::{self, NetworkError};
        let status = |e: NetworkError| {
            let code = match &e {
                NetworkError::Request(_) => Code::InvalidArgument,
                NetworkError::NoNic { .. } => Code::NotFound,
                NetworkError::NameTaken { .. } => Code::AlreadyExists,
                NetworkError::Step { errno, .. } if *errno == nix::errno::Errno::EEXIST => {
                    Code::AlreadyExists
                }
                NetworkError::Netlink(_) => Code::Internal,
                _ => Code::FailedPrecondition,
            };
            Status::new(code, chain(&e))
        };
        let config = network::parse(r).map_err(status)?;
        if self.on_shutdown != super::OnShutdown::Reboot {
            return Err(Status::new(
                Code::FailedPrecondition,
                "network configuration is refused in test mode (it would change the host's network)",
            ));
        }
        for warning in network::configure(&config).map_err(status)? {
            crate::log(&warning);
        }
        empty()
    }

    /// A restored clone becomes its own: the host's entropy, the host's time. On the host (test
    /// mode) the clock is the host's own and is left alone; the entropy only strengthens it.
    fn refresh(&mut self, r: api::RefreshRequest) -> Handled {
        use crate::refresh::{self, RefreshError};
        let status = |e: RefreshError| {
            let code = match e {
                RefreshError::EntropySize(_) | RefreshError::Time(..) => Code::InvalidArgument,
                _ => Code::Internal,
            };
            Status::new(code, chain(&e))
        };
        refresh::check(&r.entropy, r.realtime_sec, r.realtime_nsec).map_err(status)?;
        refresh::mix_entropy(&r.entropy).map_err(status)?;
        if self.on_shutdown == super::OnShutdown::Reboot {
            refresh::set_clock(r.realtime_sec, r.realtime_nsec).map_err(status)?;
        }
        // A clone's console log starts here (its boot is in the template's): say what it is.
        crate::log("restored from a template: entropy mixed in, clock set");
        empty()
    }

    pub(super) fn index(&self, id: &str) -> Result<usize, Status> {
        self.by_id.get(id).copied().ok_or_else(|| not_found(id))
    }

    fn entry(&mut self, id: &str) -> Result<(usize, &mut Entry), Status> {
        let i = self.index(id)?;
        let e = self.procs.get_mut(i).ok_or_else(|| not_found(id))?;
        Ok((i, e))
    }

    fn create_process(&mut self, r: api::CreateProcessRequest) -> Handled {
        check_id(&r.id)?;
        if self.by_id.contains_key(&r.id) {
            return Err(Status::new(
                Code::AlreadyExists,
                format!("process {:?} already exists", r.id),
            ));
        }
        let streams = Streams {
            stdin: r.stdio.stdin,
            stdout: r.stdio.stdout,
            stderr: r.stdio.stderr,
        };
        if r.terminal && !(streams.stdin || streams.stdout || streams.stderr) {
            return Err(Status::new(
                Code::InvalidArgument,
                "a terminal process needs its terminal stream (set a stdio flag)",
            ));
        }
        let launch = if r.container_id.is_empty() {
            if r.args.is_empty() {
                return Err(Status::new(Code::InvalidArgument, "args must not be empty"));
            }
            // Checked now so a bad argument fails the create, not the start.
            let creds =
                (r.uid != 0 || r.gid != 0 || !r.additional_gids.is_empty()).then(|| Creds {
                    uid: r.uid,
                    gid: r.gid,
                    groups: r.additional_gids.clone(),
                });
            let command = Command::new(&r.args, &r.env, &r.cwd, creds)
                .map_err(|e| Status::new(Code::InvalidArgument, e.to_string()))?;
            Launch::Plain(command)
        } else {
            self.exec_launch(&r.container_id, &r.oci_process)?
        };
        let terminal = r.terminal.then(|| size_of(&r.terminal_size));
        // An exec'd terminal comes from the container's devpts, as runc's does.
        let ptmx = match &launch {
            Launch::Exec { container, .. } if terminal.is_some() => self
                .containers
                .get(container)
                .and_then(|c| c.container.ptmx()),
            _ => None,
        };
        let process = Process::new(terminal, streams, ptmx)
            .map_err(|e| Status::new(Code::Internal, chain(&e)))?;
        let i = self.procs.insert(Entry {
            process,
            waiters: Vec::new(),
            start: None,
            launch: Some(launch),
        });
        self.by_id.insert(r.id, i);
        self.sync_proc(i);
        empty()
    }

    fn start_process(&mut self, w: Waiter, id: &str) -> Handled {
        let (i, e) = self.entry(id)?;
        if !matches!(e.process.state, State::Created(_)) || e.launch.is_none() || e.start.is_some()
        {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("process {id:?} was already started"),
            ));
        }
        if e.process.streams_ready() {
            let pid = self.launch(i)?;
            let mut r = api::StartProcessResponse::new();
            r.pid = pid.as_raw();
            return ok(&r);
        }
        e.start = Some((w, Instant::now() + START_TIMEOUT));
        Ok(Reply::Later)
    }

    /// Starts process `i` (its streams are attached): runs a guest program, execs into a
    /// container, or releases a container's init.
    fn launch(&mut self, i: usize) -> Result<Pid, Status> {
        let Some(e) = self.procs.get_mut(i) else {
            return Err(Status::new(Code::Internal, "process vanished"));
        };
        let already = || Status::new(Code::FailedPrecondition, "process already started");
        let launch = e.launch.take().ok_or_else(already)?;
        let result = match launch {
            Launch::Plain(command) => {
                let stdio = e.process.child_stdio.take().ok_or_else(already)?;
                let devnull = self.devnull.as_raw_fd();
                let result = self
                    .spawner
                    .spawn(&command, child_fds(&stdio, devnull), &self.reaper)
                    .map_err(spawn_status);
                // The child has its copies (or failed); ours must go so EOF can happen.
                drop(stdio);
                result
            }
            Launch::Exec { container, process } => {
                let stdio = e.process.child_stdio.take().ok_or_else(already)?;
                match self.containers.get(&container) {
                    Some(c) => c
                        .container
                        .exec(&process, stdio)
                        .map_err(|err| super::containers::status(&err)),
                    None => Err(super::containers::missing(&container)),
                }
            }
            Launch::Init { container } => match self.containers.get_mut(&container) {
                Some(c) => c
                    .container
                    .start()
                    .map(|()| c.container.init_pid())
                    .map_err(|err| super::containers::status(&err)),
                None => Err(super::containers::missing(&container)),
            },
        };
        // A failed start leaves the process "created" (a container's init exits and is
        // reaped as usual); it can only be removed.
        let pid = result?;
        e.process.state = State::Running(pid);
        Ok(pid)
    }

    fn signal_process(&mut self, r: api::SignalProcessRequest) -> Handled {
        let (_, e) = self.entry(&r.id)?;
        let pid = match e.process.state {
            State::Running(pid) | State::Created(Some(pid)) => pid,
            _ => {
                return Err(Status::new(
                    Code::FailedPrecondition,
                    format!("process {:?} is not running", r.id),
                ))
            }
        };
        let signal = i32::try_from(r.signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| {
                Status::new(
                    Code::InvalidArgument,
                    format!("invalid signal {}", r.signal),
                )
            })?;
        if r.all {
            if let Some(c) = self.containers.get(&r.id) {
                c.container
                    .signal_all(signal)
                    .map_err(|e| super::containers::status(&e))?;
                return empty();
            }
        }
        // Every process leads its own session and process group.
        let target = if r.all {
            Pid::from_raw(-pid.as_raw())
        } else {
            pid
        };
        kill(target, signal).map_err(|e| {
            Status::new(
                Code::FailedPrecondition,
                format!(
                    "signal {:?}: {}",
                    r.id,
                    crate::process::spawn::errno_text(e)
                ),
            )
        })?;
        empty()
    }

    fn wait_process(&mut self, w: Waiter, id: &str) -> Handled {
        let (i, e) = self.entry(id)?;
        e.waiters.push(w);
        self.report_exit(i);
        Ok(Reply::Later)
    }

    /// Answers the parked waits of process `i` if it has exited and its output is drained.
    pub(super) fn report_exit(&mut self, i: usize) {
        let Some(e) = self.procs.get_mut(i) else {
            return;
        };
        let State::Exited(_, status) = e.process.state else {
            return;
        };
        if e.waiters.is_empty() || !e.process.relay.drained() {
            return;
        }
        let waiters = std::mem::take(&mut e.waiters);
        let Ok(bytes) = exit_response(status).write_to_bytes() else {
            return;
        };
        for w in waiters {
            self.answer(w, Ok(&bytes));
        }
    }

    fn resize_terminal(&mut self, r: api::ResizeTerminalRequest) -> Handled {
        let (_, e) = self.entry(&r.id)?;
        let Some(master) = e
            .process
            .terminal
            .then(|| e.process.relay.fd(GUEST_IN))
            .flatten()
        else {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("process {:?} has no terminal", r.id),
            ));
        };
        let (rows, cols) = size_of(&r.size)
            .ok_or_else(|| Status::new(Code::InvalidArgument, "terminal size must not be 0"))?;
        crate::process::pty::resize(master, rows, cols)
            .map_err(|e| Status::new(Code::Internal, chain(&e)))?;
        empty()
    }

    fn close_stdin(&mut self, id: &str) -> Handled {
        let i = self.index(id)?;
        let e = self.procs.get_mut(i).ok_or_else(|| not_found(id))?;
        e.process.give_up_stdin();
        e.process.relay.close_stdin(&self.epoll);
        self.sync_proc(i);
        self.start_if_ready(i);
        empty()
    }

    fn remove_process(&mut self, id: &str) -> Handled {
        if self.containers.contains_key(id) {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("{id:?} is a container's init: remove the container"),
            ));
        }
        let (i, e) = self.entry(id)?;
        if matches!(e.process.state, State::Running(_) | State::Created(Some(_))) {
            return Err(Status::new(
                Code::FailedPrecondition,
                format!("process {id:?} is running"),
            ));
        }
        self.forget(i, id);
        empty()
    }

    /// Drops process `i` (named `id`), closing its streams and failing its parked calls.
    pub(super) fn forget(&mut self, i: usize, id: &str) {
        let Some(mut e) = self.procs.remove(i) else {
            return;
        };
        self.by_id.remove(id);
        e.process.relay.close_all(&self.epoll);
        let start = e.start.take();
        let waiters = std::mem::take(&mut e.waiters);
        for w in start.map(|s| s.0).into_iter().chain(waiters) {
            self.fail(w, Code::NotFound, format!("process {id:?} was removed"));
        }
    }

    /// A stream connection's header arrived: hand the connection to its process.
    pub(super) fn attach_stream(&mut self, header: StreamHeader, fd: OwnedFd, rest: &[u8]) {
        let Ok((i, e)) = self.entry(&header.process_id) else {
            crate::log(&format!(
                "stream for unknown process {:?} refused",
                header.process_id
            ));
            return;
        };
        if let Err(err) = e.process.attach(header.kind, fd, Reg::Disarmed) {
            crate::log(&format!(
                "{:?} stream of {:?} refused: {err}",
                header.kind, header.process_id
            ));
            return;
        }
        if !rest.is_empty() {
            e.process.relay.prefill(HOST_IN, rest);
        }
        self.sync_proc(i);
        self.start_if_ready(i);
    }

    /// Runs a parked StartProcess once the streams are all there.
    fn start_if_ready(&mut self, i: usize) {
        let Some(e) = self.procs.get_mut(i) else {
            return;
        };
        if e.start.is_none() || !e.process.streams_ready() {
            return;
        }
        let Some((w, _)) = e.start.take() else {
            return;
        };
        match self.launch(i) {
            Ok(pid) => {
                let mut r = api::StartProcessResponse::new();
                r.pid = pid.as_raw();
                if let Ok(bytes) = r.write_to_bytes() {
                    self.answer(w, Ok(&bytes));
                }
            }
            Err(status) => self.answer(w, Err(&status)),
        }
    }

    /// Registers process `i`'s fds for what its relay needs now.
    pub(super) fn sync_proc(&mut self, i: usize) {
        if let Some(e) = self.procs.get_mut(i) {
            e.process.relay.sync(&self.epoll, token(T_PROC, i << 3));
        }
    }
}

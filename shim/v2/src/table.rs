//! The shim's task table and what every task call does with it: finding a process, the
//! runtime of a container, publishing events, launching a process (`create`, `exec
//! --detach`) and following its exit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim::api::{self, Options, Status};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, TtrpcResult};
use log::{info, warn};

use crate::exits::Exits;
use crate::process::{timestamp, Container, Exit, Proc};
use crate::runtime::{args, ProcessIo, Runtime};
use crate::stdio::{self, ConsoleSocket, Stdio};

/// The runc options' type, which `ctr --runc-binary` and CRI runtimes send.
const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";

pub struct TaskService {
    pub(crate) namespace: String,
    pub(crate) publisher: Arc<RemotePublisher>,
    pub(crate) exits: Arc<Exits>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) containers: Arc<Mutex<HashMap<String, Container>>>,
}

pub(crate) fn error(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

pub(crate) fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        error(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        error(
            Code::NOT_FOUND,
            format!("process {exec_id} of {id} not found"),
        )
    }
}

pub(crate) fn failed(e: impl std::fmt::Display) -> ttrpc::Error {
    error(Code::UNKNOWN, e.to_string())
}

impl TaskService {
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exits: Arc<Exits>,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exits,
            exit,
            containers: Arc::default(),
        }
    }

    pub(crate) fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads something of one process under the table's lock.
    pub(crate) fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&Container, &Proc) -> T,
    ) -> TtrpcResult<T> {
        let t = self.table();
        let c = t.get(id).ok_or_else(|| not_found(id, ""))?;
        let p = c.process(exec_id).ok_or_else(|| not_found(id, exec_id))?;
        Ok(f(c, p))
    }

    pub(crate) fn runtime(&self, id: &str) -> TtrpcResult<Runtime> {
        self.with_process(id, "", |c, _| c.runtime.clone())
    }

    pub(crate) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            warn!("publishing {topic}: {e}");
        }
    }

    /// Waits for `pid` to end, then records the exit and tells containerd.
    pub(crate) fn watch(&self, id: String, exec_id: String, pid: u32) {
        let (exits, containers) = (Arc::clone(&self.exits), Arc::clone(&self.containers));
        let (publisher, namespace) = (Arc::clone(&self.publisher), self.namespace.clone());
        tokio::spawn(async move {
            let status = exits.wait(pid).await;
            let exit = Exit {
                status: u32::try_from(status).unwrap_or(255),
                at: SystemTime::now(),
            };
            let known = {
                let t = containers.lock().unwrap_or_else(|p| p.into_inner());
                t.get(&id).and_then(|c| c.process(&exec_id)).is_some()
            };
            if !known {
                return;
            }
            info!("{id} {exec_id}: pid {pid} exited with {}", exit.status);
            // The exit is queued before waiters learn of it: containerd deletes the task when
            // its Wait returns, and /tasks/delete must not overtake /tasks/exit.
            let event = TaskExit {
                container_id: id.clone(),
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id.clone()
                },
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            };
            let topic = topics::TASK_EXIT_EVENT_TOPIC;
            if let Err(e) = publisher
                .publish(Context::default(), topic, &namespace, Box::new(event))
                .await
            {
                warn!("publishing {topic}: {e}");
            }
            let mut t = containers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = t.get_mut(&id).and_then(|c| c.process_mut(&exec_id)) {
                p.set_exited(exit);
            }
        });
    }

    /// Runs `create` or `exec --detach` for a process with `stdio`: its pid and terminal.
    pub(crate) async fn launch(
        &self,
        runtime: &Runtime,
        mut argv: Vec<std::ffi::OsString>,
        id: &str,
        pid_file: &Path,
        stdio: &Stdio,
    ) -> TtrpcResult<(u32, Option<Arc<std::os::fd::OwnedFd>>)> {
        let _ = std::fs::remove_file(pid_file);
        argv.extend(args(["--pid-file".as_ref(), pid_file.as_os_str()]));
        let (console, io) = if stdio.terminal {
            let console = ConsoleSocket::new().map_err(failed)?;
            argv.extend(args([
                "--console-socket".into(),
                console.path().into_os_string(),
            ]));
            (Some(console), ProcessIo::default())
        } else {
            (None, stdio::open_fifos(stdio).map_err(failed)?)
        };
        argv.push(id.into());
        runtime
            .launch(&self.exits, &argv, io)
            .await
            .map_err(failed)?;
        let pid = read_pid(pid_file).map_err(failed)?;
        let master = match console {
            Some(console) => {
                let master = console.master().map_err(failed)?;
                stdio::copy_terminal(&master, stdio).map_err(failed)?;
                Some(Arc::new(master))
            }
            None => None,
        };
        Ok((pid, master))
    }
}

pub(crate) fn read_pid(path: &Path) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{}: not a pid: {text:?}", path.display())))
}

/// The runc options containerd sent with the task, if any.
pub(crate) fn options(
    any: Option<&containerd_shim::protos::protobuf::well_known_types::any::Any>,
) -> TtrpcResult<Options> {
    match any {
        Some(a) if a.type_url.ends_with(RUNC_OPTIONS) => Options::parse_from_bytes(&a.value)
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("runtime options: {e}"))),
        _ => Ok(Options::default()),
    }
}

impl TaskService {
    /// `pause` or `resume` (`verb`): the runtime call, the init's new status, the event.
    pub(crate) async fn freeze(
        &self,
        id: &str,
        verb: &str,
        status: Status,
        topic: &str,
        event: Box<dyn MessageDyn>,
    ) -> TtrpcResult<api::Empty> {
        let runtime = self.runtime(id)?;
        runtime
            .call(&self.exits, &args([verb, id]), None)
            .await
            .map_err(failed)?;
        self.set_status(id, "", status);
        self.publish(topic, event).await;
        Ok(api::Empty::new())
    }

    pub(crate) fn set_status(&self, id: &str, exec_id: &str, status: Status) {
        let mut t = self.table();
        if let Some(p) = t.get_mut(id).and_then(|c| c.process_mut(exec_id)) {
            // An exit recorded meanwhile wins.
            if p.status != Status::STOPPED {
                p.status = status;
            }
        }
    }
}

pub(crate) fn delete_response(pid: u32, exit: Option<Exit>) -> api::DeleteResponse {
    api::DeleteResponse {
        pid,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: Some(
            exit.map(|e| e.timestamp())
                .unwrap_or_else(|| timestamp(SystemTime::now())),
        )
        .into(),
        ..Default::default()
    }
}

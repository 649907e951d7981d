//! containerd's task service (`containerd.task.v2.Task`) over the `bulkhead` runtime CLI.
//!
//! Each call becomes the runtime command containerd's runc shim would run (create, start,
//! kill, delete, exec --detach, pause, resume, update, ps, events --stats), and each state
//! change becomes the event containerd expects. The table of processes and their exits is the
//! shim's own; the runtime keeps the containers' state.

use std::collections::HashMap;
use std::path::PathBuf;

use async_trait::async_trait;
use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{r#async::TtrpcContext, Code};
use containerd_shim::TtrpcResult;

use crate::process::{Container, Proc};
use crate::rootfs;
use crate::runtime::{args, Runtime};
use crate::stats;
use crate::stdio::{self, Stdio};

/// The runc options' type, which `ctr --runc-binary` and CRI runtimes send.
use crate::table::{delete_response, error, failed, not_found, options, TaskService};

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        if self.table().contains_key(&id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {id} exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "restoring a checkpoint is not supported",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let opts = options(req.options.as_ref())?;
        // For `delete` of a shim that died: it reads them back from the bundle.
        containerd_shim::asynchronous::util::write_options(&bundle, &opts)
            .await
            .map_err(failed)?;
        let runtime = Runtime::new(&opts, &bundle, &self.namespace);
        let mounted_rootfs = rootfs::mount(&req.rootfs, &bundle).await.map_err(failed)?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let argv = args(["create".as_ref(), "--bundle".as_ref(), bundle.as_os_str()]);
        let launched = self
            .launch(&runtime, argv, &id, &bundle.join("init.pid"), &stdio)
            .await;
        let (pid, master) = match launched {
            Ok(l) => l,
            Err(e) => {
                // Whatever the runtime made of it goes too (a create that failed after its VM
                // started, a pid file that could not be read): nothing may outlive the error.
                let _ = runtime
                    .call(&self.exits, &args(["delete", "--force", id.as_str()]), None)
                    .await;
                if mounted_rootfs {
                    rootfs::unmount(&bundle);
                }
                return Err(e);
            }
        };
        let mut init = Proc::new(stdio.clone(), None);
        init.pid = pid;
        init.master = master;
        self.table().insert(
            id.clone(),
            Container {
                bundle: bundle.clone(),
                runtime,
                mounted_rootfs,
                init,
                execs: HashMap::new(),
            },
        );
        let event = TaskCreate {
            container_id: id.clone(),
            bundle: req.bundle,
            rootfs: req.rootfs,
            io: Some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: req.checkpoint,
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        // Followed only now: an init that already ended must not be reported before /tasks/create.
        self.watch(id, String::new(), pid);
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let runtime = self.runtime(id)?;
        let pid = if exec_id.is_empty() {
            runtime
                .call(&self.exits, &args(["start", id]), None)
                .await
                .map_err(failed)?;
            let pid = self.with_process(id, "", |_, p| p.pid)?;
            self.set_status(id, "", Status::RUNNING);
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id.into(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
            pid
        } else {
            // Taken under the lock: a second Start of the same exec finds it gone.
            let (bundle, stdio, spec) = {
                let mut t = self.table();
                let c = t.get_mut(id).ok_or_else(|| not_found(id, ""))?;
                let bundle = c.bundle.clone();
                let p = c
                    .execs
                    .get_mut(exec_id)
                    .ok_or_else(|| not_found(id, exec_id))?;
                (bundle, p.stdio.clone(), p.spec.take())
            };
            let spec = spec.ok_or_else(|| {
                error(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} already started"),
                )
            })?;
            let spec_file = bundle.join(format!("exec-{exec_id}.json"));
            std::fs::write(&spec_file, spec).map_err(failed)?;
            let argv = args([
                "exec".as_ref(),
                "--detach".as_ref(),
                "--process".as_ref(),
                spec_file.as_os_str(),
            ]);
            let pid_file = bundle.join(format!("exec-{exec_id}.pid"));
            let launched = self.launch(&runtime, argv, id, &pid_file, &stdio).await;
            let _ = std::fs::remove_file(&spec_file);
            let _ = std::fs::remove_file(&pid_file);
            let (pid, master) = launched?;
            {
                let mut t = self.table();
                if let Some(p) = t.get_mut(id).and_then(|c| c.execs.get_mut(exec_id)) {
                    p.pid = pid;
                    p.master = master;
                    p.status = Status::RUNNING;
                }
            }
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
            self.watch(id.into(), exec_id.into(), pid);
            pid
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_process(&req.id, &req.exec_id, |c, p| {
            let exit = p.exit();
            api::StateResponse {
                id: if req.exec_id.is_empty() {
                    req.id.clone()
                } else {
                    req.exec_id.clone()
                },
                bundle: c.bundle.display().to_string(),
                pid: p.pid,
                status: p.status.into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.map(|e| e.status).unwrap_or_default(),
                exited_at: exit.map(|e| e.timestamp()).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        let (runtime, pid, status) =
            self.with_process(id, exec_id, |c, p| (c.runtime.clone(), p.pid, p.status))?;
        if status == Status::STOPPED {
            return Err(error(
                Code::NOT_FOUND,
                format!("process {id} {exec_id} already finished"),
            ));
        }
        if exec_id.is_empty() {
            let mut argv = args(["kill"]);
            if req.all {
                argv.push("--all".into());
            }
            argv.extend(args([id.to_string(), req.signal.to_string()]));
            runtime
                .call(&self.exits, &argv, None)
                .await
                .map_err(failed)?;
        } else {
            // The exec process stands for the container's process and passes signals on, as
            // runc's shim signals an exec's pid.
            // pid 0 (an exec not started) would signal the shim's own process group.
            let pid = match i32::try_from(pid) {
                Ok(pid) if pid > 0 => nix::unistd::Pid::from_raw(pid),
                _ => {
                    return Err(error(
                        Code::FAILED_PRECONDITION,
                        format!("process {exec_id} of {id} has not started"),
                    ))
                }
            };
            let sig = nix::sys::signal::Signal::try_from(i32::try_from(req.signal).unwrap_or(0))
                .map_err(|e| error(Code::INVALID_ARGUMENT, e.to_string()))?;
            nix::sys::signal::kill(pid, sig).map_err(|e| match e {
                // It ended between the status check and the signal, as runc's shim reports.
                nix::errno::Errno::ESRCH => error(
                    Code::NOT_FOUND,
                    format!("process {exec_id} already finished"),
                ),
                e => failed(e),
            })?;
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        if !exec_id.is_empty() {
            let mut t = self.table();
            let c = t.get_mut(id).ok_or_else(|| not_found(id, ""))?;
            let p = c.execs.get(exec_id).ok_or_else(|| not_found(id, exec_id))?;
            if p.status == Status::RUNNING {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} is running"),
                ));
            }
            let exit = p.exit();
            let pid = p.pid;
            c.execs.remove(exec_id);
            return Ok(delete_response(pid, exit));
        }
        let (runtime, bundle, pid, status, mounted) = self.with_process(id, "", |c, p| {
            (
                c.runtime.clone(),
                c.bundle.clone(),
                p.pid,
                p.status,
                c.mounted_rootfs,
            )
        })?;
        // A running or paused task is refused, as runc's shim does (containerd kills first);
        // one that never started (a failed start) has no exit and is removed with --force.
        if status == Status::RUNNING || status == Status::PAUSED {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("container {id} is running"),
            ));
        }
        let mut argv = args(["delete"]);
        if status == Status::CREATED {
            argv.push("--force".into());
        }
        argv.push(id.into());
        runtime
            .call(&self.exits, &argv, None)
            .await
            .map_err(failed)?;
        if mounted {
            rootfs::unmount(&bundle);
        }
        let exit = self.table().remove(id).and_then(|c| c.init.exit());
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.into(),
                pid,
                exit_status: exit.map(|e| e.status).unwrap_or_default(),
                exited_at: exit.map(|e| e.timestamp()).into(),
                id: id.into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(delete_response(pid, exit))
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let (id, exec_id) = (req.id.as_str(), req.exec_id.as_str());
        // It names files in the bundle.
        if exec_id.is_empty() || exec_id.contains('/') || exec_id.starts_with('.') {
            return Err(error(
                Code::INVALID_ARGUMENT,
                format!("exec id {exec_id:?}"),
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        // Refused here rather than at start: the runtime takes the process as it is.
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec)
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("exec process: {e}")))?;
        {
            let mut t = self.table();
            let c = t.get_mut(id).ok_or_else(|| not_found(id, ""))?;
            if c.execs.contains_key(exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("process {exec_id} exists"),
                ));
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            c.execs.insert(exec_id.into(), Proc::new(stdio, Some(spec)));
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let master = self.with_process(&req.id, &req.exec_id, |_, p| p.master.clone())?;
        // A process without a terminal has nothing to resize (runc's shim answers the same).
        if let Some(master) = master {
            stdio::resize(&master, req.width, req.height).map_err(failed)?;
        }
        Ok(api::Empty::new())
    }

    /// The shim holds no writer of a process's stdin (the FIFO is the process's own, or the
    /// terminal copy reads it), so the process sees its end of input once containerd's client
    /// closes the FIFO, which it has done when it sends this.
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        self.with_process(&req.id, &req.exec_id, |_, _| ())?;
        Ok(api::Empty::new())
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let runtime = self.runtime(&req.id)?;
        let out = runtime
            .call(
                &self.exits,
                &args(["ps", "--format", "json", req.id.as_str()]),
                None,
            )
            .await
            .map_err(failed)?;
        let pids: Vec<u32> = serde_json::from_slice(&out)
            .map_err(|e| failed(format!("bulkhead ps printed no pid list: {e}")))?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let event = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.freeze(
            &req.id,
            "pause",
            Status::PAUSED,
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(event),
        )
        .await
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let event = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.freeze(
            &req.id,
            "resume",
            Status::RUNNING,
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(event),
        )
        .await
    }

    /// containerd sends the new `linux.resources` as JSON, which `update --resources -` reads.
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let runtime = self.runtime(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "update without resources"))?;
        runtime
            .call(
                &self.exits,
                &args(["update", "--resources", "-", req.id.as_str()]),
                Some(resources),
            )
            .await
            .map_err(failed)?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exited = self.with_process(&req.id, &req.exec_id, |_, p| p.exited())?;
        let exit = *exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| not_found(&req.id, &req.exec_id))?;
        let exit = exit.ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let runtime = self.runtime(&req.id)?;
        let out = runtime
            .call(
                &self.exits,
                &args(["events", "--stats", req.id.as_str()]),
                None,
            )
            .await
            .map_err(failed)?;
        let metrics = stats::metrics(&out).map_err(failed)?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics)).map_err(failed)?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with_process(&req.id, "", |_, p| p.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    /// The shim ends once it serves no container (containerd sends this after each delete).
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.table().is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

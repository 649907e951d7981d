//! OCI hooks, run on the host with the container state on stdin.
//!
//! Where runc runs a hook matters: `prestart`/`createRuntime` run in the runtime namespace,
//! `createContainer`/`startContainer` in the container's namespaces. A Bulkhead container's
//! namespaces are inside the guest, which holds no hook binaries, so all six kinds run on the host
//! at the same moments runc runs them: `createRuntime`, `prestart`, then `createContainer` after
//! the guest has created the container (before `create` returns); `startContainer` just before
//! the init is released by `start`; `poststart` after it; `poststop` in `delete`. A failing hook
//! aborts its phase like runc (create and start fail and clean up); a failing `poststop` is only
//! logged, because the container is already gone.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Prestart => "prestart",
            Phase::CreateRuntime => "createRuntime",
            Phase::CreateContainer => "createContainer",
            Phase::StartContainer => "startContainer",
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{phase} hook #{index} ({path}): {msg}")]
    Failed {
        phase: &'static str,
        index: usize,
        path: String,
        msg: String,
    },
}

impl crate::error::HasKind for HookError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::FailedPrecondition
    }
}

/// The hooks of one phase in spec order.
pub fn hooks_of(spec: &Spec, phase: Phase) -> Vec<Hook> {
    let Some(h) = spec.hooks() else {
        return Vec::new();
    };
    #[allow(deprecated)]
    let list = match phase {
        Phase::Prestart => h.prestart(),
        Phase::CreateRuntime => h.create_runtime(),
        Phase::CreateContainer => h.create_container(),
        Phase::StartContainer => h.start_container(),
        Phase::Poststart => h.poststart(),
        Phase::Poststop => h.poststop(),
    };
    list.clone().unwrap_or_default()
}

/// Runs every hook of `phase` in order; stops at the first failure.
pub fn run(spec: &Spec, phase: Phase, state_json: &str) -> Result<(), HookError> {
    for (index, hook) in hooks_of(spec, phase).iter().enumerate() {
        run_one(hook, state_json).map_err(|msg| HookError::Failed {
            phase: phase.name(),
            index,
            path: hook.path().display().to_string(),
            msg,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state_json: &str) -> Result<(), String> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = hook
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t.max(1) as u64));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "{status}, stdout: {}, stderr: {}",
        out.trim(),
        err.trim()
    ))
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        let mut v = crate::spec::tests::minimal();
        v["hooks"] = hooks;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hooks_get_state_args_and_env() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let script = format!("echo \"$0 $1 $FOO\" > {0}; cat >> {0}", out.display());
        let spec = spec_with(json!({"prestart": [
            {"path": "/bin/sh", "args": ["myhook", "-c", script, "zero", "one"], "env": ["FOO=bar"]}
        ]}));
        run(&spec, Phase::Prestart, "{\"id\":\"c1\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "zero one bar\n{\"id\":\"c1\"}"
        );
        // Other phases have no hooks.
        run(&spec, Phase::Poststop, "{}").unwrap();
    }

    #[test]
    fn failures_stop_the_phase() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("second-ran");
        let spec = spec_with(json!({"createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo oops >&2; exit 3"]},
            {"path": "/bin/touch", "args": ["touch", marker]}
        ]}));
        let err = run(&spec, Phase::CreateRuntime, "{}")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("createRuntime hook #0 (/bin/sh): exit status: 3"),
            "{err}"
        );
        assert!(err.contains("stderr: oops"), "{err}");
        assert!(!marker.exists());
    }

    #[test]
    fn timeouts_kill_the_hook() {
        let spec = spec_with(
            json!({"poststart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}),
        );
        let t = Instant::now();
        let err = run(&spec, Phase::Poststart, "{}").unwrap_err().to_string();
        assert!(err.ends_with("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn missing_binary_is_an_error() {
        let spec = spec_with(json!({"startContainer": [{"path": "/nonexistent/hook"}]}));
        assert!(run(&spec, Phase::StartContainer, "{}").is_err());
    }
}

//! Template start for the VM sandbox: restore the container's VM from the template of its kind
//! (making the template first if there is none), then make the clone its own (`Refresh`: fresh
//! entropy, the time). A template is made by booting a guest with the same devices a container
//! VM has — the share's virtio-fs device pointing at an empty directory, the guest never
//! mounts it — waiting for its agent, closing the connection and snapshotting it
//! (`VmHandle::snapshot`); that VM then stops. See `crate::template` for the store.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bulkhead_protocol::client::Client;
use bulkhead_vmm::devices::serial::rotated_path;
use bulkhead_vmm::devices::virtio::vsock::VsockConfig;
use bulkhead_vmm::{ConsoleOutput, ImageId, RestoreConfig, Vm, VmConfig};

use super::{agent_wait, connect_agent, has_volumes, share_device, AgentWait, Guest, VmGuest};
use crate::config::{Config, VmSize};
use crate::error::Kind;
use crate::sandbox::{BootContext, SandboxError};
use crate::template::{now_secs, Meta, Recipe, TemplateError, Templates, BUILD_LOG};

/// Bytes of host entropy a clone gets.
const ENTROPY_BYTES: usize = 64;
/// How long a template's guest gets to finish closing the readiness connection.
const VSOCK_IDLE_WAIT: Duration = Duration::from_secs(10);
/// How long a restored clone's agent may take to answer (at most `boot_timeout_secs`). A
/// restore reaches the agent in about 0.2 s here (a second or two on a guest 4× slower under
/// load: a wide margin); a clone that has not answered by then never will (seen in CI: every
/// clone of one template went idle without answering), and the container then pays a boot
/// anyway, so waiting longer only adds to it.
const RESTORE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// [`SandboxError::Vm::what`] of a restore that failed before the guest ran.
const RESTORE_FAILED: &str = "restore vm";
/// The name a template whose clones stay silent is kept under (`<key>.silent`, one per key).
const SILENT_SUFFIX: &str = ".silent";
/// [`SandboxError::Vm::what`] of a restored guest whose agent did not answer.
const CLONE_SILENT: &str = "restored vm did not answer";

/// The container's VM restored from its template, its agent refreshed.
pub(super) async fn restore(ctx: &BootContext) -> Result<(VmGuest, Client), SandboxError> {
    let templates = Templates::new(&ctx.config.template_dir);
    let (recipe, image) = Recipe::for_vm(&templates, &ctx.config, &ctx.size).map_err(tpl)?;
    let key = recipe.key();
    let timeout = Duration::from_secs(u64::from(ctx.config.boot_timeout_secs));
    let dir = match templates.find(&key) {
        Some(dir) => dir,
        None => ensure(&templates, &recipe, image, &ctx.config, false).await?,
    };
    // Which template this container tries: others may make the key's template again meanwhile.
    let tried = templates.identity(&key);
    let (why, keep) = match clone_from(ctx, &dir, image).await {
        // The template itself is unusable (corrupt, truncated, from another VMM or host).
        Err(SandboxError::Vm {
            what: RESTORE_FAILED,
            source,
        }) => (
            format!(
                "cannot be used ({})",
                bulkhead_protocol::error_chain(&*source)
            ),
            false,
        ),
        // Its clone went idle without answering (one cause, a guest kick lost between the
        // device loop's pause and the vCPUs', is fixed in the VMM: this is the wall behind
        // it); the container would boot anyway, and a new template costs one boot, so the boot
        // makes a template that the later containers can use. It is kept aside for a
        // post-mortem (`bulkhead-vmm --restore`).
        Err(SandboxError::Vm {
            what: CLONE_SILENT,
            source,
        }) => (
            format!(
                "made a clone whose agent did not answer ({})",
                bulkhead_protocol::error_chain(&*source)
            ),
            true,
        ),
        other => return other,
    };
    // Made again once; a failure of the new one is the caller's (a cold boot).
    let lock = templates.lock(&key, timeout).await.map_err(tpl)?;
    // Only the template this container tried goes: containers that tried it at the same time
    // find it made again (by the first of them) when they get the lock, and use that one.
    if tried.is_some() && templates.identity(&key) == tried {
        let outcome = if keep {
            match templates.set_aside(&key, SILENT_SUFFIX) {
                Ok(aside) => format!("kept as {}", aside.display()),
                Err(e) => {
                    templates.discard(&key).map_err(tpl)?;
                    format!("removed (not kept: {e})")
                }
            }
        } else {
            templates.discard(&key).map_err(tpl)?;
            "removed".to_string()
        };
        crate::logging::warn(&format!("template {key} {why}; {outcome}; making it again"));
    } else {
        crate::logging::debug(&format!(
            "template {key} {why}; another container has made it again"
        ));
    }
    let dir = match templates.find(&key) {
        Some(dir) => dir,
        None => build(&templates, &recipe, image, &ctx.config, timeout).await?,
    };
    drop(lock);
    clone_from(ctx, &dir, image).await
}

/// The template of `recipe`, made now under its lock unless another process made it while we
/// waited for the lock (or made again with `replace`).
async fn ensure(
    templates: &Templates,
    recipe: &Recipe,
    image: ImageId,
    cfg: &Config,
    replace: bool,
) -> Result<std::path::PathBuf, SandboxError> {
    let key = recipe.key();
    let timeout = Duration::from_secs(u64::from(cfg.boot_timeout_secs));
    let _lock = templates.lock(&key, timeout).await.map_err(tpl)?;
    match templates.find(&key) {
        Some(dir) if !replace => Ok(dir),
        _ => build(templates, recipe, image, cfg, timeout).await,
    }
}

/// Restores the snapshot in `dir` as the container's VM and refreshes its agent.
async fn clone_from(
    ctx: &BootContext,
    dir: &Path,
    image: ImageId,
) -> Result<(VmGuest, Client), SandboxError> {
    let vsock = super::vsock_path(ctx)?;
    let mut config = RestoreConfig::new(dir, image);
    config.console = ConsoleOutput::File(ctx.console_log.clone());
    config.console_max_bytes = Some(ctx.config.console_max_bytes());
    config.vsock = Some(VsockConfig::new(&vsock.path));
    config.fs = vec![share_device(
        &ctx.config,
        &ctx.share_dir,
        has_volumes(&ctx.share_dir),
    )];
    let vm = Vm::restore(&config).map_err(|e| SandboxError::Vm {
        what: RESTORE_FAILED,
        source: Box::new(e),
    })?;
    let guest = VmGuest::run(vm, vsock, ctx.config.seccomp)?;
    let mut wait = agent_wait(ctx);
    wait.timeout = wait.timeout.min(RESTORE_READY_TIMEOUT);
    let client = match connect_agent(&guest, &wait).await {
        Ok(c) => c,
        Err(e) => {
            guest.stop(Duration::ZERO).await;
            return Err(SandboxError::Vm {
                what: CLONE_SILENT,
                source: bulkhead_protocol::error_chain(&e).into(),
            });
        }
    };
    let refreshed = client
        .refresh(entropy()?, SystemTime::now())
        .await
        .map_err(SandboxError::Transport);
    if let Err(e) = refreshed {
        guest.stop(Duration::ZERO).await;
        return Err(e);
    }
    Ok((guest, client))
}

/// Fresh bytes from the host's kernel for the clone's RNG.
fn entropy() -> Result<Vec<u8>, SandboxError> {
    let mut bytes = vec![0u8; ENTROPY_BYTES];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into the rest of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => {
                return Err(SandboxError::failed(
                    Kind::Internal,
                    format!("getrandom: {}", std::io::Error::last_os_error()),
                ))
            }
        }
    }
    Ok(bytes)
}

/// Boots a guest for `recipe`, waits for its agent and snapshots it into the store.
async fn build(
    templates: &Templates,
    recipe: &Recipe,
    image: ImageId,
    cfg: &Config,
    timeout: Duration,
) -> Result<std::path::PathBuf, SandboxError> {
    let key = recipe.key();
    let started = Instant::now();
    let scratch = templates.scratch(&key).map_err(tpl)?;
    let made = make(recipe, image, cfg, &scratch, timeout).await;
    let info = match made {
        Ok(info) => info,
        Err(e) => {
            // Keep the console log of a failed build where the user is told to look (with
            // its rotated part, or none: an earlier failure's is not this one's).
            let log = scratch.join(BUILD_LOG);
            let kept = templates.path(&format!("{key}.failed.log"));
            let _ = std::fs::rename(&log, &kept);
            let (log, kept) = (rotated_path(&log), rotated_path(&kept));
            if std::fs::rename(&log, &kept).is_err() {
                let _ = std::fs::remove_file(&kept);
            }
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    let meta = Meta {
        recipe: recipe.clone(),
        created: now_secs(),
        build_secs: started.elapsed().as_secs_f64(),
        memory_bytes: info.memory_data_bytes,
    };
    let dir = templates.install(&key, &scratch, &meta).map_err(tpl)?;
    crate::logging::debug(&format!(
        "template {key} made in {:.1} s ({} KiB of memory, guest paused {} ms)",
        meta.build_secs,
        info.memory_data_bytes >> 10,
        info.paused.as_millis()
    ));
    Ok(dir)
}

/// The template guest's life: boot, agent ready, no connection kept, snapshot, stop.
async fn make(
    recipe: &Recipe,
    image: ImageId,
    cfg: &Config,
    scratch: &Path,
    timeout: Duration,
) -> Result<bulkhead_vmm::SnapshotInfo, SandboxError> {
    let share = scratch.join("share");
    std::fs::create_dir(&share).map_err(|e| SandboxError::Vm {
        what: "template share",
        source: Box::new(e),
    })?;
    let vsock =
        crate::control::sock_path(scratch, super::VSOCK_SOCKET).map_err(|e| SandboxError::Vm {
            what: "vsock socket path",
            source: Box::new(e),
        })?;
    let mut vm = VmConfig::new(&recipe.kernel);
    vm.initrd = Some(recipe.initramfs.clone());
    vm.mem_mib = u64::from(recipe.memory_mib);
    vm.vcpus = u8::try_from(recipe.vcpus).unwrap_or(u8::MAX);
    vm.console = ConsoleOutput::File(scratch.join(BUILD_LOG));
    vm.console_max_bytes = Some(cfg.console_max_bytes());
    vm.vsock = Some(VsockConfig::new(&vsock.path));
    vm.net_slots = recipe.net_slots;
    if !cfg.kernel_args.is_empty() {
        vm.cmdline = Some(cfg.kernel_args.clone());
    }
    vm.fs.push(share_device(cfg, &share, false));
    vm.image_id = Some(image);
    let guest = VmGuest::start(&vm, vsock, cfg.seccomp)?;
    let wait = AgentWait {
        timeout,
        console_log: scratch.join(BUILD_LOG),
    };
    // The agent answers: it is listening, and nothing container-specific has happened. The
    // connection goes before the snapshot, and the snapshot waits until the guest has finished
    // closing it (clones would otherwise spend their first moments on it).
    drop(connect_agent(&guest, &wait).await?);
    let handle = guest.handle.clone();
    let dir = scratch.to_path_buf();
    let snap = tokio::task::spawn_blocking(move || {
        handle.wait_for_vsock_idle(VSOCK_IDLE_WAIT);
        handle.snapshot(&dir)
    })
    .await;
    let stopped = guest.stop(Duration::ZERO).await;
    let _ = std::fs::remove_dir(&share);
    match snap {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(e)) => Err(SandboxError::Vm {
            what: "snapshot the template",
            source: Box::new(e),
        }),
        Err(e) => Err(SandboxError::Vm {
            what: "snapshot the template",
            source: Box::new(std::io::Error::other(format!("{e}; vm: {stopped:?}"))),
        }),
    }
}

fn tpl(e: TemplateError) -> SandboxError {
    SandboxError::Vm {
        what: "template",
        source: Box::new(e),
    }
}

/// Makes (or remakes) the template for the config's default VM, or `size` (`bulkhead template
/// build`); returns its key and directory.
pub async fn build_now(
    cfg: &Config,
    size: &VmSize,
    replace: bool,
) -> Result<(String, std::path::PathBuf), SandboxError> {
    super::check_guest_files(cfg)?;
    let templates = Templates::new(&cfg.template_dir);
    let (recipe, image) = Recipe::for_vm(&templates, cfg, size).map_err(tpl)?;
    let dir = ensure(&templates, &recipe, image, cfg, replace).await?;
    Ok((recipe.key(), dir))
}

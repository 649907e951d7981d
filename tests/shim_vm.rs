//! The shim's VM sandbox boots the real guest kernel with the agent's initramfs through the
//! `bulkhead_vmm` library (in this process, as the monitor does), reaches the agent over the
//! hybrid-vsock socket, checks its version, and shuts the VM down. Gated by `BULKHEAD_E2E=1`;
//! one boot, ~20 s on PVM-backed KVM. The agent initramfs is `bulkhead_tests::cli::agent_initramfs()`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::Instant;

use bulkhead_shim::config::{Config, VmSize};
use bulkhead_shim::sandbox::{BootContext, Sandbox, SandboxFactory};
use bulkhead_shim::vm::VmFactory;
use bulkhead_tests::cli::agent_initramfs;
use bulkhead_tests::{kernel, require, vm_needs};

#[test]
fn vm_sandbox_boots_and_reaches_the_agent() {
    if !require(&vm_needs()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        kernel: kernel(),
        initramfs: agent_initramfs(),
        log_dir: dir.path().to_path_buf(),
        boot_timeout_secs: 300,
        // This test binary builds the VM as the monitor would; the share's server is
        // `bulkhead __virtiofs-server`.
        fs_server_program: bulkhead_tests::workspace_binary("bulkhead"),
        ..Config::default()
    };
    bulkhead_shim::vm::check_guest_files(&config).unwrap();
    let ctx = BootContext {
        id: "vmtest".into(),
        console_log: config.console_log("vmtest"),
        size: VmSize {
            vcpus: 1,
            memory_mib: 128,
        },
        config,
        share_dir: dir.path().join("share"),
        state_dir: dir.path().to_path_buf(),
    };
    std::fs::create_dir(&ctx.share_dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let t = Instant::now();
        let vm = VmFactory.boot(&ctx).await.unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&ctx.console_log).unwrap_or_default();
            panic!("boot: {e}\nconsole:\n{log}")
        });
        eprintln!("agent answered after {:?}", t.elapsed());
        let v = vm.client().version().await.unwrap();
        let host =
            String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout)
                .trim()
                .to_string();
        assert!(
            !v.kernel_release.is_empty() && v.kernel_release != host,
            "guest kernel {:?}",
            v.kernel_release
        );
        assert_eq!(v.protocol_version, bulkhead_protocol::PROTOCOL_VERSION);

        let t = Instant::now();
        // A clean power-off: no fault to report.
        assert_eq!(vm.shutdown().await, None);
        eprintln!("shut down in {:?}", t.elapsed());
    });
    // The serial console went to the log file, not to our stdout.
    assert!(!std::fs::read_to_string(&ctx.console_log)
        .unwrap()
        .is_empty());
}

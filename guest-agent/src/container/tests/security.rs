//! Capabilities, no_new_privs, rlimits and seccomp, seen from inside the container.

use bulkhead_test_support::{require, Need};
use serde_json::json;

use super::{base_spec, container_test, create, sh, Bundle, Output};
use crate::container::CreateOptions;

fn caps(list: &[&str]) -> serde_json::Value {
    json!({"bounding": list, "effective": list, "permitted": list, "inheritable": list})
}

container_test! {
    fn capabilities_are_reduced_and_ambient_reaches_non_root() {
        let bundle = Bundle::busybox();
        // CHOWN (0), KILL (5), NET_BIND_SERVICE (10): 0x421.
        let out = sh(&bundle, "grep ^Cap /proc/self/status", |s| {
            s["process"]["capabilities"] = caps(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        });
        assert_eq!(
            out,
            "CapInh:\t0000000000000421\nCapPrm:\t0000000000000421\nCapEff:\t0000000000000421\n\
             CapBnd:\t0000000000000421\nCapAmb:\t0000000000000000\n"
        );
        // A non-root user keeps only what is ambient across exec.
        let out = sh(&bundle, "grep ^Cap /proc/self/status", |s| {
            let mut c = caps(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
            c["ambient"] = json!(["CAP_NET_BIND_SERVICE"]);
            s["process"]["capabilities"] = c;
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        });
        assert_eq!(
            out,
            "CapInh:\t0000000000000401\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\n\
             CapBnd:\t0000000000000401\nCapAmb:\t0000000000000400\n"
        );
        // No capabilities object at all: nothing.
        let out = sh(&bundle, "grep ^CapEff /proc/self/status", |s| {
            s["process"].as_object_mut().unwrap().remove("capabilities");
        });
        assert_eq!(out, "CapEff:\t0000000000000000\n");
    }
}

container_test! {
    fn no_new_privs_and_oom_score_adj() {
        let bundle = Bundle::busybox();
        let out = sh(&bundle, "grep ^NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj", |s| {
            s["process"]["noNewPrivileges"] = json!(true);
            // Raising needs no privilege (lowering needs CAP_SYS_RESOURCE, which the host lacks).
            s["process"]["oomScoreAdj"] = json!(500);
        });
        assert_eq!(out, "NoNewPrivs:\t1\n500\n");
        let out = sh(&bundle, "grep ^NoNewPrivs /proc/self/status", |_| {});
        assert_eq!(out, "NoNewPrivs:\t0\n");
    }
}

container_test! {
    fn rlimits_apply_and_hard_limits_need_privilege() {
        let bundle = Bundle::busybox();
        let mut host_hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut host_hard) }, 0);
        let hard = host_hard.rlim_max;
        let out = sh(&bundle, "ulimit -n; ulimit -Hn; ulimit -c", |s| {
            s["process"]["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 100, "hard": hard - 1},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
            ]);
        });
        assert_eq!(out, format!("100\n{}\n0\n", hard - 1));
        // Above the agent's hard limit it takes CAP_SYS_RESOURCE: the guest has it, this host
        // may not. Either way the outcome must be the honest one.
        let mut spec = base_spec("ulimit -Hn");
        spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": hard + 1}]);
        let (stdio, output) = Output::capture();
        match create(&spec, &bundle.rootfs, stdio, CreateOptions::default()) {
            Ok(mut c) => {
                c.start().unwrap();
                super::wait(c.init_pid());
                assert_eq!(output.finish().0, format!("{}\n", hard + 1));
                c.destroy().unwrap();
            }
            Err(e) => {
                assert_eq!(e.to_string(), "set rlimit RLIMIT_NOFILE");
                let caps = std::fs::read_to_string("/proc/self/status").unwrap();
                let eff = caps.lines().find_map(|l| l.strip_prefix("CapEff:\t")).unwrap();
                let eff = u64::from_str_radix(eff, 16).unwrap();
                assert_eq!(eff & (1 << 24), 0, "failed with CAP_SYS_RESOURCE (24)");
            }
        }
    }
}

container_test! {
    fn seccomp_denies_with_eperm() {
        let bundle = Bundle::busybox();
        let profile = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        for nnp in [false, true] {
            let out = sh(&bundle, "mkdir /tmp/x 2>&1; grep ^Seccomp: /proc/self/status", |s| {
                s["linux"]["seccomp"] = profile.clone();
                s["process"]["noNewPrivileges"] = json!(nnp);
            });
            assert_eq!(
                out,
                "mkdir: can't create directory '/tmp/x': Operation not permitted\nSeccomp:\t2\n"
            );
        }
    }
}

container_test! {
    fn dockers_default_profile_runs_a_shell() {
        let bundle = Bundle::busybox();
        let profile: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/docker-default-seccomp.json")).unwrap();
        let out = sh(
            &bundle,
            "mkdir /tmp/d && echo made; ls /tmp; mount -t tmpfs x /mnt 2>&1; \
             chroot / true && echo chroot-ok",
            |s| {
                s["linux"]["seccomp"] = profile;
                s["process"]["noNewPrivileges"] = json!(true);
            },
        );
        assert_eq!(
            out,
            "made\nd\nmount: permission denied (are you root?)\nchroot-ok\n"
        );
    }
}

container_test! {
    fn device_rules_block_unlisted_devices() {
        let bundle = Bundle::busybox();
        // /dev/fuse (c 10:229): Docker's rules deny it explicitly; this host lets root open it,
        // so the same open succeeding without rules proves the program is what refuses it.
        if !require(&[Need::Fuse]) {
            return;
        }
        let script = "mknod /dev/f c 10 229 && { true < /dev/f; } 2>&1 && echo opened; \
                      head -c 1 /dev/zero | wc -c; echo ok > /dev/null && echo null-ok";
        let out = sh(&bundle, script, |_| {});
        assert_eq!(out, "sh: can't open /dev/f: Operation not permitted\n1\nnull-ok\n");
        let out = sh(&bundle, script, |s| {
            s["linux"]["resources"] = json!({});
        });
        assert_eq!(out, "opened\n1\nnull-ok\n");
    }
}

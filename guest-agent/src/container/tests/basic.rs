//! Namespaces, the root filesystem, users, cwd and env.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::{container_test, sh, Bundle};

container_test! {
    fn init_is_pid_1_with_hostname_and_ids() {
        let bundle = Bundle::busybox();
        let out = sh(
            &bundle,
            "echo $$; read pid rest < /proc/self/stat; echo $pid; hostname; id -u; id -g; id -G; \
             grep ^0:: /proc/self/cgroup",
            |s| {
                s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20]});
                s["hostname"] = json!("box");
            },
        );
        assert_eq!(out, "1\n1\nbox\n1000\n1000\n1000 10 20\n0::/\n");
    }
}

container_test! {
    fn domainname_and_namespaced_sysctls() {
        let bundle = Bundle::busybox();
        let host_shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap();
        let out = sh(
            &bundle,
            "cat /proc/sys/kernel/domainname /proc/sys/kernel/shmmax /proc/sys/fs/mqueue/msg_max",
            |s| {
                s["domainname"] = json!("example.org");
                s["linux"]["sysctl"] = json!({"kernel.shmmax": "123456789", "fs.mqueue.msg_max": "42"});
            },
        );
        assert_eq!(out, "example.org\n123456789\n42\n");
        // The container's IPC namespace took the value, not the host's.
        assert_eq!(std::fs::read_to_string("/proc/sys/kernel/shmmax").unwrap(), host_shmmax);
    }
}

container_test! {
    fn cwd_is_created_and_env_home_umask_apply() {
        let bundle = Bundle::busybox();
        let out = sh(&bundle, "pwd; echo $FOO; echo $HOME; umask; ls -ld /work/dir | cut -c1-10", |s| {
            s["process"]["cwd"] = json!("/work/../work/dir");
            s["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
            s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "umask": 23});
        });
        assert_eq!(out, "/work/dir\nbar baz\n/home/user\n0027\ndrwxr-xr-x\n");
        // HOME from the spec wins; root's comes from /etc/passwd.
        let out = sh(&bundle, "echo $HOME", |_| {});
        assert_eq!(out, "/root\n");
        let out = sh(&bundle, "echo $HOME", |s| {
            s["process"]["env"] = json!(["PATH=/bin", "HOME=/elsewhere"]);
        });
        assert_eq!(out, "/elsewhere\n");
    }
}

container_test! {
    fn dev_has_the_default_devices_and_links() {
        let bundle = Bundle::busybox();
        let out = sh(
            &bundle,
            "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done; \
             for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done; \
             test -d /dev/pts && test -d /dev/shm && test -d /dev/mqueue && echo dirs; \
             stat -c '%n %t:%T %u:%g' /dev/fuse; \
             echo x > /dev/null && head -c 3 /dev/zero | wc -c",
            |s| {
                s["linux"]["devices"] = json!([
                    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 7, "gid": 8}
                ]);
            },
        );
        assert_eq!(
            out,
            "/dev/null character special file 1:3 666\n\
             /dev/zero character special file 1:5 666\n\
             /dev/full character special file 1:7 666\n\
             /dev/random character special file 1:8 666\n\
             /dev/urandom character special file 1:9 666\n\
             /dev/tty character special file 5:0 666\n\
             pts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\n\
             dirs\n/dev/fuse a:e5 7:8\n3\n"
        );
    }
}

container_test! {
    fn masked_and_readonly_paths_and_readonly_root() {
        let bundle = Bundle::busybox();
        // /proc/timer_list exists on the host kernel and is masked by Docker's list.
        assert!(!std::fs::read("/proc/timer_list").unwrap().is_empty());
        let out = sh(
            &bundle,
            "wc -c < /proc/timer_list; head -c 1 /proc/timer_list | wc -c; ls -A /sys/firmware | wc -l; \
             touch /sys/firmware/x 2>&1; echo x 2>&1 > /proc/sys/kernel/hostname; \
             touch /newfile 2>&1; \
             touch /tmp/ok && echo tmp-writable; \
             awk '$5 == \"/\" {print substr($6, 1, 3)}' /proc/self/mountinfo",
            |s| {
                s["root"]["readonly"] = json!(true);
            },
        );
        assert_eq!(
            out,
            "0\n0\n0\n\
             touch: /sys/firmware/x: Read-only file system\n\
             sh: can't create /proc/sys/kernel/hostname: Read-only file system\n\
             touch: /newfile: Read-only file system\n\
             tmp-writable\nro,\n"
        );
    }
}

container_test! {
    fn tmpcopyup_tmpfs_starts_with_what_it_covers() {
        // podman --read-only: a read-only root with tmpcopyup tmpfs mounts on /run and /tmp.
        let bundle = Bundle::busybox();
        let run = bundle.rootfs.join("run/lock");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("shipped"), "from the image\n").unwrap();
        std::os::unix::fs::symlink("lock/shipped", bundle.rootfs.join("run/link")).unwrap();
        std::fs::set_permissions(bundle.rootfs.join("run"), std::fs::Permissions::from_mode(0o710))
            .unwrap();
        let out = sh(
            &bundle,
            "cat /run/link; echo new > /run/lock/new && cat /run/lock/new; \
             stat -c %a /run /tmp; touch /tmp/x && echo tmp-ok; \
             grep -c ' /run .* - tmpfs ' /proc/self/mountinfo",
            |s| {
                s["root"]["readonly"] = json!(true);
                let mounts = s["mounts"].as_array_mut().unwrap();
                for d in ["/run", "/tmp"] {
                    mounts.push(json!({"destination": d, "type": "tmpfs", "source": "tmpfs",
                        "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}));
                }
            },
        );
        assert_eq!(out, "from the image\nnew\n710\n1777\ntmp-ok\n1\n");
        // The image's files were copied, not written through.
        assert!(!run.join("new").exists());
    }
}

container_test! {
    fn bind_mounts_share_files_both_ways() {
        let bundle = Bundle::busybox();
        let rw = bundle.host_dir("volume");
        std::fs::write(rw.join("from-host"), "hello from host\n").unwrap();
        let ro = bundle.host_dir("ro-volume");
        let file = bundle.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let out = sh(
            &bundle,
            "cat /data/from-host; echo hello from container > /data/from-container; \
             touch /ro/x 2>&1; cat /etc/hosts; \
             grep ' /ro ' /proc/self/mountinfo | grep -c 'ro,nosuid'",
            |s| {
                let mounts = s["mounts"].as_array_mut().unwrap();
                mounts.push(json!({"destination": "/data", "type": "bind", "source": rw, "options": ["rbind", "rprivate"]}));
                mounts.push(json!({"destination": "/ro", "type": "bind", "source": ro, "options": ["rbind", "ro", "nosuid"]}));
                mounts.push(json!({"destination": "/etc/hosts", "type": "bind", "source": file, "options": ["rbind", "rprivate"]}));
            },
        );
        assert_eq!(
            out,
            "hello from host\ntouch: /ro/x: Read-only file system\n127.0.0.1 localhost\n1\n"
        );
        assert_eq!(
            std::fs::read_to_string(rw.join("from-container")).unwrap(),
            "hello from container\n"
        );
    }
}

container_test! {
    fn mount_destinations_cannot_escape_the_rootfs() {
        let bundle = Bundle::busybox();
        // A hostile image: a symlink to / and one climbing out with "..".
        std::os::unix::fs::symlink("/", bundle.rootfs.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../../../tmp", bundle.rootfs.join("evil2")).unwrap();
        let outside = bundle.path().join("outside-marker");
        let script = "awk '$5 ~ /mnt/ {print $5}' /proc/self/mountinfo";
        let out = sh(&bundle, script, |s| {
            let mounts = s["mounts"].as_array_mut().unwrap();
            mounts.push(json!({"destination": "/evil/mnt1", "type": "tmpfs", "source": "tmpfs"}));
            mounts.push(json!({"destination": "/evil2/../tmp2/mnt2", "type": "tmpfs", "source": "tmpfs"}));
        });
        assert_eq!(out, "/mnt1\n/tmp2/mnt2\n");
        // The mount points were made inside the rootfs, nothing outside it.
        assert!(bundle.rootfs.join("mnt1").is_dir());
        assert!(bundle.rootfs.join("tmp2/mnt2").is_dir());
        assert!(!std::path::Path::new("/mnt1").exists());
        assert!(!outside.exists());
    }
}

container_test! {
    fn no_pivot_root_fallback_works() {
        let bundle = Bundle::busybox();
        let spec = super::base_spec("ls /; echo $$; cat /proc/self/mountinfo | wc -l");
        let done = super::run_with(&spec, &bundle, crate::container::CreateOptions { force_no_pivot: true });
        assert_eq!(done.status, crate::reaper::ExitStatus::Exited(0), "{}", done.stderr);
        assert!(done.stdout.starts_with("bin\ndev\netc\nhome\nmnt\nproc\nroot\nsys\ntmp\n1\n"), "{}", done.stdout);
    }
}

container_test! {
    fn a_regular_file_where_a_device_belongs_gets_the_device_bound() {
        let bundle = Bundle::busybox();
        // No tmpfs on /dev, and the image ships an empty /dev/null (as a share leaves it after
        // an earlier run where the host refused mknod).
        std::fs::create_dir_all(bundle.rootfs.join("dev")).unwrap();
        std::fs::write(bundle.rootfs.join("dev/null"), "").unwrap();
        let script = "echo x > /dev/null; stat -c %F /dev/null /dev/zero; head -c 2 /dev/zero | wc -c";
        let out = sh(&bundle, script, |s| {
            s["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/dev");
        });
        assert_eq!(out, "character special file\ncharacter special file\n2\n");
        assert_eq!(std::fs::read(bundle.rootfs.join("dev/null")).unwrap(), b"");

        // A spec "device" that is a file of the agent's root is not bound.
        std::fs::write(bundle.rootfs.join("dev/hosts"), "").unwrap();
        let mut spec = super::base_spec("true");
        spec["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/dev");
        spec["linux"]["devices"] = json!([{"path": "/etc/hosts", "type": "c", "major": 1, "minor": 3}]);
        std::fs::write(bundle.rootfs.join("etc/hosts"), "").unwrap();
        let (stdio, _output) = super::Output::capture();
        let err = super::create(&spec, &bundle.rootfs, stdio, Default::default()).unwrap_err();
        assert!(err.to_string().contains("/etc/hosts"), "{err}");
    }
}

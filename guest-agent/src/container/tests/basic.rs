//! Namespaces, the root filesystem, users, cwd and env.

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

//! A network namespace a suite makes for its engine (`ip netns add`), so that the engine's
//! bridge, NAT rules and published ports — and every packet a test sends — stay inside it and
//! the containers' own namespaces. Removed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{output, text};

pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// `<prefix><pid>`, with its loopback up.
    pub fn new(prefix: &str) -> TestNetns {
        let name = format!("{prefix}{}", std::process::id());
        // A namespace of the same name left by a killed earlier run of this pid is stale.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = TestNetns { name };
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let o = output(Command::new("ip").args(args));
        assert!(o.status.success(), "ip {args:?}: {}", text(&o.stderr));
        text(&o.stdout)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `cmd` run inside the namespace (network only; the file system stays the host's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg(program);
        c
    }

    /// One HTTP/1.0 GET of `/` from inside the namespace (a thread that joins it; 10 s
    /// timeouts): the body, or why not.
    pub fn http_get(&self, addr: SocketAddr) -> Result<String, String> {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            let timeout = Duration::from_secs(10);
            let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
            match reply.split_once("\r\n\r\n") {
                Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
                    Ok(body.to_string())
                }
                _ => Err(format!("unexpected reply: {reply:?}")),
            }
        })
        .join()
        .unwrap_or_else(|_| Err("the GET thread panicked".into()))
    }

    /// GETs `url` until it answers (a server that was just started may not listen yet), for
    /// up to `timeout`; the body, or the last error.
    pub fn http_get_when_up(&self, addr: SocketAddr, timeout: Duration) -> Result<String, String> {
        let t = Instant::now();
        loop {
            match self.http_get(addr) {
                Ok(body) => return Ok(body),
                Err(e) if t.elapsed() >= timeout => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// `ip -o link` inside the namespace.
    pub fn links(&self) -> String {
        self.ip(&["-n", &self.name, "-o", "link"])
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

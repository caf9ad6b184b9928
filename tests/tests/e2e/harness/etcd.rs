//! Real etcd for the tests (Debian's `etcd-server`): clusters of one or three members on free
//! loopback ports, stopped (SIGTERM, then SIGKILL) when dropped, failed test or not, and killed
//! by the kernel if the test process dies first (`setpriv --pdeathsig`); and one member shared
//! by every test of this process for the harness's `NEURO_TEST_STORE=etcd` switch, killed by
//! the kernel when the test process ends. A reaper removes their directories once the test
//! process is gone, however it ended.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `n` ports free on 127.0.0.1 at the time of the call.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// etcd, checked once it is needed: the test fails (never skips) when it is not installed.
fn etcd_bin() -> &'static str {
    super::tier::require_etcd();
    "etcd"
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of real etcd members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> Self {
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir: cluster_dir(),
            members,
            initial,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_for_leader(Duration::from_secs(20));
        c
    }

    /// Starts member `i`, which the kernel kills (SIGKILL) when this thread ends: a test
    /// process killed by a signal leaves no etcd behind.
    fn spawn(&mut self, i: usize) {
        let dir = self.dir.path().to_owned();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", etcd_bin()]);
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "neuro-tests"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        m.child = Some(cmd.spawn().expect("start etcd"));
    }

    /// `HOST:PORT,...` of every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcd://HOST:PORT,.../PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints())
    }

    /// Runs etcdctl against the members that are up.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let eps = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &eps, "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("etcdctl (Debian etcd-client) runs")
    }

    /// The index of the leader, by `etcdctl endpoint status`.
    pub fn leader(&self) -> Option<usize> {
        let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for st in v.as_array()? {
            let leader = st["Status"]["leader"].as_u64()?;
            let me = st["Status"]["header"]["member_id"].as_u64()?;
            if leader == me && leader != 0 {
                let ep = st["Endpoint"].as_str()?;
                return self
                    .members
                    .iter()
                    .position(|m| ep.ends_with(&format!(":{}", m.client)));
            }
        }
        None
    }

    pub fn wait_for_leader(&self, within: Duration) -> usize {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(
                t0.elapsed() < within,
                "etcd has no leader after {within:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL member `i`, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `HOST:PORT` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client)
    }

    /// `etcd://` URL listing the members in the order of `order`.
    pub fn url_in_order(&self, order: &[usize], prefix: &str) -> String {
        let eps: Vec<String> = order.iter().map(|&i| self.endpoint(i)).collect();
        format!("etcd://{}/{prefix}", eps.join(","))
    }

    /// Runs etcdctl against member `i` alone.
    pub fn etcdctl_on(&self, i: usize, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(i), "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("etcdctl (Debian etcd-client) runs")
    }

    /// SIGSTOP member `i`: a hung member (its sockets stay open, nothing answers).
    pub fn pause(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT member `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let c = self.members[i].child.as_ref().expect("member is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig)
            .expect("signal etcd");
    }

    /// SIGTERM member `i` and wait for it: a clean stop (a restart by systemd, an upgrade).
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &m.child {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                // A paused member would sit on SIGTERM until the SIGKILL.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        let t0 = Instant::now();
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                while t0.elapsed() < Duration::from_secs(3) {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The process's directory of clusters goes with its last cluster.
        let _ = std::fs::remove_dir_all(self.dir.path());
        if let Some(parent) = self.dir.path().parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Where this process's clusters keep their data: `/tmp/neuro-test-etcdc-PID/clusterXXXX`, so
/// that the next run removes what a killed run left (`remove_dead_shared_dirs`).
fn cluster_dir() -> tempfile::TempDir {
    remove_dead_shared_dirs();
    start_reaper();
    let parent = PathBuf::from(format!("/tmp/neuro-test-etcdc-{}", std::process::id()));
    for _ in 0..10 {
        // Another cluster's drop may remove the (empty) parent between these two calls.
        let _ = std::fs::create_dir_all(&parent);
        if let Ok(d) = tempfile::Builder::new()
            .prefix("cluster")
            .tempdir_in(&parent)
        {
            return d;
        }
    }
    panic!("cannot create a directory in '{}'", parent.display());
}

/// The member shared by every test of this process, started on first use by a thread that
/// never ends: the kernel kills etcd (`--pdeathsig KILL`) when the test process exits. Its
/// data lives in a directory named after this process, removed by the next run.
pub fn shared_endpoint() -> &'static str {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        remove_dead_shared_dirs();
        start_reaper();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ports = free_ports(2);
            let dir = PathBuf::from(format!("/tmp/neuro-test-etcd-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("shared etcd dir");
            let mut c = EtcdCluster {
                dir: tempfile::Builder::new()
                    .prefix("shared")
                    .tempdir_in(&dir)
                    .expect("tempdir"),
                members: vec![Member {
                    name: "shared".into(),
                    client: ports[0],
                    peer: ports[1],
                    child: None,
                }],
                initial: format!("shared=http://127.0.0.1:{}", ports[1]),
            };
            c.spawn(0);
            c.wait_for_leader(Duration::from_secs(20));
            tx.send(c.endpoints()).expect("send endpoint");
            // Keep `c` (and this thread, the parent of etcd) alive until the process exits.
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the shared etcd started")
    })
}

/// Once per process: a `sh` that waits for this process to end (however it ends) and then
/// removes its etcd directories, so that no run leaves them behind (the shared member's is
/// never dropped).
// The reaper outlives this process by design: it is never waited for.
#[allow(clippy::zombie_processes)]
fn start_reaper() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let pid = std::process::id();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
             rm -rf /tmp/neuro-test-etcd-{pid} /tmp/neuro-test-etcdc-{pid}"
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the etcd directory reaper (sh)");
    });
}

fn remove_dead_shared_dirs() {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("neuro-test-etcd-")
            .or_else(|| name.strip_prefix("neuro-test-etcdc-"))
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

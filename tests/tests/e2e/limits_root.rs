//! secretd under pressure: connections that never finish their headers (plain and TLS), an
//! open-file limit below the number of clients, a full disk (root: tmpfs in `unshare -m`), and
//! the modes of the files it creates under umask 000.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::http_json as http;
use crate::harness::tier::require_root;
use crate::harness::{b64, bin, self_signed_localhost_cert};

/// A `secretd` started through a wrapper command (`prlimit`, `unshare`, `sh -c 'umask ...'`).
/// Killed and waited for on drop; whatever the wrapper mounted dies with its namespace.
struct Secretd {
    child: Option<Child>,
    addr: String,
    stderr_path: PathBuf,
}

impl Secretd {
    fn start(wrapper: &[&str], data_dir: &Path, extra: &[&str], stderr_path: PathBuf) -> Self {
        let mut cmd = Command::new(wrapper.first().copied().unwrap_or("env"));
        cmd.args(wrapper.iter().skip(1))
            .arg(bin("secretd"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let mut child = cmd.spawn().expect("start secretd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("secretd listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "secretd did not start: {line:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let addr = url.split("://").nth(1).unwrap().to_owned();
        Secretd {
            child: Some(child),
            addr,
            stderr_path,
        }
    }

    /// Creates user `name` as the operator (whose token is in `data_dir`); returns its token.
    #[track_caller]
    fn add_user(&self, data_dir: &Path, name: &str) -> String {
        let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
        let body = format!(r#"{{"name":"{name}"}}"#);
        let r = http(
            &self.addr,
            "POST",
            "/api/v1/admin/users",
            Some(admin.trim()),
            Some(&body),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["token"].as_str().unwrap().to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits up to 5 s for secretd to log a line containing `needle`.
    #[track_caller]
    fn assert_logged(&self, needle: &str) {
        let t = Instant::now();
        while !self.stderr().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "secretd did not log {needle:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; the exit status and how long the exit took.
    fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = c.wait().unwrap();
        (st, t.elapsed())
    }

    /// User plus system CPU time so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as u64;
        Duration::from_millis((f[0] + f[1]) * 1000 / hz)
    }
}

impl Drop for Secretd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// This test process holds thousands of sockets.
fn raise_own_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4500,
        "the test needs 4500 open files, hard limit {hard}"
    );
}

/// A ping over a fresh connection: its status and how long it took.
fn ping(addr: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = http(addr, "GET", "/api/v1/ping", None, None).expect("ping");
    (r.status, t.elapsed())
}

/// Whether the server has closed `s` (EOF or reset); never blocks.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// A held connection: when it was opened, how long it lived, whether it drips its header.
struct Held {
    s: TcpStream,
    opened: Instant,
    life: Option<Duration>,
    drip: bool,
}

/// Watches until every held connection is closed or `limit` passes; drips one header byte
/// every 200 ms on the `drip` ones.
fn watch_closes(held: &mut [Held], limit: Duration) {
    let t = Instant::now();
    let mut last_drip = Instant::now();
    while held.iter().any(|h| h.life.is_none()) && t.elapsed() < limit {
        let drip_now = last_drip.elapsed() >= Duration::from_millis(200);
        for h in held.iter_mut().filter(|h| h.life.is_none()) {
            if closed(&mut h.s) {
                h.life = Some(h.opened.elapsed());
            } else if h.drip && drip_now {
                let _ = h.s.write_all(b"X");
            }
        }
        if drip_now {
            last_drip = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lives(held: &[Held], pick: impl Fn(&Held) -> bool) -> (Duration, Duration, usize) {
    let l: Vec<Duration> = held
        .iter()
        .filter(|h| pick(h))
        .map(|h| h.life.unwrap_or(Duration::MAX))
        .collect();
    (
        *l.iter().min().unwrap(),
        *l.iter().max().unwrap(),
        l.iter().filter(|d| **d == Duration::MAX).count(),
    )
}

#[test]
fn secretd_help_documents_the_connection_limits() {
    let o = Command::new(bin("secretd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--max-connections",
        "default 4096",
        "--header-timeout",
        "default 10s, at most 10s",
        "--idle-timeout",
        "default 5s",
        "open-file limit minus 64",
        "idle the longest is closed",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    for bad in [
        ["--header-timeout", "11s"],
        ["--idle-timeout", "50ms"],
        ["--max-connections", "3"],
    ] {
        let o = Command::new(bin("secretd")).args(bad).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
}

/// 2,000 connections that never finish their headers: ping still answers at once, the silent
/// ones are closed after --idle-timeout, one that sends a header byte every 200 ms after
/// --header-timeout, a kept-alive one after --idle-timeout; SIGTERM then exits 0 at once.
#[test]
fn idle_and_slow_connections_are_closed_and_ping_answers_meanwhile() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Secretd::start(
        &[],
        &dir.path().join("data"),
        &["--header-timeout", "2s", "--idle-timeout", "1s"],
        dir.path().join("stderr"),
    );
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        }
        s.set_nonblocking(true).unwrap();
        held.push(Held {
            s,
            opened: Instant::now(),
            life: None,
            drip: i == 1999,
        });
    }
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let (status, took) = ping(&srv.addr);
        assert_eq!(status, 200);
        worst = worst.max(took);
    }
    assert!(worst < Duration::from_millis(500), "ping took {worst:?}");

    // A kept-alive connection after one answer.
    let mut ka = TcpStream::connect(&srv.addr).unwrap();
    ka.write_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = ka.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    ka.set_nonblocking(true).unwrap();
    held.push(Held {
        s: ka,
        opened: Instant::now(),
        life: None,
        drip: false,
    });

    watch_closes(&mut held, Duration::from_secs(8));
    let (lo, hi, open) = lives(&held, |h| !h.drip);
    eprintln!("idle connections lived {lo:?}..{hi:?}");
    assert_eq!(open, 0, "idle connections still open after 8 s");
    assert!(
        lo >= Duration::from_millis(900) && hi <= Duration::from_millis(2500),
        "idle connections lived {lo:?}..{hi:?}, not about --idle-timeout 1s"
    );
    let (drip, _, open) = lives(&held, |h| h.drip);
    eprintln!("the dripping connection lived {drip:?}");
    assert_eq!(open, 0, "the dripping connection is still open");
    assert!(
        drip >= Duration::from_millis(1900) && drip <= Duration::from_millis(3500),
        "the dripping connection lived {drip:?}, not about --header-timeout 2s"
    );
    assert_eq!(ping(&srv.addr).0, 200);

    // Shutdown with silent connections open: exit 0 without waiting for them.
    let _silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&srv.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (st, took) = srv.stop();
    assert!(st.success(), "{st:?}\n{}", srv.stderr());
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

/// The same over TLS: idle connections after the handshake are closed after --idle-timeout,
/// ones that never start the handshake after --header-timeout, and ping answers meanwhile.
/// The client is python3's ssl module.
#[test]
fn idle_tls_connections_are_closed_and_ping_answers_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_localhost_cert(dir.path());
    let srv = Secretd::start(
        &[],
        &dir.path().join("data"),
        &[
            "--header-timeout",
            "2s",
            "--idle-timeout",
            "1s",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        dir.path().join("stderr"),
    );
    let script = r#"
import json, socket, ssl, sys, time, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port = sys.argv[1].rsplit(":", 1); port = int(port)
ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
held = []
for i in range(300):
    raw = socket.create_connection((host, port))
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    if i % 2: s.sendall(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\n")
    held.append(("tls", s, time.monotonic()))
for i in range(100):
    held.append(("raw", socket.create_connection((host, port)), time.monotonic()))
pings = []
for i in range(5):
    t = time.monotonic()
    s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
    s.sendall(b"GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(4096)
        if not d: break
        data += d
    pings.append([data.split(b" ")[1].decode(), time.monotonic() - t])
    s.close()
for _, s, _ in held: s.setblocking(False)
lives = {"tls": [], "raw": []}
left = list(held)
deadline = time.monotonic() + 8
while left and time.monotonic() < deadline:
    keep = []
    for kind, s, t in left:
        try:
            d = s.recv(100)
            gone = d == b""
        except (BlockingIOError, ssl.SSLWantReadError):
            gone = False
        except (ConnectionError, ssl.SSLError, OSError):
            gone = True
        if gone: lives[kind].append(time.monotonic() - t)
        else: keep.append((kind, s, t))
    left = keep
    time.sleep(0.02)
print(json.dumps({"pings": pings, "lives": lives, "open": len(left)}))
"#;
    let o = Command::new("python3")
        .args(["-c", script, &srv.addr, cert.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        srv.stderr()
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("{r}");
    for p in r["pings"].as_array().unwrap() {
        assert_eq!(p[0], "200", "{r}");
        assert!(p[1].as_f64().unwrap() < 0.5, "ping took {}s", p[1]);
    }
    assert_eq!(r["open"], 0, "connections still open after 8 s: {r}");
    let range = |kind: &str| {
        let l: Vec<f64> = r["lives"][kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (
            l.iter().copied().fold(f64::MAX, f64::min),
            l.iter().copied().fold(0.0, f64::max),
            l.len(),
        )
    };
    let (lo, hi, n) = range("tls");
    assert_eq!(n, 300);
    assert!(
        lo >= 0.9 && hi <= 3.0,
        "idle TLS connections lived {lo}..{hi}s, not about --idle-timeout 1s"
    );
    let (lo, hi, n) = range("raw");
    assert_eq!(n, 100);
    assert!(
        lo >= 1.9 && hi <= 4.0,
        "connections without a handshake lived {lo}..{hi}s, not about --header-timeout 2s"
    );
}

/// Under `prlimit --nofile=256:256` the cap is 256 - 64 = 192; 400 silent connections (more
/// than the limit) are open and ping still answers, by evicting the longest idle ones. Then
/// the limit of the running process is lowered below what it holds, so that accept fails with
/// EMFILE: the loop neither stops nor spins, and ping answers again.
#[test]
fn ping_answers_with_more_connections_than_the_fd_limit() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let srv = Secretd::start(
        &["prlimit", "--nofile=256:256", "--"],
        &dir.path().join("data"),
        &["--header-timeout", "10s", "--idle-timeout", "10s"],
        dir.path().join("stderr"),
    );
    srv.assert_logged("max_connections=192 fd_limit=256");
    let mut held: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(&srv.addr).unwrap())
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (status, took) = ping(&srv.addr);
        assert_eq!(status, 200, "{}", srv.stderr());
        worst = worst.max(took);
    }
    srv.add_user(&dir.path().join("data"), "alice");
    std::thread::sleep(Duration::from_millis(300));
    for s in &held {
        s.set_nonblocking(true).unwrap();
    }
    let open = held.iter_mut().map(|s| !closed(s)).filter(|o| *o).count();
    eprintln!("pings at the cap: worst {worst:?}; {open} of 400 held connections still open");
    assert!(worst < Duration::from_secs(1), "ping took {worst:?}");
    assert!(open <= 192, "{open} connections open, above the cap of 192");

    // Leave the process no descriptor at all (its own files take more than 8): every accept
    // fails with EMFILE. The loop must neither spin nor stop, and once the limit is back, the
    // ping waiting in the kernel's queue is answered.
    let prlimit = |n: u32| {
        let st = Command::new("prlimit")
            .args([
                "--pid",
                &srv.pid().to_string(),
                &format!("--nofile={n}:256"),
            ])
            .status()
            .unwrap();
        assert!(st.success());
    };
    prlimit(8);
    let cpu_before = srv.cpu();
    let addr = srv.addr.clone();
    let waiting = std::thread::spawn(move || {
        let t = Instant::now();
        (ping(&addr).0, t.elapsed())
    });
    std::thread::sleep(Duration::from_secs(2));
    let cpu = srv.cpu() - cpu_before;
    srv.assert_logged("cannot accept a connection");
    prlimit(256);
    let (status, took) = waiting.join().unwrap();
    eprintln!(
        "out of descriptors for 2 s: secretd used {cpu:?} CPU; the queued ping took {took:?}"
    );
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(4),
        "the queued ping took {took:?}"
    );
    assert!(
        cpu < Duration::from_millis(500),
        "the accept loop spins: {cpu:?} CPU in 2 s"
    );
    assert_eq!(ping(&srv.addr).0, 200);
    drop(held);
}

/// Under umask 000 the files secretd creates are 0600 anyway; an existing store open to
/// others is narrowed to 0600, a store that is a symbolic link and an operator token open to
/// the group are refused, each with a message that names the file.
#[test]
fn files_are_private_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let umask0 = ["sh", "-c", r#"umask 000; exec "$0" "$@""#];
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let mut srv = Secretd::start(&umask0, &data, &[], dir.path().join("stderr1"));
    assert_eq!(ping(&srv.addr).0, 200);
    let (st, _) = srv.stop();
    assert!(st.success());
    for f in ["master.key", "admin.token", "secrets.redb"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    assert_eq!(mode(""), 0o700, "the data directory");

    let chmod = |name: &str, m: u32| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(m)).unwrap();
    };
    chmod("secrets.redb", 0o644);
    let mut srv = Secretd::start(&umask0, &data, &[], dir.path().join("stderr2"));
    assert_eq!(mode("secrets.redb"), 0o600);
    assert!(
        srv.stderr().contains("its mode is now 600"),
        "{}",
        srv.stderr()
    );
    srv.stop();

    let start_fails = |what: &str| {
        let o = Command::new(bin("secretd"))
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(o.stdout.is_empty(), "{what}: started");
        err
    };
    chmod("admin.token", 0o640);
    let err = start_fails("admin.token 0640");
    let want = format!(
        "operator token '{}' has mode 640; it must not be readable by group or others (chmod 600)",
        data.join("admin.token").display()
    );
    assert!(err.contains(&want), "{err}");
    chmod("admin.token", 0o600);

    std::fs::rename(data.join("secrets.redb"), dir.path().join("elsewhere.redb")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere.redb"), data.join("secrets.redb"))
        .unwrap();
    let err = start_fails("secrets.redb a symlink");
    let want = format!(
        "store '{}' is a symbolic link",
        data.join("secrets.redb").display()
    );
    assert!(err.contains(&want), "{err}");
}

/// The data directory on a 4 MiB tmpfs (in secretd's private mount namespace): with the disk
/// full a write fails, and once space is freed the next write succeeds without a restart, and
/// every write acknowledged before the fault reads back.
#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn writes_recover_after_the_disk_was_full_root() {
    require_root("a tmpfs in a private mount namespace");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let srv = Secretd::start(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=4m,mode=700 secretd-test "$0" && exec "$@""#,
            mnt.to_str().unwrap(),
        ],
        &mnt.join("data"),
        &[],
        dir.path().join("stderr"),
    );
    let in_ns = |script: &str| {
        Command::new("nsenter")
            .args(["-t", &srv.pid().to_string(), "-m", "sh", "-c", script])
            .arg(&mnt)
            .status()
            .unwrap()
    };
    // The token file is inside the namespace only.
    let out = Command::new("nsenter")
        .args(["-t", &srv.pid().to_string(), "-m", "cat"])
        .arg(mnt.join("data/admin.token"))
        .output()
        .unwrap();
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(admin.starts_with("nst."), "no operator token");
    let r = http(
        &srv.addr,
        "POST",
        "/api/v1/admin/users",
        Some(&admin),
        Some(r#"{"name":"alice"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let alice = r.json()["token"].as_str().unwrap().to_owned();
    let put = |key: &str, value: &[u8]| {
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(value));
        http(
            &srv.addr,
            "POST",
            "/api/v1/secrets",
            Some(&alice),
            Some(&body),
        )
        .unwrap()
    };
    let mut acked = Vec::new();
    for i in 0..10 {
        let (k, v) = (format!("k{i}"), vec![b'a' + i as u8; 1000]);
        assert_eq!(put(&k, &v).status, 201);
        acked.push((k, v));
    }

    // Fill the disk (cat stops at ENOSPC), then write until a write fails.
    in_ns(r#"cat /dev/zero > "$0/filler" 2>/dev/null; true"#);
    let big = vec![b'z'; 512 * 1024];
    let mut failed = None;
    for i in 0..16 {
        let r = put(&format!("big{i}"), &big);
        match r.status {
            201 => acked.push((format!("big{i}"), big.clone())),
            _ => {
                failed = Some(r);
                break;
            }
        }
    }
    let failed = failed.expect("no write failed on the full disk");
    assert_eq!(failed.status, 500, "{}", failed.body);
    // Unhealthy while the store cannot write: ping says so instead of Pong.
    let p = http(&srv.addr, "GET", "/api/v1/ping", None, None).unwrap();
    assert_eq!(p.status, 503, "{}", p.body);
    assert!(p.body.contains("the store cannot write"), "{}", p.body);
    assert!(
        in_ns(r#"rm "$0/filler""#).success(),
        "cannot free the space"
    );
    // Healthy again without a write from a client (its own probe, at most once a second).
    let t0 = std::time::Instant::now();
    while http(&srv.addr, "GET", "/api/v1/ping", None, None)
        .unwrap()
        .status
        != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "ping stays unhealthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // No restart: the next write goes through.
    let r = put("after", b"after the fault");
    assert_eq!(r.status, 201, "{}\n{}", r.body, srv.stderr());
    acked.push(("after".into(), b"after the fault".to_vec()));
    for (k, v) in &acked {
        let r = http(
            &srv.addr,
            "GET",
            &format!("/api/v1/secrets/alice/{k}"),
            Some(&alice),
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{k}: {}", r.body);
        assert_eq!(r.json()["value"], b64(v), "{k}");
    }
    srv.assert_logged("re-opened the store");
}

/// A client with a valid token sends request heads and then trickles their bodies, a byte a
/// second (never silent long enough for the idle timeout): it may hold only its token's share
/// of the connections busy; everyone else, and ping, keep being served.
#[test]
fn a_token_trickling_bodies_cannot_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A cap of 64: a user may hold 16 requests in flight, one token 16.
    let srv = Secretd::start(
        &[],
        &data,
        &["--max-connections", "64"],
        dir.path().join("stderr"),
    );
    srv.assert_logged("per_token=16 per_user=16");
    let token = srv.add_user(&data, "mallory");
    let head = format!(
        "POST /api/v1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{{"
    );
    let mut conns: Vec<TcpStream> = (0..80)
        .map(|_| {
            let mut s = TcpStream::connect(&srv.addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Those over the token's share are told so at once (or, once answered and idle, closed
    // to make room for the next): at most the share is held.
    let (mut refused, mut held) = (0, 0);
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(n) if String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 429") => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held += 1,
            _ => {}
        }
    }
    assert!(held <= 16, "{held} of 80 held ({refused} refused with 429)");
    assert!(refused > 0, "none refused with 429");
    // Trickle for longer than the idle timeout while others ping.
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    while t0.elapsed() < Duration::from_secs(7) {
        for s in &mut conns {
            let _ = s.write_all(b" ");
        }
        for _ in 0..5 {
            let (st, took) = ping(&srv.addr);
            assert_eq!(st, 200);
            worst = worst.max(took);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("{refused} of 80 refused with 429, {held} held; worst ping {worst:?}");
    assert!(worst < Duration::from_secs(2), "{worst:?}");
}

/// Nobody without a token can hold the connections: 16 sockets (the whole cap) each send a
/// console form's head and then one body byte every 2 s (never silent for the idle timeout).
/// Requests without a token have their own budget (a quarter of the cap, a quarter of that
/// per address), so ping and a user's request keep being answered; and a body that has not
/// arrived after 30 s gets 408 on the console's routes as on the API's.
#[test]
fn nobody_without_a_token_holds_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let srv = Secretd::start(
        &[],
        &data,
        &["--max-connections", "16"],
        dir.path().join("stderr"),
    );
    let alice = srv.add_user(&data, "alice");
    let mut conns: Vec<(TcpStream, Option<String>)> = ["/console/secrets", "/login", "/logout"]
        .iter()
        .cycle()
        .take(16)
        .map(|path| {
            let mut s = TcpStream::connect(&srv.addr).unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nOrigin: http://{}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 100000\r\n\r\nt",
                srv.addr, srv.addr
            );
            s.write_all(head.as_bytes()).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, None)
        })
        .collect();
    // Reads whatever each socket got: the status line of its answer, once.
    let poll = |conns: &mut Vec<(TcpStream, Option<String>)>| {
        for (s, got) in conns.iter_mut().filter(|(_, g)| g.is_none()) {
            let mut b = [0u8; 512];
            match s.read(&mut b) {
                Ok(0) => *got = Some("closed".into()),
                Ok(n) => {
                    let text = String::from_utf8_lossy(&b[..n]).into_owned();
                    *got = Some(text.lines().next().unwrap_or("").to_owned());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *got = Some("reset".into()),
            }
        }
    };
    // The answers refusing all but the address's share come at once (within 10 s on a
    // loaded machine); until they have, every slot holds a request in flight.
    let t0 = Instant::now();
    while conns.iter().filter(|(_, g)| g.is_some()).count() < 12 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no refusals: {:?}",
            conns.iter().map(|(_, g)| g.clone()).collect::<Vec<_>>()
        );
        poll(&mut conns);
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{:?} until the refusals", t0.elapsed());
    let mut worst = Duration::ZERO;
    let mut last_byte = Instant::now();
    while t0.elapsed() < Duration::from_secs(36) {
        if last_byte.elapsed() >= Duration::from_secs(2) {
            for (s, got) in conns.iter_mut() {
                if got.is_none() {
                    let _ = s.write_all(b"a");
                }
            }
            last_byte = Instant::now();
        }
        poll(&mut conns);
        if t0.elapsed() < Duration::from_secs(10) {
            let (st, took) = ping(&srv.addr);
            assert_eq!(st, 200);
            worst = worst.max(took);
            let r = http(&srv.addr, "GET", "/api/v1/secrets", Some(&alice), None).unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
        if conns.iter().all(|(_, g)| g.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let got: Vec<String> = conns
        .iter()
        .map(|(_, g)| g.clone().unwrap_or_else(|| "still trickling".into()))
        .collect();
    eprintln!(
        "worst ping {worst:?}; answers {got:?} after {:?}",
        t0.elapsed()
    );
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    let timed_out = got.iter().filter(|g| g.starts_with("HTTP/1.1 408")).count();
    assert!(timed_out >= 1, "no body timed out with 408: {got:?}");
    assert!(
        got.iter().all(|g| g != "still trickling"),
        "a trickling body outlived the body deadline: {got:?}"
    );
    let refused = got.iter().filter(|g| g.starts_with("HTTP/1.1 429")).count();
    assert!(refused >= 12, "{refused} of 16 refused with 429: {got:?}");
}

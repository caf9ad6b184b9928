//! Starts the real binaries: `secretd` on a loopback port with a fresh data directory, and
//! `neuro` as separate users, each with its own config directory. Every output is kept so a
//! test can search all of it for values and tokens.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod etcd;
pub mod podman;
pub mod secretfs;
pub mod tier;

/// Writes `bytes` to `path` with mode 0600 (what secretd wants of a key or token file).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).expect("write a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Starts `secretd ARGS` on `data_dir` expecting it to fail: `(exit code, stderr)`. A secretd
/// that is still running after 20 s is killed and the test fails.
#[track_caller]
pub fn secretd_start_fails(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let err = data_dir.with_extension("stderr");
    let mut child = Command::new(bin("secretd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start secretd");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait secretd") {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "secretd {args:?} was expected to fail but still runs after 20 s: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    (status.code().unwrap_or(-1), stderr)
}

/// The store every `Server` runs on unless a test names one: `NEURO_TEST_STORE` (`embedded`,
/// the default, or `etcd`, a key prefix per server on one etcd member shared by the tests).
pub fn store_under_test() -> String {
    match std::env::var("NEURO_TEST_STORE") {
        Ok(s) if s == "etcd" && !cfg!(feature = "etcd") => {
            panic!("NEURO_TEST_STORE=etcd needs the etcd tier: --features secrets-tests/etcd")
        }
        Ok(s) if s == "etcd" || s == "embedded" => s,
        Ok(s) if !s.is_empty() => panic!("NEURO_TEST_STORE={s}: expected embedded or etcd"),
        _ => "embedded".into(),
    }
}

/// Where cargo put the workspace's binaries: next to this test's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<triple>/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// The documents of a YAML stream (what `neuro job manifest` prints).
pub fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect()
}

/// The README's seed job's mappings: secret `secret-password` as a file under /var/secrets and
/// as `$mypass`, beside a plain variable.
pub const SEED_JOB_MAPPINGS: [&str; 6] = [
    "--volume",
    "secret:secret-password:/var/secrets/secret-password.txt",
    "--env",
    "mypass:secret:secret-password",
    "--env",
    "PLAIN=plain value",
];

/// A self-signed certificate for `localhost` and its key, written to `DIR/cert.pem` and
/// `DIR/key.pem`; returns those two paths.
pub fn self_signed_localhost_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// Everything printed by every process a test started, for leak searches.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<Vec<(String, Vec<u8>)>>>);

impl Transcript {
    pub fn add(&self, label: impl Into<String>, bytes: &[u8]) {
        self.0.lock().unwrap().push((label.into(), bytes.to_vec()));
    }

    /// Labels of the outputs that contain `needle`.
    pub fn find(&self, needle: &[u8]) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| contains(b, needle))
            .map(|(l, _)| l.clone())
            .collect()
    }
}

pub fn b64(b: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A running `secretd`. Killed (and waited for) on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: String,
    child: Option<Child>,
    extra: Vec<String>,
    pub transcript: Transcript,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&["--cluster", "neuro-compute"])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if store_under_test() == "etcd" && !extra.iter().any(|a| a == "--store") {
            // Each server gets its own key prefix on the shared etcd member.
            let name = dir
                .path()
                .file_name()
                .expect("tempdir name")
                .to_string_lossy();
            let prefix: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
            extra.push("--store".into());
            extra.push(format!("etcd://{}/test-{prefix}", etcd::shared_endpoint()));
        }
        let mut s = Server {
            dir,
            url: String::new(),
            addr: "127.0.0.1:0".into(),
            child: None,
            extra,
            transcript: Transcript::default(),
        };
        s.spawn();
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("secretd.stderr"))
            .expect("stderr file");
        let mut child = Command::new(bin("secretd"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen", &self.addr])
            .args(&self.extra)
            .env(
                "RUST_LOG",
                "debug,h2=info,tower=info,hyper_util=info,tonic=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start secretd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read secretd's first line");
        let url = line
            .trim()
            .strip_prefix("secretd listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "unexpected first line from secretd: {line:?}; stderr: {}",
                    self.stderr()
                )
            })
            .to_owned();
        self.addr = url
            .split("://")
            .nth(1)
            .expect("url has an address")
            .to_owned();
        self.url = url;
        self.child = Some(child);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("secretd.stderr")).unwrap_or_default()
    }

    /// Every byte the store holds: the embedded store's file, or `etcdctl get --prefix` of the
    /// server's prefix on etcd. Tests search it for values, tokens and session ids.
    pub fn store_bytes(&self) -> Vec<u8> {
        let store = self
            .extra
            .iter()
            .position(|a| a == "--store")
            .and_then(|i| self.extra.get(i + 1));
        match store.and_then(|s| s.strip_prefix("etcd://")) {
            Some(rest) => {
                let (eps, prefix) = rest.split_once('/').expect("etcd URL with a prefix");
                let out = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        eps,
                        "get",
                        "--prefix",
                        &format!("/{prefix}/"),
                    ])
                    .output()
                    .expect("etcdctl runs");
                assert!(out.status.success(), "etcdctl get failed");
                out.stdout
            }
            None => std::fs::read(self.data_dir().join("secrets.redb")).expect("secrets.redb"),
        }
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("audit.log")).unwrap_or_default()
    }

    /// Waits up to 3 s for the audit writer to log a line containing `needle`.
    #[track_caller]
    pub fn assert_audited(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !self.audit_log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "audit log lacks {needle:?}:\n{}",
                self.audit_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the running secretd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("secretd is running").id()
    }

    /// A line of /proc/PID/status of secretd, e.g. `VmHWM`, in kB.
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of secretd");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9 secretd");
            c.wait().expect("wait secretd");
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("secretd is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        c.wait().expect("wait secretd")
    }

    /// SIGTERM, then waits at most `within`; `None` (after a SIGKILL) when it did not exit.
    pub fn stop_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take().expect("secretd is running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < within {
            if let Some(st) = c.try_wait().expect("wait secretd") {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A fresh secretd with `names` created as users; returns it and their tokens, in order.
    pub fn start_with_users(names: &[&str]) -> (Server, Vec<String>) {
        let srv = Server::start();
        let tokens = srv.add_users(names);
        (srv, tokens)
    }

    /// A fresh secretd and `neuro` logged in as its user alice, who has added `key` = `value`
    /// through the CLI.
    pub fn start_with_alice_owning(key: &str, value: &str) -> (Server, Neuro) {
        let (srv, t) = Server::start_with_users(&["alice"]);
        let alice = srv.user("alice", &t[0]);
        alice.ok(&["secret", "add", key, value]);
        (srv, alice)
    }

    /// A `neuro` runner with its own config directory, logged in with `token`.
    pub fn user(&self, name: &str, token: &str) -> Neuro {
        let n = Neuro::new(self, name);
        n.ok(&["login", "--url", &self.url, "--token", token]);
        n
    }

    /// Creates users through the operator's CLI; returns their tokens.
    pub fn add_users(&self, names: &[&str]) -> Vec<String> {
        let op = self.user("operator", &self.admin_token());
        names
            .iter()
            .map(|n| {
                let out = op.ok(&["admin", "user", "add", n]);
                out.stdout_str().trim().to_owned()
            })
            .collect()
    }

    /// Creates or overwrites `key` as the token's user, through the API.
    #[track_caller]
    pub fn put(&self, token: &str, key: &str, value: &[u8]) {
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(value));
        let r = self.http("POST", "/api/v1/secrets", Some(token), Some(&body));
        assert_eq!(r.status, 201, "{}", r.body);
    }

    /// Grants `grantee` read on `uri`, as the user of `token`, through the API.
    #[track_caller]
    pub fn share(&self, token: &str, uri: &str, grantee: &str) {
        let body = format!(r#"[{{"uri":"{uri}","action":"read"}}]"#);
        let r = self.http(
            "POST",
            &format!("/api/v1/users/{grantee}/permissions"),
            Some(token),
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }

    /// `GET path` as the user of `token`.
    pub fn get(&self, token: &str, path: &str) -> Reply {
        self.http("GET", path, Some(token), None)
    }

    /// `DELETE path` as the user of `token`.
    pub fn delete(&self, token: &str, path: &str) -> Reply {
        self.http("DELETE", path, Some(token), None)
    }

    /// `POST path` with a JSON `body` as the user of `token`.
    pub fn post(&self, token: &str, path: &str, body: &str) -> Reply {
        self.http("POST", path, Some(token), Some(body))
    }

    /// One HTTP/1.1 request over a fresh loopback connection.
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        http_json(&self.addr, method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn http_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Reply {
        http(&self.addr, method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!("HTTP {} body is not JSON ({e}): {}", self.status, self.body)
        })
    }
}

/// `http` with an optional JSON body.
pub fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let body = body.map(|b| ("application/json", b.as_bytes()));
    http(addr, method, path, token, body)
}

/// One HTTP/1.1 request to `addr` over a fresh connection; `body` is (content type, bytes).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ct, bytes) = body.unwrap_or(("", b""));
    if !ct.is_empty() {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Reply {
        status,
        body: body.to_owned(),
    })
}

/// `neuro` as one user.
pub struct Neuro {
    pub config_home: PathBuf,
    transcript: Transcript,
    name: String,
}

/// What a `neuro` run printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Neuro {
    pub fn new(server: &Server, name: &str) -> Self {
        let config_home = server.dir.path().join(format!("config-{name}"));
        std::fs::create_dir_all(&config_home).expect("config dir");
        Neuro {
            config_home,
            transcript: server.transcript.clone(),
            name: name.to_owned(),
        }
    }

    /// Runs `neuro ARGS` with `stdin`. `secret_stdout`: this command's job is to print a value
    /// or a token, so its stdout is left out of leak searches.
    pub fn run_full(&self, args: &[&str], stdin: &[u8], secret_stdout: bool) -> Out {
        let mut child = Command::new(bin("neuro"))
            .args(args)
            .env_remove("NEURO_URL")
            .env_remove("NEURO_TOKEN")
            .env_remove("NEURO_CA_FILE")
            .env("XDG_CONFIG_HOME", &self.config_home)
            .env("HOME", &self.config_home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start neuro");
        let mut sin = child.stdin.take().expect("stdin");
        sin.write_all(stdin).expect("write stdin");
        drop(sin);
        let o = child.wait_with_output().expect("neuro output");
        let label = format!(
            "{} $ neuro {}",
            self.name,
            args.first().copied().unwrap_or("")
        );
        if !secret_stdout {
            self.transcript.add(format!("{label} (stdout)"), &o.stdout);
        }
        self.transcript.add(format!("{label} (stderr)"), &o.stderr);
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_full(args, b"", false)
    }

    /// Runs and asserts exit code 0 (token-printing commands are kept out of leak searches).
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Out {
        let secret = matches!(args, ["admin", "user" | "token", "add", ..]);
        let o = self.run_full(args, b"", secret);
        assert_eq!(o.code, 0, "neuro {args:?} failed: {}", o.stderr);
        o
    }

    /// Runs and asserts the exit code and that stderr is one `ERROR:` line containing `msg`.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32, msg: &str) -> Out {
        let o = self.run(args);
        assert_eq!(o.code, code, "neuro {args:?}: stderr {:?}", o.stderr);
        assert!(
            o.stderr.starts_with("ERROR: ") && o.stderr.lines().count() == 1,
            "neuro {args:?}: stderr is not one ERROR line: {:?}",
            o.stderr
        );
        assert!(
            o.stderr.contains(msg),
            "neuro {args:?}: {:?} lacks {msg:?}",
            o.stderr
        );
        o
    }
}

/// Runs `neuro ARGS` and asserts a refused argument value: bad input (exit 65), one
/// `ERROR:` line that names the argument and contains `msg`.
#[track_caller]
pub fn bad_value(neuro: &Neuro, args: &[&str], msg: &str) -> Out {
    let o = neuro.run(args);
    assert_eq!(o.code, 65, "neuro {args:?}: stderr {:?}", o.stderr);
    assert!(
        o.stderr.starts_with("ERROR: invalid value ") && o.stderr.lines().count() == 1,
        "neuro {args:?}: not one ERROR line naming the argument: {:?}",
        o.stderr
    );
    assert!(
        o.stderr.contains(msg),
        "neuro {args:?}: {:?} lacks {msg:?}",
        o.stderr
    );
    o
}

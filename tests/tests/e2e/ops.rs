//! Operations: the Prometheus metrics (parsed with a Prometheus text parser), the health
//! probes (`/readyz` unready on a full disk and on a failing audit log), the JSON service log,
//! completions and man pages, `--output json` of neuro's listings, and graceful shutdown
//! under load.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::tier::require_root;
use crate::harness::{Server, b64, bin, http_json};

/// The `--metrics-listen` address secretd logged (text log: `... addr=IP:PORT`).
fn metrics_addr(srv: &Server) -> String {
    let t = Instant::now();
    loop {
        if let Some(line) = srv
            .stderr()
            .lines()
            .find(|l| l.contains("serving /metrics"))
        {
            let at = line.find("addr=").expect("addr= in the log line") + 5;
            return line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{}", srv.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics`, parsed.
fn scrape(addr: &str, token: Option<&str>) -> (prometheus_parse::Scrape, String) {
    let r = http_json(addr, "GET", "/metrics", token, None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    (parsed, r.body)
}

/// The value of `name` with `labels` (a histogram: its count); 0 when absent.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map_or(0.0, |x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
}

#[test]
fn metrics_count_requests_by_route_and_name_no_secret() {
    let srv = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let t = srv.add_users(&["alice"]);
    let alice = t[0].clone();
    srv.put(&alice, "db-password", b"hunter2");
    let m = metrics_addr(&srv);
    let route = [("route", "/api/v1/secrets/:owner/:key"), ("method", "GET")];
    let ok = [route[0], route[1], ("status", "200")];
    let missing = [route[0], route[1], ("status", "404")];
    let (before, _) = scrape(&m, None);
    for _ in 0..3 {
        let r = srv.get(&alice, "/api/v1/secrets/alice/db-password");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(srv.get(&alice, "/api/v1/secrets/alice/nope").status, 404);
    let (after, text) = scrape(&m, None);
    let total = "secretd_http_requests_total";
    assert_eq!(value(&after, total, &ok) - value(&before, total, &ok), 3.0);
    assert_eq!(
        value(&after, total, &missing) - value(&before, total, &missing),
        1.0
    );
    let lat = "secretd_http_request_duration_seconds";
    assert_eq!(
        value(&after, lat, &route) - value(&before, lat, &route),
        4.0
    );
    let store = "secretd_store_operation_duration_seconds";
    let op = [("op", "get_secret")];
    assert!(value(&after, store, &op) - value(&before, store, &op) >= 4.0);
    assert!(value(&after, "secretd_connections_open", &[]) >= 1.0);
    let acc = "secretd_connections_accepted_total";
    assert!(value(&after, acc, &[]) - value(&before, acc, &[]) >= 4.0);
    assert_eq!(value(&after, "secretd_audit_writable", &[]), 1.0);
    // The first read opened the value, the other two found it opened.
    let hits = "secretd_value_cache_hits_total";
    let misses = "secretd_value_cache_misses_total";
    assert_eq!(value(&after, hits, &[]) - value(&before, hits, &[]), 2.0);
    assert_eq!(
        value(&after, misses, &[]) - value(&before, misses, &[]),
        1.0
    );
    assert_eq!(value(&after, "secretd_value_cache_entries", &[]), 1.0);
    assert!(value(&after, "secretd_value_cache_bytes", &[]) >= 7.0);
    assert!(text.contains("\nsecretd_audit_queue_depth "), "{text}");
    assert!(
        text.contains("\nsecretd_console_sessions_created_total "),
        "{text}"
    );
    // Labels hold route templates, never a user or secret name.
    for name in ["alice", "db-password", "nope"] {
        assert!(!text.contains(name), "'{name}' in the metrics:\n{text}");
    }

    // A watch waiting shows as a watcher.
    let rev = srv.get(&alice, "/api/v1/secrets/watch").json()["revision"]
        .as_u64()
        .unwrap();
    let (addr, a) = (srv.addr.clone(), alice.clone());
    let watch = std::thread::spawn(move || {
        let path = format!("/api/v1/secrets/watch?since={rev}&timeout_s=3");
        http_json(&addr, "GET", &path, Some(&a), None)
            .unwrap()
            .status
    });
    let t0 = Instant::now();
    while value(&scrape(&m, None).0, "secretd_watchers", &[]) != 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(3), "no watcher counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(watch.join().unwrap(), 200);
    assert_eq!(value(&scrape(&m, None).0, "secretd_watchers", &[]), 0.0);

    // On the API port: the operator only.
    let r = http_json(&srv.addr, "GET", "/metrics", None, None).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    let r = http_json(&srv.addr, "GET", "/metrics", Some(&alice), None).unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    let (op_view, _) = scrape(&srv.addr, Some(&srv.admin_token()));
    assert!(value(&op_view, total, &ok) >= 3.0);
}

/// A `secretd` started through a wrapper command; killed and waited for on drop.
struct Wrapped {
    child: Option<Child>,
    addr: String,
}

impl Wrapped {
    fn start(wrapper: &[&str], data_dir: &Path, stderr: &Path) -> Self {
        let mut child = Command::new(wrapper[0])
            .args(&wrapper[1..])
            .arg(bin("secretd"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut w = Wrapped {
            child: Some(child),
            addr: String::new(),
        };
        let url = line
            .trim()
            .strip_prefix("secretd listening on http://")
            .unwrap_or_else(|| panic!("secretd did not start: {line:?}"));
        w.addr = url.to_owned();
        w
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `/readyz` until its status is `want` (at most 5 s), running `between` before each try.
#[track_caller]
fn readyz_until(addr: &str, want: u16, mut between: impl FnMut()) -> serde_json::Value {
    let t = Instant::now();
    loop {
        between();
        let r = http_json(addr, "GET", "/readyz", None, None).unwrap();
        if r.status == want {
            return r.json();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "readyz stays {}: {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The data directory on a 4 MiB tmpfs: once a write fails on the full disk, /readyz answers
/// 503 naming the store (and /healthz still 200); ready again once space is freed.
#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn readyz_is_unready_while_the_store_cannot_write_root() {
    require_root("a tmpfs in a private mount namespace");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = r#"mount -t tmpfs -o size=4m,mode=700 ops-test "$0" && exec "$@""#;
    let srv = Wrapped::start(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            mnt.to_str().unwrap(),
        ],
        &mnt.join("data"),
        &dir.path().join("stderr"),
    );
    let in_ns = |script: &str| {
        Command::new("nsenter")
            .args(["-t", &srv.pid(), "-m", "sh", "-c", script])
            .arg(&mnt)
            .output()
            .unwrap()
    };
    let admin = String::from_utf8(in_ns(r#"cat "$0/data/admin.token""#).stdout).unwrap();
    let r = http_json(
        &srv.addr,
        "POST",
        "/api/v1/admin/users",
        Some(admin.trim()),
        Some(r#"{"name":"alice"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let alice = r.json()["token"].as_str().unwrap().to_owned();
    let ready = readyz_until(&srv.addr, 200, || {});
    assert_eq!(ready["ready"], true, "{ready}");

    in_ns(r#"cat /dev/zero > "$0/filler" 2>/dev/null; true"#);
    let big = format!(
        r#"{{"key":"big","value":"{}"}}"#,
        b64(vec![b'z'; 512 * 1024])
    );
    let failed = (0..16).any(|_| {
        let r = http_json(
            &srv.addr,
            "POST",
            "/api/v1/secrets",
            Some(&alice),
            Some(&big),
        );
        // 500 from the store, or 503 once the audit log (on the same disk) cannot write:
        // which comes first depends on the writer's timing.
        matches!(r.unwrap().status, 500 | 503)
    });
    assert!(failed, "no write failed on the full disk");
    let body = readyz_until(&srv.addr, 503, || {});
    assert_eq!(body["ready"], false, "{body}");
    let why = body["store"].as_str().unwrap();
    assert!(why.contains("the store cannot write"), "{body}");
    assert_eq!(body["audit"], "ok", "{body}");
    let h = http_json(&srv.addr, "GET", "/healthz", None, None).unwrap();
    assert_eq!(
        h.status, 200,
        "healthz must not look at the store: {}",
        h.body
    );

    let freed = in_ns(r#"rm "$0/filler""#);
    assert!(freed.status.success(), "cannot free the space");
    readyz_until(&srv.addr, 200, || {});
}

/// The audit log on a FIFO whose reader goes away: writes fail (EPIPE), /readyz answers 503
/// naming the audit log.
#[test]
fn readyz_is_unready_while_the_audit_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while !s.load(Ordering::SeqCst) {
            if !matches!(reader.read(&mut buf), Ok(n) if n > 0) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let srv = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--audit-log",
        fifo.to_str().unwrap(),
    ]);
    let t = srv.add_users(&["alice"]);
    srv.put(&t[0], "s", b"v");
    readyz_until(&srv.addr, 200, || {});
    stop.store(true, Ordering::SeqCst);
    drain.join().unwrap();
    // Each read queues a line; writing it fails once nobody reads the FIFO.
    let body = readyz_until(&srv.addr, 503, || {
        let _ = srv.get(&t[0], "/api/v1/secrets/alice/s");
    });
    let why = body["audit"].as_str().unwrap();
    assert!(why.contains("cannot be written"), "{body}");
    assert_eq!(body["store"], "ok", "{body}");
    let h = http_json(&srv.addr, "GET", "/healthz", None, None).unwrap();
    assert_eq!(h.status, 200, "{}", h.body);
}

/// Every line a line of JSON with a level and a message, the start hint and a failed start
/// included; RUST_LOG sets the level.
#[test]
fn log_format_json_writes_one_object_a_line() {
    let mut srv = Server::start_with(&["--cluster", "neuro-compute", "--log-format", "json"]);
    let t = srv.add_users(&["alice"]);
    srv.put(&t[0], "s", b"v");
    assert_eq!(srv.get("nst.bad.token", "/api/v1/secrets").status, 401);
    assert!(srv.stop().success());
    let check = |text: &str| -> Vec<serde_json::Value> {
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect();
        for l in &lines {
            let level = l["level"]
                .as_str()
                .unwrap_or_else(|| panic!("no level: {l}"));
            assert!(
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "{l}"
            );
            assert!(l["message"].is_string(), "no message: {l}");
        }
        lines
    };
    let lines = check(&srv.stderr());
    let has = |level: &str, needle: &str| {
        lines
            .iter()
            .any(|l| l["level"] == level && l["message"].as_str().unwrap_or("").contains(needle))
    };
    assert!(has("INFO", "neuro login --url"), "{}", srv.stderr());
    assert!(has("INFO", "stopped"), "{}", srv.stderr());
    assert!(!srv.stderr().contains(&t[0]), "token in the log");

    // A failed start under RUST_LOG=warn: only the error, as JSON.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("secretd"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args([
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/k",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines = check(&err);
    assert!(!lines.is_empty(), "nothing logged");
    assert!(lines.iter().all(|l| l["level"] != "INFO"), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "ERROR" && l["message"].as_str().unwrap().contains("cert.pem")),
        "{err}"
    );
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `neuro completion SHELL` and `neuro-docs completion SHELL BINARY` print scripts (bash's
/// pass `bash -n`); `neuro-docs man DIR` writes a page per binary and subcommand that groff
/// renders without a warning.
#[test]
fn completions_and_man_pages_generate_for_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    let check = |script: &str, shell: &str, name: &str| {
        assert!(script.contains(name), "{shell} script lacks {name}");
        match shell {
            "bash" => {
                let f = dir.path().join(format!("{name}.bash"));
                std::fs::write(&f, script).unwrap();
                run_ok(Command::new("bash").arg("-n").arg(&f));
            }
            "zsh" => assert!(script.starts_with(&format!("#compdef {name}")), "{script}"),
            "fish" => assert!(script.contains(&format!("complete -c {name}")), "{script}"),
            _ => unreachable!(),
        }
    };
    for shell in ["bash", "zsh", "fish"] {
        let s = run_ok(Command::new(bin("neuro")).args(["completion", shell]));
        check(&s, shell, "neuro");
        assert!(s.contains("completion") && s.contains("secret"), "{s}");
        for name in ["neuro", "secretd", "secretfs", "secret-inject"] {
            let s = run_ok(Command::new(bin("neuro-docs")).args(["completion", shell, name]));
            check(&s, shell, name);
        }
    }
    let out = Command::new(bin("neuro"))
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let man = dir.path().join("man");
    run_ok(Command::new(bin("neuro-docs")).arg("man").arg(&man));
    for (page, needle) in [
        ("neuro.1", "neuro"),
        ("neuro-secret-ls.1", "--output"),
        ("neuro-completion.1", "zsh"),
        ("secretd.1", "--metrics-listen"),
        ("secretfs.1", "secretfs"),
        ("secret-inject.1", "secret-inject"),
    ] {
        let f = man.join(page);
        assert!(f.exists(), "no {page}");
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.is_empty(), "{page}: {err}");
        // Without the overstrikes of bold and underline (X BACKSPACE X), and with groff's
        // hyphens and minus signs as ASCII.
        let mut text = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            match c {
                '\u{8}' => {
                    text.pop();
                }
                '\u{2010}' | '\u{2212}' => text.push('-'),
                c => text.push(c),
            }
        }
        assert!(text.contains("NAME"), "{page}:\n{text}");
        assert!(text.contains(needle), "{page} lacks {needle}:\n{text}");
    }
}

/// The keys of every object of a JSON array.
fn fields(json: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"));
    assert!(!arr.is_empty(), "empty list: {json}");
    let mut all = BTreeSet::new();
    for o in arr {
        let keys: BTreeSet<String> = o.as_object().unwrap().keys().cloned().collect();
        if !all.is_empty() {
            assert_eq!(keys, all, "objects differ: {json}");
        }
        all = keys;
    }
    all
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Every listing command of neuro prints a JSON array with stable field names.
#[test]
fn neuro_listings_print_json_with_stable_fields() {
    let (srv, alice) = Server::start_with_alice_owning("k", "v");
    let bob_t = srv.add_users(&["bob"]);
    let bob = srv.user("bob", &bob_t[0]);
    alice.ok(&["share", "secret:k", "bob"]);
    let op = srv.user("operator", &srv.admin_token());
    for (who, args, want) in [
        (
            &alice,
            &["secret", "ls", "-o", "json"][..],
            &["key", "owner", "uri", "version", "updated_at"][..],
        ),
        (
            &bob,
            &["secret", "list", "--output", "json"],
            &["key", "owner", "uri", "version", "updated_at"],
        ),
        (&bob, &["acl", "ls", "-o", "json"], &["uri", "action"]),
        (
            &alice,
            &["acl", "list", "--shared", "-o", "json"],
            &["uri", "action", "user"],
        ),
        (
            &op,
            &["admin", "token", "ls", "alice", "-o", "json"],
            &["id", "user", "created_at", "revoked"],
        ),
    ] {
        let out = who.ok(args);
        assert_eq!(fields(&out.stdout_str()), set(want), "neuro {args:?}");
    }
}

/// What a client got for one request.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A complete answer with this status.
    Answered(u16),
    /// Refused, or closed before any byte of an answer: the request was not taken.
    NotTaken,
    /// Part of an answer, or a reset after some of it.
    Broken(String),
}

/// Reads one `Connection: close` answer to the end.
fn read_answer(s: &mut TcpStream) -> Outcome {
    let mut raw = Vec::new();
    let r = s.read_to_end(&mut raw);
    if raw.is_empty() {
        return Outcome::NotTaken;
    }
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Broken(format!("{r:?}: {text:?}"));
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse::<usize>().ok());
    if r.is_err() || len.is_some_and(|n| n != body.len()) {
        return Outcome::Broken(format!("{r:?}: {text:?}"));
    }
    Outcome::Answered(head.split(' ').nth(1).unwrap().parse().unwrap())
}

fn put_request(addr: &str, token: &str, key: &str) -> (String, Vec<u8>) {
    let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(key));
    let head = format!(
        "POST /api/v1/secrets HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: \
         Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head, body.into_bytes())
}

/// SIGTERM while 8 writes are in flight with their bodies still arriving and 8 clients keep
/// writing: every request taken is answered in full (the slow ones once their bodies are in,
/// after the signal), secretd exits 0, and the audit log has a line for every acknowledged
/// write, which reads back after a restart.
#[test]
fn sigterm_finishes_requests_in_flight_and_writes_out_the_audit_log() {
    let mut srv = Server::start_with(&["--cluster", "neuro-compute", "--shutdown-grace", "10s"]);
    let t = srv.add_users(&["alice"]);
    let alice = t[0].clone();
    let mut slow = Vec::new();
    for i in 0..8 {
        let key = format!("slow-{i}");
        let (head, body) = put_request(&srv.addr, &alice, &key);
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body[..body.len() / 2]).unwrap();
        slow.push((s, body[body.len() / 2..].to_vec(), key));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let fast: Vec<_> = (0..8)
        .map(|c| {
            let (addr, token, stop) = (srv.addr.clone(), alice.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("fast-{c}-{i}");
                    i += 1;
                    let Ok(mut s) = TcpStream::connect(&addr) else {
                        seen.push((key, Outcome::NotTaken));
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let (head, body) = put_request(&addr, &token, &key);
                    let sent = s
                        .write_all(head.as_bytes())
                        .and_then(|()| s.write_all(&body));
                    let outcome = read_answer(&mut s);
                    if sent.is_err() && outcome != Outcome::NotTaken {
                        seen.push((key, Outcome::Broken(format!("{sent:?}"))));
                    } else {
                        seen.push((key, outcome));
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(srv.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    // The slow bodies arrive a second after the signal.
    std::thread::sleep(Duration::from_secs(1));
    for (s, rest, _) in &mut slow {
        s.write_all(rest).unwrap();
    }
    let mut acked = Vec::new();
    for (s, _, key) in &mut slow {
        assert_eq!(read_answer(s), Outcome::Answered(201), "{key}");
        acked.push(key.clone());
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (mut answered, mut not_taken) = (0, 0);
    for h in fast {
        for (key, o) in h.join().unwrap() {
            match o {
                Outcome::Answered(201) => {
                    answered += 1;
                    acked.push(key);
                }
                Outcome::Answered(503) => answered += 1,
                Outcome::NotTaken => not_taken += 1,
                o => panic!("{key}: {o:?}"),
            }
        }
    }
    let st = srv.stop_within(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "secretd exited {st:?}");
    eprintln!(
        "{} writes acknowledged ({answered} fast answers, {not_taken} not taken); exit {:?} after the signal",
        acked.len(),
        signalled.elapsed()
    );
    assert!(answered >= 8, "the load did not run: {answered} answers");
    let audit = srv.audit_log();
    for key in &acked {
        let uri = format!("\"secret://neuro-compute/alice/{key}\"");
        assert!(
            audit
                .lines()
                .any(|l| l.contains("\"secret.write\"") && l.contains(&uri)),
            "no audit line for the acknowledged write {key}"
        );
    }
    srv.restart();
    for key in &acked {
        let r = srv.get(&alice, &format!("/api/v1/secrets/alice/{key}"));
        assert_eq!(r.status, 200, "{key}: {}", r.body);
    }
}

#[test]
fn sigterm_ends_waiting_watches_at_once_instead_of_after_the_grace_period() {
    let (mut srv, t) = Server::start_with_users(&["alice"]);
    let addr = srv.addr.clone();
    let token = t[0].clone();
    let since = srv.get(&token, "/api/v1/secrets/watch").json()["revision"]
        .as_u64()
        .unwrap();
    let watchers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || {
                http_json(
                    &addr,
                    "GET",
                    &format!("/api/v1/secrets/watch?since={since}&timeout_s=60"),
                    Some(&token),
                    None,
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    // The grace period is 5 s: a watch holding the shutdown would take that long.
    let status = srv.stop_within(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "secretd did not exit 0 within 3 s of SIGTERM with watches waiting"
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    for w in watchers {
        let r = w
            .join()
            .unwrap()
            .expect("the watch got an answer, not a reset");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["revision"], since);
    }
}

/// secretd keeps opened values in memory for a while (`--value-cache`): it writes no core
/// file. (It is also made non-dumpable; as root the tests cannot tell that from outside.)
#[test]
fn secretd_writes_no_core_file() {
    let srv = Server::start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core file size line");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields[4..6], ["0", "0"], "{core}");
}

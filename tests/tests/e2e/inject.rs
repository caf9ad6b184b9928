//! secret-inject over the real binary and a real secretd. Where a failure must be injected
//! (503s, 429s, a 400), a small counting proxy on loopback stands between them; it also
//! counts the requests the wrapper makes.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Server, bin, contains, http};

/// A loopback HTTP proxy in front of secretd that counts requests and can answer the first
/// `fail` of them with `status` instead of forwarding.
struct Proxy {
    url: String,
    count: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(upstream: &str, status: u16, fail: usize) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let (c, up) = (count.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (c, up) = (c.clone(), up.clone());
                std::thread::spawn(move || serve(conn, &up, &c, status, fail));
            }
        });
        Proxy { url, count }
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn serve(conn: TcpStream, upstream: &str, count: &AtomicUsize, status: u16, fail: usize) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut start = String::new();
        if r.read_line(&mut start).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let n = count.fetch_add(1, Ordering::SeqCst);
        let mut parts = start.split(' ');
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        let (code, text) = if n < fail {
            (status, format!(r#"{{"error":"injected {status}"}}"#))
        } else {
            let tok = headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(str::to_owned);
            let rep = http(
                upstream,
                method,
                path,
                tok.as_deref(),
                Some(("application/json", &body)),
            )
            .unwrap();
            (rep.status, rep.body)
        };
        let resp = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Runs secret-inject with NEURO_TOKEN set and `KEEP=kept` inherited.
fn inject(url: &str, token: &str, args: &[&str], stdin: &[u8]) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = Command::new(bin("secret-inject"))
        .args(["--url", url])
        .args(args)
        .env("NEURO_TOKEN", token)
        .env("KEEP", "kept")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    (o, t0.elapsed())
}

/// `env -0` output as a map.
fn env_map(out: &[u8]) -> HashMap<String, Vec<u8>> {
    out.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let i = e.iter().position(|b| *b == b'=')?;
            Some((
                String::from_utf8_lossy(&e[..i]).into_owned(),
                e[i + 1..].to_vec(),
            ))
        })
        .collect()
}

fn tricky_values() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("multi", b"line one\nline two\n\nlast".to_vec()),
        ("dollar", b"$HOME $(id) `id` ${X:-y} \\n".to_vec()),
        ("equals", b"a=b==c=".to_vec()),
        ("quotes", b"'single' \"double\" \\\"".to_vec()),
        ("utf8", "пароль ключ 🔑 é".as_bytes().to_vec()),
        ("spaces", b"  padded both sides \t ".to_vec()),
        // the largest value Linux lets one variable hold: "BIG=" + value + NUL = 128 KiB
        (
            "big",
            (0..128 * 1024 - 5).map(|i| b'a' + (i % 26) as u8).collect(),
        ),
    ]
}

#[test]
fn values_reach_the_job_exactly_in_one_round_trip() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    for (k, v) in tricky_values() {
        srv.put(&t[0], k, &v);
    }
    srv.put(&t[1], "shared", b"bob's value");
    srv.share(&t[1], "secret:/bob/shared", "alice");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"secret_env":{"FROM_SPEC":"secret:equals"}}"#).unwrap();
    let proxy = Proxy::start(&srv.addr, 0, 0);
    let (o, took) = inject(
        &proxy.url,
        &t[0],
        &[
            "--spec",
            spec.to_str().unwrap(),
            "--env",
            "MULTI=secret:multi",
            "--env",
            "DOLLAR:secret:dollar",
            "--env",
            "QUOTES=secret://neuro-compute/alice/quotes",
            "--env",
            "UTF8:secret:///alice/utf8",
            "--env",
            "SPACES=secret:spaces",
            "--env",
            "BIG=secret:big",
            "--env",
            "SHARED=secret:/bob/shared",
            "--env",
            "KEEP=secret:equals",
            "--verbose",
            "--",
            "env",
            "-0",
        ],
        b"",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("secret-inject with 9 mappings took {took:?}");
    assert_eq!(proxy.requests(), 1, "one round trip for every mapping");
    let env = env_map(&o.stdout);
    let vals: HashMap<_, _> = tricky_values().into_iter().collect();
    for (var, key) in [
        ("MULTI", "multi"),
        ("DOLLAR", "dollar"),
        ("QUOTES", "quotes"),
        ("UTF8", "utf8"),
        ("SPACES", "spaces"),
        ("BIG", "big"),
        ("FROM_SPEC", "equals"),
        ("KEEP", "equals"),
    ] {
        assert_eq!(env.get(var), Some(&vals[key]), "{var}");
    }
    assert_eq!(env["SHARED"], b"bob's value");
    assert!(
        !env.contains_key("NEURO_TOKEN"),
        "the wrapper's token is not passed on"
    );
    assert!(env.contains_key("PATH"));
    // verbose stderr names mappings, never values
    let err = o.stderr;
    assert!(
        contains(&err, b"MULTI <- secret://neuro-compute/alice/multi"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    for v in vals.values().chain([&b"bob's value".to_vec()]) {
        assert!(
            !contains(&err, &v[..v.len().min(12)]),
            "a value leaked to stderr"
        );
    }
    assert!(!contains(&err, t[0].as_bytes()));
}

fn marker_cmd(marker: &std::path::Path) -> Vec<String> {
    vec![
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!("touch {}", marker.display()),
    ]
}

#[test]
fn fails_closed_with_one_line_per_mapping_and_distinct_codes() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    srv.put(&t[0], "ok", b"fine");
    srv.put(&t[0], "nul", b"a\0b");
    srv.put(&t[0], "huge", &[b'h'; 128 * 1024]);
    srv.put(&t[1], "private", b"not yours");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let proxy = Proxy::start(&srv.addr, 0, 0);
    let cases: Vec<(Vec<&str>, i32, Vec<&str>, usize)> = vec![
        (
            vec!["--env", "OK=secret:ok", "--env", "NF=secret:nope"],
            72,
            vec!["NF: secret://neuro-compute/alice/nope: not found"],
            1,
        ),
        (
            vec!["--env", "NF=secret:nope", "--env", "FB:secret:/bob/private"],
            77,
            vec![
                "NF: secret://neuro-compute/alice/nope: not found",
                "FB: secret://neuro-compute/bob/private: forbidden",
            ],
            1,
        ),
        (
            vec!["--env", "Z=secret:nul"],
            65,
            vec!["Z: secret://neuro-compute/alice/nul: invalid (the value contains a NUL byte"],
            1,
        ),
        (
            vec!["--env", "HUGE=secret:huge"],
            65,
            vec![
                "HUGE: secret://neuro-compute/alice/huge: invalid (NAME=VALUE is 131078 bytes; Linux limits one environment entry to 131072 bytes",
            ],
            1,
        ),
        (
            vec!["--env", "1X=secret:ok"],
            65,
            vec!["invalid --env '1X'"],
            0,
        ),
        (
            vec!["--env", "X=secret:ok?q"],
            65,
            vec!["a query ('?') is not allowed"],
            0,
        ),
        (
            vec!["--env", "X=notasecret"],
            65,
            vec!["not a secret URI"],
            0,
        ),
        (
            vec!["--env", "LD_PRELOAD=secret:ok"],
            65,
            vec!["LD_PRELOAD: secret:ok: invalid", "--allow-override"],
            0,
        ),
    ];
    for (args, code, lines, requests) in cases {
        let before = proxy.requests();
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(marker_cmd(&marker));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (o, _) = inject(&proxy.url, &t[0], &all, b"");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        for l in lines {
            assert!(err.contains(l), "{args:?}: {err:?} lacks {l:?}");
        }
        assert!(
            err.lines().all(|l| l.starts_with("secret-inject: ERROR: ")),
            "{err}"
        );
        assert!(!marker.exists(), "{args:?}: the command ran");
        assert_eq!(proxy.requests() - before, requests, "{args:?}");
        assert!(!err.contains("fine") && !err.contains("not yours"));
    }
    // a bad token
    let (o, _) = inject(
        &srv.url,
        "nst.0000000000000000.00",
        &["--env", "A=secret:ok", "--", "true"],
        b"",
    );
    assert_eq!(
        o.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // unavailable: nothing listens; fails after the deadline, not much later
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut args = vec![
        "--env".to_string(),
        "A=secret:ok".into(),
        "--timeout".into(),
        "1.5".into(),
    ];
    args.extend(marker_cmd(&marker));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, took) = inject(&format!("http://{dead}"), &t[0], &args, b"");
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "gave up after {took:?}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("unavailable"));
    assert!(!marker.exists());
}

#[test]
fn retries_transient_failures_and_never_a_4xx() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    srv.put(&t[0], "k", b"v");
    for (status, fail, code, requests) in [
        (503, 2, 0, 3),
        (429, 2, 0, 3),
        (502, 1, 0, 2),
        (400, usize::MAX, 65, 1),
        (404, usize::MAX, 72, 1),
    ] {
        let proxy = Proxy::start(&srv.addr, status, fail);
        let (o, _) = inject(
            &proxy.url,
            &t[0],
            &["--env", "K=secret:k", "--", "sh", "-c", "test \"$K\" = v"],
            b"",
        );
        assert_eq!(
            o.status.code(),
            Some(code),
            "{status}x{fail}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(proxy.requests(), requests, "{status}x{fail}");
    }
}

#[test]
fn execs_in_place_with_stdio_and_exit_code() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    srv.put(&t[0], "k", b"v");
    let mut child = Command::new(bin("secret-inject"))
        .args([
            "--url",
            &srv.url,
            "--env",
            "K=secret:k",
            "--",
            "sh",
            "-c",
            "echo $$; cat; echo err >&2; exit 7",
        ])
        .env("NEURO_TOKEN", &t[0])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{pid}\nfrom stdin\n"),
        "the job keeps the wrapper's pid"
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let (o, _) = inject(&srv.url, &t[0], &["--", "/nonexistent/cmd"], b"");
    assert_eq!(o.status.code(), Some(127));
    // protected names, with the opt-in
    let (o, _) = inject(
        &srv.url,
        &t[0],
        &[
            "--allow-override",
            "--env",
            "PATH=secret:k",
            "--",
            "/usr/bin/env",
        ],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l == "PATH=v")
    );
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// (pid, state) of the processes whose parent is `ppid`.
fn kids_with_state(ppid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}

#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn init_root_forwards_signals_once_reaps_zombies_and_keeps_the_code() {
    crate::harness::tier::require_root("unshare --pid");
    let (srv, t) = Server::start_with_users(&["alice"]);
    srv.put(&t[0], "k", b"init-secret-value");
    let dir = tempfile::tempdir().unwrap();
    let (log, ready) = (dir.path().join("log"), dir.path().join("ready"));
    let script = format!(
        "trap 'echo HUP >> {l}' HUP; trap 'echo INT >> {l}' INT; trap 'echo TERM >> {l}; exit 3' TERM; \
         sh -c 'sleep 0.3 & exit 0'; touch {r}; while :; do sleep 0.05; done",
        l = log.display(),
        r = ready.display()
    );
    let mut un = Command::new("unshare")
        .args(["--pid", "--fork", "--"])
        .arg(bin("secret-inject"))
        .args([
            "--url",
            &srv.url,
            "--env",
            "K=secret:k",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("NEURO_TOKEN", &t[0])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let init = children_of(un.id())[0];
    // Nothing of the value in init's own argv or environment.
    for f in ["cmdline", "environ"] {
        let b = std::fs::read(format!("/proc/{init}/{f}")).unwrap();
        assert!(!contains(&b, b"init-secret-value"), "value in init's {f}");
    }
    // The orphaned `sleep` is re-parented to init, exits, and must be reaped.
    std::thread::sleep(Duration::from_millis(800));
    let zombies: Vec<_> = kids_with_state(init)
        .into_iter()
        .filter(|(_, s)| *s == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies under init: {zombies:?}");
    let send = |sig, want: &str| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(init as i32), sig).unwrap();
        wait_log(&log, want);
    };
    send(nix::sys::signal::Signal::SIGHUP, "HUP\n");
    send(nix::sys::signal::Signal::SIGINT, "HUP\nINT\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = un.wait().unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "HUP\nINT\nTERM\n",
        "each signal reached the job once"
    );
    assert_eq!(st.code(), Some(3), "the job's exit code");

    // A job killed by a signal: 128+N. --init outside a pid namespace works the same.
    let (o, _) = inject(
        &srv.url,
        &t[0],
        &[
            "--init",
            "--env",
            "K=secret:k",
            "--",
            "sh",
            "-c",
            "kill -KILL $$",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(137));
    let (o, _) = inject(
        &srv.url,
        &t[0],
        &[
            "--init",
            "--env",
            "K=secret:k",
            "--",
            "sh",
            "-c",
            "printf %s \"$K\"; exit 4",
        ],
        b"",
    );
    assert_eq!(
        (o.status.code(), o.stdout.as_slice()),
        (Some(4), &b"init-secret-value"[..])
    );
}

fn wait_log(log: &std::path::Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = std::fs::read_to_string(log).unwrap_or_default();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "log is {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-shot HTTP server on loopback that reads one request and writes `parts` with a
/// pause between them; returns its URL.
fn answer_in_parts(parts: Vec<Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let Ok((conn, _)) = l.accept() else { return };
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if h.trim().is_empty() {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let mut w = conn;
        for p in parts {
            let _ = w.write_all(&p);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    url
}

/// The plain-HTTP path reads an answer however it is framed and cut into packets (chunked,
/// a head split mid-line), and an answer that is not HTTP fails at once with a hint.
#[test]
fn plain_http_answers_in_chunks_and_garbage() {
    let body = r#"{"results":[{"uri":"secret:k","status":"ok","resolved_uri":"secret://c/alice/k","version":3,"value":"Y2h1bmtlZCB2YWx1ZQ=="}]}"#;
    let (a, b) = body.split_at(40);
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes();
    let (head, rest) = chunked.split_at(20);
    let (mid, tail) = rest.split_at(90);
    let url = answer_in_parts(vec![head.to_vec(), mid.to_vec(), tail.to_vec()]);
    let (o, _) = inject(
        &url,
        "nst.x.y",
        &["--env", "K=secret:k", "--", "sh", "-c", "printf %s \"$K\""],
        b"",
    );
    assert_eq!(
        (o.status.code(), o.stdout.as_slice()),
        (Some(0), &b"chunked value"[..]),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Not HTTP (a TLS alert, say): no retry until the deadline, the hint instead.
    let url = answer_in_parts(vec![vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]]);
    let (o, took) = inject(
        &url,
        "nst.x.y",
        &["--timeout", "30", "--env", "K=secret:k", "--", "true"],
        b"",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("is the URL https://?"), "{err}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

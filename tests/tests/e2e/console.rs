//! The web console: every flow of issue 12 in real Chromium (tests/console/flows.js, driven
//! by playwright-core), then the outcome checked through the API; and the console's security
//! properties over raw HTTP (headers, log-in limit, sessions that end, the bearer API as it
//! was). The flows in Chromium are the browser tier (Chromium, node and playwright-core:
//! missing, the test fails, it never skips); the rest needs only the binaries and loopback.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::tier::{repo, require_browser};
use crate::harness::{Server, b64, contains, yaml_docs};

const TYPED: &str = "console-typed-value-7Qx\nsecond line";
const FILE_BYTES: &[u8] = b"file\x00bytes\r\n\xff\xfe console-file-marker-9Zk\r\n";

/// Runs `node tests/console/SCRIPT` with `envs` (never argv) in its own process group,
/// killed whole after `limit` or when this test fails. Returns its output.
fn node_script(script: &str, envs: &[(&str, &str)], limit: Duration) -> (bool, String) {
    require_browser();
    let dir = repo().join("tests/console");
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start node");
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _group = Group(child.id() as i32);
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ereader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait node") {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(_group);
    let _ = child.wait();
    let text = format!(
        "{}{}",
        reader.join().unwrap_or_default(),
        ereader.join().unwrap_or_default()
    );
    match status {
        Some(st) => (st.success(), text),
        None => (false, format!("{text}\n(killed after {limit:?})")),
    }
}

/// An answer to a raw console request: status, headers (lowercase names), body.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header end");
    Raw {
        status: head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Logs in over raw HTTP; returns the session cookie (`neuro_session=ID`).
fn login(srv: &Server, token: &str) -> Raw {
    login_with(srv, token, &[])
}

/// `login` with more request headers.
fn login_with(srv: &Server, token: &str, more: &[(&str, &str)]) -> Raw {
    let origin = srv.url.clone();
    let form = format!("token={}", token.replace('.', "%2E"));
    let mut headers = vec![
        ("Origin", origin.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    headers.extend_from_slice(more);
    raw(&srv.addr, "POST", "/login", &headers, form.as_bytes())
}

fn cookie_of(r: &Raw) -> String {
    let c = r.header("set-cookie").expect("a session cookie");
    c.split(';').next().unwrap().to_owned()
}

fn value_of(srv: &Server, token: &str, owner: &str, key: &str) -> Option<Vec<u8>> {
    let r = srv.get(token, &format!("/api/v1/secrets/{owner}/{key}"));
    if r.status == 404 {
        return None;
    }
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json()["value"].as_str().unwrap().to_owned();
    use base64::Engine as _;
    Some(base64::engine::general_purpose::STANDARD.decode(v).unwrap())
}

/// Issue 12's flows in Chromium; then, through the API: what was added holds the exact bytes,
/// what was refused or deleted is absent, the CSRF attempt changed nothing, the grant and the
/// job were revoked; no page, no output holds a value or a token.
#[test]
#[cfg_attr(not(feature = "browser"), ignore = "needs Chromium: feature browser")]
fn console_flows_in_chromium() {
    require_browser();
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    srv.put(bob, "bob-key", b"bob-value-Kp2");
    srv.share(bob, "secret:bob-key", "alice");
    srv.put(alice, "doomed", b"doomed-value-Lq8");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("value.bin");
    std::fs::write(&file, FILE_BYTES).unwrap();
    // Screenshots go under the test's own directory, unless NEURO_DOCS_SHOTS=1 asks to refresh
    // the README's pictures in docs/ on purpose: a run of the suite changes no tracked file.
    let shots = match std::env::var_os("NEURO_DOCS_SHOTS").is_some_and(|v| v == "1") {
        true => repo().join("docs"),
        false => out.path().join("shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let (ok, text) = node_script(
        "flows.js",
        &[
            ("CONSOLE_URL", &srv.url),
            ("ALICE_TOKEN", alice),
            ("VALUE_TEXT", TYPED),
            ("VALUE_FILE", file.to_str().unwrap()),
            ("OUT_DIR", out.path().to_str().unwrap()),
            ("SHOT_DIR", shots.to_str().unwrap()),
        ],
        Duration::from_secs(240),
    );
    println!("{text}");
    assert!(
        ok,
        "the Chromium flows failed:\n{text}\nsecretd: {}",
        srv.stderr()
    );
    for shot in ["console-secrets.png", "console-launch.png"] {
        let len = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(len > 1000, "{shot}: {len} bytes");
    }

    // What the browser did, seen through the API.
    assert_eq!(
        value_of(&srv, alice, "alice", "web-secret").unwrap(),
        TYPED.as_bytes()
    );
    assert_eq!(
        value_of(&srv, alice, "alice", "file-secret").unwrap(),
        FILE_BYTES
    );
    for gone in ["tmp-secret", "doomed", "empty-secret"] {
        assert_eq!(value_of(&srv, alice, "alice", gone), None, "{gone}");
    }
    let list = srv.get(alice, "/api/v1/secrets").body;
    assert!(!list.contains("bad key"), "{list}");
    // The cross-origin delete changed nothing; the grant given then revoked leaves bob out.
    assert!(list.contains("\"web-secret\""), "{list}");
    assert_eq!(srv.get(bob, "/api/v1/secrets/alice/web-secret").status, 403);
    srv.assert_audited("\"actor\":\"user:alice\",\"action\":\"grant.revoke\"");
    srv.assert_audited("\"actor\":\"user:alice\",\"action\":\"job.create\"");
    // Log-in and log-out are in the audit log too.
    srv.assert_audited("\"actor\":\"user:alice\",\"action\":\"session.open\"");
    srv.assert_audited("\"actor\":\"user:alice\",\"action\":\"session.close\"");
    // The job: its manifest maps what the dialog said, and its token is revoked.
    let manifest = std::fs::read_to_string(out.path().join("manifest.yaml")).unwrap();
    let docs = yaml_docs(&manifest);
    let job_token = docs[0]["stringData"]["token"].as_str().unwrap().to_owned();
    assert!(manifest.contains("MYPASS=secret:web-secret"), "{manifest}");
    assert!(
        manifest.contains("secret:/bob/bob-key:/var/secrets/bob.txt"),
        "{manifest}"
    );
    assert!(manifest.contains(&srv.url), "{manifest}");
    assert_eq!(srv.get(&job_token, "/api/v1/whoami").status, 401);

    // No value and no token in any page, in the script's output or the service's log.
    let mut pages = 0;
    for e in std::fs::read_dir(out.path()).unwrap() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("page-")
        {
            continue;
        }
        pages += 1;
        let html = std::fs::read(&p).unwrap();
        for (what, needle) in leaks(alice, bob, &job_token) {
            assert!(!contains(&html, &needle), "{what} in {}", p.display());
        }
    }
    assert!(pages >= 8, "only {pages} pages saved");
    for (what, needle) in leaks(alice, bob, &job_token) {
        assert!(
            !contains(text.as_bytes(), &needle),
            "{what} in the script's output"
        );
        assert!(
            !contains(srv.stderr().as_bytes(), &needle),
            "{what} in secretd's log"
        );
    }
}

fn leaks(alice: &str, bob: &str, job: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("the typed value", b"console-typed-value-7Qx".to_vec()),
        ("the file's value", b"console-file-marker-9Zk".to_vec()),
        ("its base64", b64(FILE_BYTES).into_bytes()),
        ("bob's value", b"bob-value-Kp2".to_vec()),
        ("the deleted value", b"doomed-value-Lq8".to_vec()),
        ("alice's token", alice.as_bytes().to_vec()),
        ("bob's token", bob.as_bytes().to_vec()),
        ("the job token", job.as_bytes().to_vec()),
    ]
}

/// Over raw HTTP: security headers on every console answer; the session id, not the token,
/// in the cookie and only its hash in the store; failed log-ins limited per address while
/// the bearer API goes on as before; a revoked token or a log-out ends the session; the
/// operator cannot log in; the console takes no bearer token.
#[test]
fn console_sessions_headers_and_login_limit() {
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    let origin = srv.url.clone();

    let r = login(&srv, alice);
    assert_eq!(r.status, 303, "{}", r.body);
    let alice_id = alice.split('.').nth(1).unwrap();
    srv.assert_audited(&format!(
        "\"actor\":\"user:alice\",\"action\":\"session.open\",\"outcome\":\"ok\",\"subject\":\"token:{alice_id}\""
    ));
    let set = r.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure ({set})");
    let cookie = cookie_of(&r);
    let id = cookie.split_once('=').unwrap().1.to_owned();
    assert!(!set.contains(alice.as_str()), "{set}");
    let page = raw(&srv.addr, "GET", "/secrets", &[("Cookie", &cookie)], b"");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("alice"));
    let store = srv.store_bytes();
    assert!(
        !contains(&store, id.as_bytes()),
        "the session id is stored in clear"
    );

    // Every console answer carries the headers: pages, assets, redirects, refusals, errors.
    let cases: Vec<(&str, &str, Vec<(&str, &str)>)> = vec![
        ("GET", "/", vec![]),
        ("GET", "/secrets", vec![]),
        ("GET", "/secrets", vec![("Cookie", &cookie)]),
        ("GET", "/dashboard", vec![("Cookie", &cookie)]),
        ("GET", "/shared", vec![("Cookie", &cookie)]),
        ("GET", "/assets/console.js", vec![]),
        ("POST", "/console/secrets", vec![("Cookie", &cookie)]),
        ("POST", "/login", vec![("Origin", "http://evil.example")]),
    ];
    for (m, p, h) in &cases {
        let r = raw(&srv.addr, m, p, h, b"");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
            "{m} {p}: {csp}"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{m} {p}"
        );
        assert_eq!(
            r.header("referrer-policy").as_deref(),
            Some("no-referrer"),
            "{m} {p}"
        );
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-store"),
            "{m} {p}"
        );
    }

    // The console takes no bearer token; the API takes no cookie.
    let r = raw(
        &srv.addr,
        "POST",
        "/console/secrets",
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
        ],
        br#"{"key":"k","value":"dg=="}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = raw(
        &srv.addr,
        "GET",
        "/api/v1/secrets",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(srv.get(alice, "/api/v1/whoami").status, 200);

    // The operator's token opens no console session, and the page names the command that
    // makes a user token, which exists.
    let r = login(&srv, &srv.admin_token());
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("role=\"alert\""));
    assert!(r.body.contains("neuro admin token add USER"), "{}", r.body);
    let help = std::process::Command::new(crate::harness::bin("neuro"))
        .args(["admin", "token", "add", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");

    // Failed log-ins: tokens that name nobody, from this address, refuse no real user here.
    for i in 0..12 {
        let r = login(&srv, &format!("nst.0123456789abcdef.wrong{i}"));
        let want = if i < 10 { 401 } else { 429 };
        assert_eq!(r.status, want, "attempt {i}: {}", r.body);
    }
    let r = login(&srv, alice);
    assert_eq!(
        r.status, 303,
        "failures against nobody refused alice: {}",
        r.body
    );
    // Ten failures against alice's token id from this address: then alice waits here (for
    // the window at most), while bob's correct token from the same address goes in.
    for i in 0..10 {
        let r = login(&srv, &format!("nst.{alice_id}.wrong{i}"));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.body);
    }
    let r = login(&srv, alice);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("too many failed log-ins"), "{}", r.body);
    let r = login(&srv, bob);
    assert_eq!(r.status, 303, "alice's failures refused bob: {}", r.body);
    assert_eq!(
        srv.get(alice, "/api/v1/whoami").status,
        200,
        "the API is unchanged"
    );
    // The session opened before goes on.
    assert_eq!(
        raw(&srv.addr, "GET", "/secrets", &[("Cookie", &cookie)], b"").status,
        200
    );

    // Revoking the token the session was opened with ends the session.
    let tid = alice.split('.').nth(1).unwrap();
    let r = srv.delete(&srv.admin_token(), &format!("/api/v1/admin/tokens/{tid}"));
    assert!(r.status < 300, "{}", r.body);
    let r = raw(&srv.addr, "GET", "/secrets", &[("Cookie", &cookie)], b"");
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (303, Some("/"))
    );
}

/// One request over TLS with `openssl s_client` (the request, tokens included, goes on its
/// standard input, never in argv); returns the raw answer.
fn https(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (scripts/setup.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(req.as_bytes()).unwrap();
    // -quiet implies -ign_eof: the answer is read to the server's close.
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Over HTTPS the session cookie is also `Secure`.
#[test]
fn console_cookie_is_secure_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::harness::self_signed_localhost_cert(dir.path());
    let srv = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let admin = format!("Bearer {}", srv.admin_token());
    let json = [
        ("Authorization", admin.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = https(
        &srv.addr,
        "POST",
        "/api/v1/admin/users",
        &json,
        r#"{"name":"alice"}"#,
    );
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    let r = https(
        &srv.addr,
        "POST",
        "/api/v1/admin/users/alice/tokens",
        &json,
        "",
    );
    let body = r.split_once("\r\n\r\n").unwrap().1;
    let token = serde_json::from_str::<serde_json::Value>(body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let origin = format!("https://{}", srv.addr);
    let form = [
        ("Origin", origin.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let text = https(
        &srv.addr,
        "POST",
        "/login",
        &form,
        &format!("token={token}"),
    );
    assert!(text.starts_with("HTTP/1.1 303"), "{text}");
    let set = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {text}"));
    for attr in [
        "set-cookie: __Host-neuro_session=alice.",
        "Path=/;",
        "HttpOnly",
        "SameSite=Strict",
        "; Secure",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    // The __Host- cookie opens the session; a plain one (which a page of another port over
    // plain HTTP could plant) is never used.
    let id = set
        .split_once('=')
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = |cookie: String| https(&srv.addr, "GET", "/secrets", &[("Cookie", &cookie)], "");
    let ok = page(format!("__Host-neuro_session={id}"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let planted = page(format!("neuro_session={id}"));
    assert!(planted.starts_with("HTTP/1.1 303"), "{planted}");
}

/// A page on another port of this host can set a cookie for it (cookies know no ports): bob
/// plants his session cookie in alice's browser on a deeper path, so her browser sends both.
/// The console refuses such a request (it would otherwise be whichever came first: bob's),
/// stores nothing, expires the cookies at every console path, and every page says who is
/// logged in.
#[test]
fn a_planted_second_session_cookie_is_refused() {
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob"]);
    let alice = cookie_of(&login(&srv, &t[0]));
    let bob = cookie_of(&login(&srv, &t[1]));
    let page = raw(&srv.addr, "GET", "/secrets", &[("Cookie", &alice)], b"");
    assert!(
        page.body
            .contains("<strong id=\"user-name\">alice</strong>"),
        "{}",
        page.body
    );
    // The browser sends the more specific path's cookie first: bob's.
    let both = format!("{bob}; {alice}");
    let r = raw(&srv.addr, "GET", "/secrets", &[("Cookie", &both)], b"");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("more than one session cookie"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("bob"), "bob's page: {}", r.body);
    let cleared: Vec<&str> = r
        .head
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: neuro_session=;")
        })
        .collect();
    for path in ["Path=/;", "Path=/secrets;", "Path=/console/secrets;"] {
        assert!(
            cleared.iter().any(|c| c.contains(path)),
            "{path} not cleared: {cleared:?}"
        );
    }
    // A value added with both cookies is stored for nobody.
    let csrf = {
        let p = raw(&srv.addr, "GET", "/secrets", &[("Cookie", &bob)], b"");
        let at = p.body.find("data-csrf=\"").expect("the page's CSRF token") + 11;
        p.body[at..at + 43].to_owned()
    };
    let origin = srv.url.clone();
    let r = raw(
        &srv.addr,
        "POST",
        "/console/secrets",
        &[
            ("Cookie", &both),
            ("Origin", &origin),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "application/json"),
        ],
        format!(
            r#"{{"key":"planted","value":"{}"}}"#,
            crate::harness::b64("alice's")
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(value_of(&srv, &t[1], "bob", "planted"), None);
    assert_eq!(value_of(&srv, &t[0], "alice", "planted"), None);
}

/// Behind a proxy named with --trusted-proxy, log-in failures count by the address in its
/// X-Forwarded-For; from anyone else that header is ignored.
#[test]
fn login_failures_count_by_forwarded_address_only_behind_a_trusted_proxy() {
    for trusted in [true, false] {
        let extra: &[&str] = if trusted {
            &["--trusted-proxy", "127.0.0.0/8"]
        } else {
            &[]
        };
        let srv = Server::start_with(extra);
        let t = srv.add_users(&["alice"]);
        let id = t[0].split('.').nth(1).unwrap();
        let login_from = |client: &str, token: &str| {
            login_with(&srv, token, &[("X-Forwarded-For", client)]).status
        };
        for i in 0..10 {
            assert_eq!(
                login_from("203.0.113.9", &format!("nst.{id}.wrong{i}")),
                401
            );
        }
        assert_eq!(login_from("203.0.113.9", &t[0]), 429, "trusted {trusted}");
        let other = login_from("198.51.100.1", &t[0]);
        let want = if trusted { 303 } else { 429 };
        assert_eq!(other, want, "another forwarded client, trusted {trusted}");
    }
}

/// A user's sessions are capped: logging in again and again ends the least recently used
/// one, so no valid token can fill the store with sessions; other users are not touched.
#[test]
fn a_user_holds_at_most_sixteen_console_sessions() {
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob"]);
    let page = |cookie: &str| raw(&srv.addr, "GET", "/secrets", &[("Cookie", cookie)], b"").status;
    let bob = cookie_of(&login(&srv, &t[1]));
    let cookies: Vec<String> = (0..17)
        .map(|_| {
            let r = login(&srv, &t[0]);
            assert_eq!(r.status, 303, "{}", r.body);
            cookie_of(&r)
        })
        .collect();
    assert_ne!(
        page(&cookies[0]),
        200,
        "the oldest of 17 sessions still opens pages"
    );
    for c in &cookies[1..] {
        assert_eq!(page(c), 200, "a session among the newest 16 was ended");
    }
    assert_eq!(page(&bob), 200, "another user's session was ended");
    // A cookie naming another user than its session's does not open it.
    let (_, id) = cookies[16].split_once('.').unwrap();
    let forged = format!("neuro_session=bob.{id}");
    assert_ne!(page(&forged), 200);
    // The newest session is used, then one more log-in ends the least recently used (the
    // second), not the newest.
    let more = cookie_of(&login(&srv, &t[0]));
    assert_eq!(page(&more), 200);
    assert_ne!(page(&cookies[1]), 200);
}

//! The service's limits and failure modes: resolve amplification, the watch loop's edges,
//! ambiguous queries, user enumeration through grants, and the audit log's file mode.

use std::time::{Duration, Instant};

use crate::harness::{Server, b64};

/// The newest revision, as a watch without `since` tells it.
fn revision(srv: &Server, token: &str) -> u64 {
    let r = srv.get(token, "/api/v1/secrets/watch");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["revision"].as_u64().unwrap()
}

#[test]
fn resolve_of_one_big_secret_many_times_is_refused_small_and_fast() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let alice = &t[0];
    srv.put(alice, "big", &vec![b'x'; 1024 * 1024]);
    srv.put(alice, "small", b"v1");
    let before = srv.status_kb("VmHWM");
    let uris: Vec<&str> = vec!["secret:big"; 1000];
    let body = serde_json::json!({ "uris": uris }).to_string();
    let t0 = Instant::now();
    let r = srv.post(alice, "/api/v1/secrets/resolve", &body);
    let took = t0.elapsed();
    let after = srv.status_kb("VmHWM");
    eprintln!(
        "1000 x 1 MiB resolve: HTTP {} in {took:?}, VmHWM {before} kB -> {after} kB",
        r.status
    );
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(300)]);
    assert!(r.body.contains("16777216 bytes"), "{}", r.body);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(after < 150 * 1024, "secretd's peak RSS reached {after} kB");
    // A normal resolve, a repeat included, still answers one result per asked URI, in order.
    let r = srv.post(
        alice,
        "/api/v1/secrets/resolve",
        r#"{"uris":["secret:small","secret:nope","secret:small"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.json()["results"].as_array().unwrap().clone();
    let got: Vec<(&str, &str, Option<&str>)> = res
        .iter()
        .map(|x| {
            (
                x["uri"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
                x["value"].as_str(),
            )
        })
        .collect();
    let v = b64("v1");
    assert_eq!(
        got,
        [
            ("secret:small", "ok", Some(v.as_str())),
            ("secret:nope", "not_found", None),
            ("secret:small", "ok", Some(v.as_str())),
        ]
    );
    // Sixteen distinct 1 MiB values fit; a seventeenth does not.
    for i in 0..17 {
        srv.put(alice, &format!("big{i}"), &vec![b'y'; 1024 * 1024]);
    }
    let asked = |n: usize| {
        let uris: Vec<String> = (0..n).map(|i| format!("secret:big{i}")).collect();
        serde_json::json!({ "uris": uris }).to_string()
    };
    let r = srv.post(alice, "/api/v1/secrets/resolve", &asked(16));
    assert_eq!(r.status, 200);
    let r = srv.post(alice, "/api/v1/secrets/resolve", &asked(17));
    assert_eq!(r.status, 413);
    // Each distinct URI is read and audited once.
    srv.assert_audited(r#""uri":"secret://neuro-compute/alice/small","outcome":"ok""#);
    let lines = srv
        .audit_log()
        .lines()
        .filter(|l| l.contains(r#""secret.read","uri":"secret://neuro-compute/alice/small""#))
        .count();
    assert_eq!(lines, 1, "{}", srv.audit_log());
}

#[test]
fn watch_scans_past_more_than_one_batch_of_invisible_changes() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    let since = revision(&srv, alice);
    // More than one batch (1000) of changes alice may not see.
    for i in 0..1100 {
        srv.put(bob, &format!("k{}", i % 7), b"v");
    }
    srv.put(alice, "mine", b"v");
    let t0 = Instant::now();
    let r = srv.get(
        alice,
        &format!("/api/v1/secrets/watch?since={since}&timeout_s=5"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{}", r.body);
    assert_eq!(events[0]["uri"], "secret://neuro-compute/alice/mine");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn ambiguous_or_impossible_queries_are_refused() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    srv.put(alice, "a", b"v");
    srv.put(alice, "b", b"v");
    srv.share(alice, "secret:a", "bob");
    srv.share(alice, "secret:b", "bob");
    let check = |path: &str, status: u16, msg: &str| {
        let r = srv.get(alice, path);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body.contains(msg), "{path}: {}", r.body);
    };
    check(
        "/api/v1/secrets/watch?since=18446744073709551615&timeout_s=1",
        400,
        "past the newest revision",
    );
    let now = revision(&srv, alice);
    check(
        &format!("/api/v1/secrets/watch?since={}&timeout_s=1", now + 1),
        400,
        "past the newest revision",
    );
    check(
        &format!("/api/v1/secrets/watch?since={now}&since=0&timeout_s=1"),
        400,
        "'since' is given more than once",
    );
    check(
        &format!("/api/v1/secrets/watch?since={now}&timeout_s=1"),
        200,
        "",
    );
    let r = srv.delete(
        alice,
        "/api/v1/users/bob/permissions?uri=secret:a&uri=secret:b",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("'uri' is given more than once"),
        "{}",
        r.body
    );
    // Neither grant was revoked.
    for key in ["a", "b"] {
        let r = srv.get(bob, &format!("/api/v1/secrets/alice/{key}"));
        assert_eq!(r.status, 200, "{key}: {}", r.body);
    }
}

#[test]
fn a_grant_without_permission_does_not_tell_whether_the_user_exists() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    srv.put(alice, "s", b"v");
    let grant = |token: &str, user: &str| {
        srv.post(
            token,
            &format!("/api/v1/users/{user}/permissions"),
            r#"[{"uri":"secret:/alice/s","action":"read"}]"#,
        )
    };
    // bob may not share alice's secret: the same 403 for a user that exists and one that does
    // not.
    for user in ["alice", "carol", "nobody-here"] {
        let r = grant(bob, user);
        assert_eq!(r.status, 403, "{user}: {}", r.body);
        assert!(
            r.body
                .contains("missing manage on secret://neuro-compute/alice/s")
        );
    }
    // alice may: she learns that the user does not exist.
    let r = grant(alice, "nobody-here");
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn audit_log_is_created_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let srv = Server::start();
    let mode = std::fs::metadata(srv.data_dir().join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "audit.log mode {:o}", mode & 0o777);
}

/// Creates a job of `token`'s user reading `uri`; returns `(job id, job token)`.
fn job(srv: &Server, token: &str, uri: &str) -> (String, String) {
    let r = srv.post(
        token,
        "/api/v1/jobs",
        &format!(r#"{{"secret_env":{{"S":"{uri}"}}}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    (
        j["job_id"].as_str().unwrap().to_owned(),
        j["token"].as_str().unwrap().to_owned(),
    )
}

/// A long poll in a thread, as secretfs holds one; joined with its status and how long it took.
fn watch_in_thread(
    srv: &Server,
    token: &str,
    since: u64,
    timeout_s: u64,
) -> std::thread::JoinHandle<(u16, String, Duration)> {
    let addr = srv.addr.clone();
    let token = token.to_owned();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = crate::harness::http(
            &addr,
            "GET",
            &format!("/api/v1/secrets/watch?since={since}&timeout_s={timeout_s}"),
            Some(&token),
            None,
        )
        .unwrap();
        (r.status, r.body, t0.elapsed())
    })
}

#[test]
fn deleting_a_job_ends_its_watch_at_once() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let alice = &t[0];
    srv.put(alice, "s", b"v");
    let (id, jt) = job(&srv, alice, "secret:s");
    let since = revision(&srv, &jt);
    let w = watch_in_thread(&srv, &jt, since, 10);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let r = srv.delete(alice, &format!("/api/v1/jobs/{id}"));
    assert_eq!(r.status, 204, "{}", r.body);
    let (status, body, _) = w.join().unwrap();
    let after = t0.elapsed();
    eprintln!("job deleted -> its watch answered HTTP {status} after {after:?}");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("the job has ended"), "{body}");
    assert!(after < Duration::from_secs(1), "{after:?}");
    srv.assert_audited(&format!(
        r#""action":"job.delete","outcome":"ok","subject":"job:{id}""#
    ));
}

#[test]
fn a_job_whose_creator_lost_read_gets_no_more_events() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    srv.put(bob, "s", b"v1");
    srv.share(bob, "secret:s", "alice");
    let (_, jt) = job(&srv, alice, "secret:/bob/s");
    let r = srv.delete(bob, "/api/v1/users/alice/permissions?uri=secret:/bob/s");
    assert_eq!(r.status, 204, "{}", r.body);
    let since = revision(&srv, &jt);
    let w = watch_in_thread(&srv, &jt, since, 2);
    std::thread::sleep(Duration::from_millis(300));
    srv.put(bob, "s", b"v2");
    let (status, body, _) = w.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["events"], serde_json::json!([]), "{body}");
    // Reads agree.
    let r = srv.get(&jt, "/api/v1/secrets/bob/s");
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn removing_a_user_revokes_its_tokens_jobs_and_grants_for_good() {
    let (srv, t) = Server::start_with_users(&["alice", "bob", "carol"]);
    let (alice, bob, carol) = (&t[0], &t[1], &t[2]);
    let op = srv.admin_token();
    srv.put(alice, "a", b"va");
    srv.put(bob, "b", b"vb");
    srv.put(carol, "c", b"vc");
    srv.share(alice, "secret:a", "bob");
    srv.share(bob, "secret:b", "alice");
    let (job_id, jt) = job(&srv, alice, "secret:/bob/b");
    // The operator sees alice's job token.
    let r = srv.get(&op, "/api/v1/admin/users/alice/tokens");
    assert_eq!(r.status, 200, "{}", r.body);
    let jobs: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["job_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(jobs, std::slice::from_ref(&job_id));
    let ls = srv
        .user("operator", &op)
        .ok(&["admin", "token", "ls", "alice"])
        .stdout_str();
    let job_row = ls
        .lines()
        .find(|l| l.contains(&job_id))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(job_row.contains("active"), "{ls}");
    assert!(ls.lines().next().unwrap().contains("JOB"), "{ls}");
    let w = watch_in_thread(&srv, &jt, revision(&srv, &jt), 10);
    // The choice is the operator's to make.
    for (q, msg) in [
        ("", "missing query parameter 'secrets'"),
        ("?secrets=maybe", "'keep' or 'delete'"),
    ] {
        let r = srv.delete(&op, &format!("/api/v1/admin/users/alice{q}"));
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains(msg), "{}", r.body);
    }
    let r = srv.delete(bob, "/api/v1/admin/users/alice?secrets=keep");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = srv.delete(&op, "/api/v1/admin/users/alice?secrets=keep");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            &v["tokens_revoked"],
            &v["jobs_deleted"],
            &v["grants_removed"],
            &v["secrets_kept"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{v}"
    );
    let (status, body, took) = w.join().unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let dead = |token: &str| {
        for path in ["/api/v1/secrets/bob/b", "/api/v1/whoami"] {
            let r = srv.get(token, path);
            assert_eq!(r.status, 401, "{path}: {}", r.body);
        }
    };
    dead(alice);
    dead(&jt);
    // Kept: bob still reads alice's secret; the grant alice held on bob's is gone.
    let r = srv.get(bob, "/api/v1/secrets/alice/a");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = srv.get(bob, "/api/v1/users/bob/permissions/shared");
    assert_eq!(r.json(), serde_json::json!([]), "{}", r.body);
    let r = srv.delete(&op, "/api/v1/admin/users/alice?secrets=keep");
    assert_eq!(r.status, 404, "{}", r.body);
    // The name again: a new user, whose new token works; the old ones stay dead.
    let r = srv.post(&op, "/api/v1/admin/users", r#"{"name":"alice"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let new_alice = r.json()["token"].as_str().unwrap().to_owned();
    let r = srv.get(&new_alice, "/api/v1/secrets/alice/a");
    assert_eq!(r.status, 200, "{}", r.body);
    dead(alice);
    dead(&jt);
    let r = srv.get(&new_alice, "/api/v1/secrets/bob/b");
    assert_eq!(r.status, 403, "{}", r.body);

    // Deleted: carol's secrets go, and so do the grants on them.
    // Through the CLI, which makes the operator choose.
    srv.share(carol, "secret:c", "bob");
    let operator = srv.user("operator", &op);
    let o = operator.run(&["admin", "user", "rm", "carol"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--secrets"), "{}", o.stderr);
    let o = operator.ok(&["admin", "user", "rm", "carol", "--secrets", "delete"]);
    assert_eq!(
        o.stdout_str(),
        "removed user 'carol': 1 token(s) revoked, 0 job(s) deleted, 1 grant(s) removed, \
         1 secret(s) deleted, 0 secret(s) kept\n"
    );
    operator.fails(
        &["admin", "user", "rm", "carol", "--secrets", "keep"],
        72,
        "user 'carol' not found",
    );
    let r = srv.get(bob, "/api/v1/secrets/carol/c");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = srv.get(bob, "/api/v1/users/bob/permissions");
    assert!(!r.body.contains("carol"), "{}", r.body);
    srv.assert_audited(r#""action":"user.delete","outcome":"ok","subject":"user:carol""#);
    srv.assert_audited(&format!(
        r#""action":"job.delete","outcome":"ok","subject":"job:{job_id}""#
    ));
    srv.assert_audited(r#""action":"token.revoke","outcome":"ok","subject":"token:"#);
    srv.assert_audited(r#""action":"user.create","outcome":"ok","subject":"user:bob""#);
}

/// Jobs created while their user is being removed (the removal lists the user's jobs once)
/// must die with the user, and stay dead when the name is created again.
#[test]
fn jobs_created_during_a_user_removal_die_with_the_user() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let alice = t[0].clone();
    let op = srv.admin_token();
    srv.put(&alice, "a", b"va");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creators: Vec<_> = (0..4)
        .map(|_| {
            let (addr, alice, stop) = (srv.addr.clone(), alice.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tokens = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = crate::harness::http(
                        &addr,
                        "POST",
                        "/api/v1/jobs",
                        Some(&alice),
                        Some((
                            "application/json",
                            br#"{"secret_env":{"S":"secret:a"}}"#.as_slice(),
                        )),
                    )
                    .unwrap();
                    if r.status == 201 {
                        tokens.push(r.json()["token"].as_str().unwrap().to_owned());
                    }
                }
                tokens
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = srv.delete(&op, "/api/v1/admin/users/alice?secrets=keep");
    assert_eq!(r.status, 200, "{}", r.body);
    // Let requests that were already past authentication finish.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let tokens: Vec<String> = creators
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(tokens.len() > 5, "only {} jobs were created", tokens.len());
    let resolve = |tok: &str| {
        srv.post(
            tok,
            "/api/v1/secrets/resolve",
            r#"{"uris":["secret:/alice/a"]}"#,
        )
    };
    // A verified token is trusted for at most a second without a store read.
    std::thread::sleep(Duration::from_millis(1100));
    let alive = |tokens: &[String]| -> Vec<String> {
        tokens
            .iter()
            .filter(|t| resolve(t).status != 401)
            .cloned()
            .collect()
    };
    assert_eq!(
        alive(&tokens),
        Vec::<String>::new(),
        "job tokens outlived their user"
    );
    let r = srv.post(&op, "/api/v1/admin/users", r#"{"name":"alice"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(alive(&tokens), Vec::<String>::new(), "revived by the name");
    assert_eq!(resolve(&alice).status, 401, "the old user token");
}

/// Sends `head` and all of `body` but its last byte; returns the stream, to finish later.
fn half_sent(addr: &str, head: &str, body: &str) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("{head}Content-Length: {}\r\n\r\n", body.len()).as_bytes())
        .unwrap();
    s.write_all(&body.as_bytes()[..body.len() - 1]).unwrap();
    s
}

/// Sends the last byte of the body and reads the status code of the answer.
fn finish(mut s: std::net::TcpStream, body: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    s.write_all(&body.as_bytes()[body.len() - 1..]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 12];
    s.read_exact(&mut b).unwrap();
    String::from_utf8_lossy(&b[9..12]).parse().unwrap()
}

/// A request whose body is still arriving when its user is removed (and the name created
/// again) must not go through: the caller is checked again once the body is in.
#[test]
fn a_request_whose_body_outlives_its_user_is_refused() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let old = t[0].clone();
    srv.put(&old, "a", b"va");
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {old}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n"
        )
    };
    let put_body = format!(r#"{{"key":"planted","value":"{}"}}"#, b64("old alice's"));
    let job_body = r#"{"secret_env":{"X":"secret:newsecret"}}"#;
    let put = half_sent(&srv.addr, &head("/api/v1/secrets"), &put_body);
    let job = half_sent(&srv.addr, &head("/api/v1/jobs"), job_body);
    std::thread::sleep(Duration::from_millis(300));
    let operator = srv.user("operator", &srv.admin_token());
    operator.ok(&["admin", "user", "rm", "alice", "--secrets", "delete"]);
    let new = operator
        .ok(&["admin", "user", "add", "alice"])
        .stdout_str()
        .trim()
        .to_owned();
    srv.put(&new, "newsecret", b"new alice's");
    assert_eq!(finish(put, &put_body), 401);
    assert_eq!(finish(job, job_body), 401);
    let r = srv.get(&new, "/api/v1/secrets");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("planted"), "{}", r.body);
}

/// `count` secrets of 1 MiB (`big0`…) owned by `token`'s user, and the raw resolve request
/// that asks for all of them.
fn big_secrets_and_their_resolve(srv: &Server, token: &str, count: usize) -> String {
    let uris: Vec<String> = (0..count)
        .map(|i| {
            srv.put(
                token,
                &format!("big{i}"),
                &vec![b'a' + i as u8; 1024 * 1024],
            );
            format!("\"secret:big{i}\"")
        })
        .collect();
    let body = format!(r#"{{"uris":[{}]}}"#, uris.join(","));
    format!(
        "POST /api/v1/secrets/resolve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A connection with a small receive buffer: the answer to a big request waits in the
/// service until the client reads it.
fn slow_reader(addr: &str) -> std::net::TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt};
    use nix::sys::socket::{socket, sockopt};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let sa: std::net::SocketAddrV4 = addr.parse().unwrap();
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(sa)).unwrap();
    std::net::TcpStream::from(fd)
}

/// Answers a client has not read yet count as in flight: one token cannot pile up big
/// answers in the service's memory by reading them slowly.
#[test]
fn answers_read_slowly_stay_in_flight() {
    use std::io::{Read as _, Write as _};
    // A cap of 16 connections: one token may have 4 requests in flight.
    let srv = Server::start_with(&["--cluster", "neuro-compute", "--max-connections", "16"]);
    let t = srv.add_users(&["alice"]);
    let alice = t[0].clone();
    // 6 MiB a resolve: four answers (8 MB each, too big for the socket buffers) stay within
    // the user's share of the answer budget (a quarter), so the token's own limit is what
    // refuses.
    let request = big_secrets_and_their_resolve(&srv, &alice, 6);
    let mut conns: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut s = slow_reader(&srv.addr);
            s.write_all(request.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let mut statuses = Vec::new();
    for s in &mut conns {
        // A debug build takes a while to encode four 8 MB answers on two cores.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).unwrap();
        statuses.push(String::from_utf8_lossy(&b[9..12]).into_owned());
    }
    let answered = statuses.iter().filter(|s| *s == "200").count();
    assert!(answered <= 4, "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
    // While those answers wait, the token's other requests wait too.
    let r = srv.get(&alice, "/api/v1/whoami");
    assert_eq!(r.status, 429, "{}", r.body);
    let rss = srv.status_kb("VmRSS");
    eprintln!("statuses {statuses:?}; secretd VmRSS {rss} kB with the answers pending");
    assert!(rss < 400 * 1024, "VmRSS {rss} kB");
    // Gone: the places are free again.
    drop(conns);
    let t0 = std::time::Instant::now();
    loop {
        let r = srv.get(&alice, "/api/v1/whoami");
        if r.status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "places not released: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("places released {:?} after the clients left", t0.elapsed());
}

/// One user (with its jobs) reading big values slowly holds only a quarter of the memory for
/// answers being sent: seven resolves of 16 × 1 MiB, read slowly, used to take the whole
/// 256 MiB, and every other user's reads failed with 503 meanwhile. Now the second is refused
/// with 429 (its share is full) and another user reads as ever.
#[test]
fn one_user_reading_slowly_holds_only_a_share_of_the_answer_budget() {
    use std::io::{Read as _, Write as _};
    let srv = Server::start();
    let t = srv.add_users(&["mallory", "bob"]);
    let (mallory, bob) = (&t[0], &t[1]);
    srv.put(bob, "small", b"8 bytes!");
    let request = big_secrets_and_their_resolve(&srv, mallory, 16);
    let mut conns: Vec<std::net::TcpStream> = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let mut s = slow_reader(&srv.addr);
        s.write_all(request.as_bytes()).unwrap();
        // A debug build takes a while to encode a 22 MB answer.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).unwrap();
        statuses.push(String::from_utf8_lossy(&b[9..12]).into_owned());
        conns.push(s);
    }
    eprintln!("mallory's slow resolves: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "200").count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses[1..].iter().all(|s| s == "429"), "{statuses:?}");
    let mut refused = slow_reader(&srv.addr);
    refused.write_all(request.as_bytes()).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    let _ = refused.read_to_string(&mut answer);
    assert!(answer.contains("its share"), "{answer}");
    for i in 0..45 {
        let r = srv.get(bob, "/api/v1/secrets/bob/small");
        assert_eq!(r.status, 200, "bob's read {i}: {}", r.body);
    }
    drop(conns);
}

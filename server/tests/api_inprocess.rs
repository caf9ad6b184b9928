//! The service driven in process: `app(state)` on a temporary store, one request at a time
//! with `tower::ServiceExt::oneshot`. The HTTP side of authorization (every route wired, each
//! outcome's status code, the callers only HTTP knows: no token, a bad one, a revoked one;
//! the full matrix of callers is the domain's, `domain/tests.rs`), bodies that never end,
//! watch visibility and list ordering; what needs processes (sockets, TLS, signals, the CLI)
//! stays in the end-to-end suite.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt as _;

const URI: &str = "secret://neuro-compute/alice/s1";
const URI_Q: &str = "secret%3A%2F%2Fneuro-compute%2Falice%2Fs1";

/// A service on a fresh store, and the tokens of its callers.
struct World {
    app: Router,
    dir: tempfile::TempDir,
    admin: String,
    tokens: std::collections::HashMap<String, String>,
}

impl World {
    async fn new(users: &[&str]) -> Self {
        let (app, dir, admin) = common::service().await;
        let mut w = World {
            app,
            dir,
            admin,
            tokens: Default::default(),
        };
        for u in users {
            let body = format!(r#"{{"name":"{u}"}}"#);
            let v = w.ok("POST", "/api/v1/admin/users", "operator", &body).await;
            w.tokens
                .insert((*u).to_owned(), v["token"].as_str().unwrap().to_owned());
        }
        w
    }

    fn token(&self, who: &str) -> Option<String> {
        match who {
            "operator" => Some(self.admin.clone()),
            "no token" => None,
            "bad token" => Some(format!("nst.0123456789abcdef.{}", "0".repeat(64))),
            _ => Some(self.tokens[who].clone()),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// As `who`, a request that must succeed; its answer.
    async fn ok(&self, method: &str, path: &str, who: &str, body: &str) -> Value {
        let body = (!body.is_empty()).then_some(body);
        let (st, v) = self
            .call(method, path, self.token(who).as_deref(), body)
            .await;
        assert!(st.is_success(), "{method} {path} as {who}: {st} {v}");
        v
    }

    async fn put(&self, who: &str, owner: &str, key: &str) -> u64 {
        let body = format!(r#"{{"key":"{key}","owner":"{owner}","value":"dg=="}}"#);
        let v = self.ok("POST", "/api/v1/secrets", who, &body).await;
        v["version"].as_u64().unwrap()
    }

    async fn share(&self, who: &str, grantee: &str, uri: &str, action: &str) {
        let body = format!(r#"[{{"uri":"{uri}","action":"{action}"}}]"#);
        let path = format!("/api/v1/users/{grantee}/permissions");
        self.ok("POST", &path, who, &body).await;
    }

    async fn job(&self, who: &str, uris: &[&str]) -> (String, String) {
        let env: Vec<String> = (0..uris.len())
            .map(|i| format!(r#""S{i}":"{}""#, uris[i]))
            .collect();
        let body = format!(r#"{{"secret_env":{{{}}}}}"#, env.join(","));
        let v = self.ok("POST", "/api/v1/jobs", who, &body).await;
        (
            v["job_id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn watch(&self, who: &str, since: u64) -> Value {
        let path = format!("/api/v1/secrets/watch?since={since}&timeout_s=0");
        self.ok("GET", &path, who, "").await
    }

    async fn revision(&self, who: &str) -> u64 {
        let v = self.ok("GET", "/api/v1/secrets/watch", who, "").await;
        v["revision"].as_u64().unwrap()
    }

    /// Waits for the audit log to hold `needle` (its writer batches lines).
    async fn assert_audited(&self, needle: &str) {
        let t0 = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap();
            if log.contains(needle) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "audit log lacks {needle}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The callers of the matrix, in the order of its expectation arrays.
const WHO: [&str; 11] = [
    "operator",
    "owner",
    "read",
    "write",
    "manage",
    "stranger",
    "job",
    "other job",
    "no token",
    "bad token",
    "revoked",
];

/// alice owns s1 and s2; bob reads, carol writes and dave manages s1; eve holds nothing; zed
/// holds read on s1 (so that revoking it succeeds); "job" reads s1, "other job" s2; frank's
/// token is revoked.
async fn matrix_world() -> (World, [Option<String>; 11], String, String) {
    let mut w = World::new(&["alice", "bob", "carol", "dave", "eve", "frank", "zed"]).await;
    w.put("alice", "alice", "s1").await;
    w.put("alice", "alice", "s2").await;
    for (user, action) in [("bob", "read"), ("carol", "write"), ("dave", "manage")] {
        w.share("alice", user, URI, action).await;
    }
    w.share("alice", "zed", URI, "read").await;
    let (_, job) = w.job("alice", &[URI]).await;
    let (job2_id, job2) = w.job("alice", &["secret:s2"]).await;
    w.tokens.insert("job".into(), job);
    w.tokens.insert("other job".into(), job2);
    let frank_id = w.tokens["frank"].split('.').nth(1).unwrap().to_owned();
    w.ok(
        "DELETE",
        &format!("/api/v1/admin/tokens/{frank_id}"),
        "operator",
        "",
    )
    .await;
    let zed_id = w.tokens["zed"].split('.').nth(1).unwrap().to_owned();
    let names = ["alice", "bob", "carol", "dave", "eve"];
    let mut tokens: [Option<String>; 11] = Default::default();
    for (i, who) in WHO.iter().enumerate() {
        tokens[i] = match *who {
            "owner" => w.token("alice"),
            "read" | "write" | "manage" | "stranger" => w.token(names[i - 1]),
            "revoked" => w.token("frank"),
            other => w.token(other),
        };
    }
    (w, tokens, job2_id, zed_id)
}

/// One route of the matrix: `METHOD PATH`, a body, the status each caller gets, and a check
/// of a successful answer's body.
struct Row<'a> {
    route: &'a str,
    body: Option<&'a str>,
    expected: [u16; 11],
    check: fn(&str, &Value),
}

fn row<'a>(
    route: &'a str,
    body: Option<&'a str>,
    expected: [u16; 11],
    check: fn(&str, &Value),
) -> Row<'a> {
    Row {
        route,
        body,
        expected,
        check,
    }
}

fn no_check(_: &str, _: &Value) {}

#[tokio::test]
async fn authorization_matrix() {
    let put_s1 = r#"{"key":"s1","owner":"alice","value":"dg=="}"#.to_owned();
    let share = format!(r#"[{{"uri":"{URI}","action":"read"}}]"#);
    let resolve = format!(r#"{{"uris":["{URI}"]}}"#);
    let job = format!(r#"{{"secret_volumes":[{{"src_secret_uri":"{URI}","dst_path":"/s"}}]}}"#);
    let revoke = format!("DELETE /api/v1/users/zed/permissions?uri={URI_Q}");
    #[rustfmt::skip]
    let rows = [
        //                                                      op   own  read wri  man  str  job  job2 none bad  rev
        row("GET /api/v1/secrets/alice/s1", None,              [403, 200, 200, 200, 200, 403, 200, 403, 401, 401, 401], |_, v| assert_eq!(v["value"], "dg==")),
        row("POST /api/v1/secrets", Some(&put_s1),             [403, 201, 403, 201, 201, 403, 403, 403, 401, 401, 401], no_check),
        row("DELETE /api/v1/secrets/alice/s1", None,           [403, 204, 403, 204, 204, 403, 403, 403, 401, 401, 401], no_check),
        row("GET /api/v1/secrets", None,                       [403, 200, 200, 200, 200, 200, 403, 403, 401, 401, 401], |who, v| {
            let listed = v.as_array().unwrap().iter().any(|s| s["uri"] == URI);
            assert_eq!(listed, who != "stranger", "list as {who}: {v}");
        }),
        row("POST /api/v1/secrets/resolve", Some(&resolve),    [403, 200, 200, 200, 200, 200, 200, 200, 401, 401, 401], |who, v| {
            let want = if matches!(who, "stranger" | "other job") { "forbidden" } else { "ok" };
            assert_eq!(v["results"][0]["status"], want, "resolve as {who}: {v}");
        }),
        row("GET /api/v1/secrets/watch", None,                 [403, 200, 200, 200, 200, 200, 200, 200, 401, 401, 401], no_check),
        row("POST /api/v1/users/zed/permissions", Some(&share), [403, 201, 403, 403, 201, 403, 403, 403, 401, 401, 401], no_check),
        row(&revoke, None,                                     [403, 204, 403, 403, 204, 403, 403, 403, 401, 401, 401], no_check),
        row("GET /api/v1/users/alice/permissions", None,       [200, 200, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("GET /api/v1/users/alice/permissions/shared", None, [200, 200, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("POST /api/v1/jobs", Some(&job),                   [403, 201, 201, 201, 201, 403, 403, 403, 401, 401, 401], no_check),
        // Whoever may not delete a job is told it does not exist.
        row("DELETE /api/v1/jobs/{job2}", None,                [204, 204, 404, 404, 404, 404, 404, 204, 401, 401, 401], no_check),
        row("POST /api/v1/admin/users", Some(r#"{"name":"new"}"#), [201, 403, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("DELETE /api/v1/admin/users/zed?secrets=keep", None, [200, 403, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("POST /api/v1/admin/users/zed/tokens", None,       [201, 403, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("GET /api/v1/admin/users/zed/tokens", None,        [200, 403, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("DELETE /api/v1/admin/tokens/{zed}", None,         [204, 403, 403, 403, 403, 403, 403, 403, 401, 401, 401], no_check),
        row("GET /api/v1/whoami", None,                        [200, 200, 200, 200, 200, 200, 200, 200, 401, 401, 401], |who, v| {
            let kind = match who { "operator" => "operator", "job" | "other job" => "job", _ => "user" };
            assert_eq!(v["kind"], kind, "whoami as {who}");
        }),
        row("GET /api/v1/ping", None,                          [200; 11], no_check),
    ];
    // Each cell on a fresh service, so that a change made by one caller cannot decide the
    // next caller's answer.
    let mut failures = Vec::new();
    for Row {
        route,
        body,
        expected,
        check,
    } in rows
    {
        let (method, path) = route.split_once(' ').unwrap();
        // Writers, managers and the other job are the domain matrix's: here one caller of
        // each outcome is enough.
        for (i, who) in WHO.iter().enumerate() {
            if matches!(*who, "write" | "manage" | "other job") {
                continue;
            }
            let (w, tokens, job2, zed) = matrix_world().await;
            let path = path.replace("{job2}", &job2).replace("{zed}", &zed);
            let (st, v) = w.call(method, &path, tokens[i].as_deref(), body).await;
            if st.as_u16() != expected[i] {
                failures.push(format!(
                    "{route} as {who}: got {st}, want {} ({v})",
                    expected[i]
                ));
            } else if st.is_success() {
                check(who, &v);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A denial names what is missing and is audited; the operator reads no secret.
#[tokio::test]
async fn a_denied_read_names_the_missing_permission_and_is_audited() {
    let (w, tokens, _, _) = matrix_world().await;
    let eve = tokens[5].as_deref();
    let (st, v) = w.call("GET", "/api/v1/secrets/alice/s1", eve, None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(v["missing"][0]["uri"], URI);
    assert_eq!(v["missing"][0]["action"], "read");
    w.assert_audited(&format!(
        r#""actor":"user:eve","action":"secret.read","uri":"{URI}","outcome":"denied""#
    ))
    .await;
    let (st, _) = w
        .call("GET", "/api/v1/secrets/alice/s1", Some(&w.admin), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

fn events(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uri"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_job_watches_only_its_own_uris() {
    let mut w = World::new(&["alice", "bob"]).await;
    w.put("alice", "alice", "s1").await;
    w.put("alice", "alice", "s2").await;
    w.put("bob", "bob", "b").await;
    w.share("bob", "alice", "secret://neuro-compute/bob/b", "read")
        .await;
    let (_, job) = w.job("alice", &["secret:s1"]).await;
    w.tokens.insert("job".into(), job);
    let since = w.revision("job").await;
    w.put("alice", "alice", "s2").await;
    w.put("bob", "bob", "b").await;
    w.put("alice", "alice", "s1").await;
    let v = w.watch("job", since).await;
    assert_eq!(events(&v), [URI], "{v}");
    // alice herself sees all three.
    let v = w.watch("alice", since).await;
    assert_eq!(events(&v).len(), 3, "{v}");
}

#[tokio::test]
async fn a_grantee_loses_events_when_revoked() {
    let w = World::new(&["alice", "bob"]).await;
    w.put("alice", "alice", "s1").await;
    w.share("alice", "bob", URI, "read").await;
    let before = w.revision("bob").await;
    w.put("alice", "alice", "s1").await;
    assert_eq!(events(&w.watch("bob", before).await), [URI]);
    w.ok(
        "DELETE",
        &format!("/api/v1/users/bob/permissions?uri={URI_Q}"),
        "alice",
        "",
    )
    .await;
    // The revocation itself is an event: bob must resolve again.
    let v = w.watch("bob", before).await;
    assert_eq!(v["acl_changed"], true, "{v}");
    // Changes from before the revocation are filtered by what bob may read now, and later
    // ones are not shown to him.
    let after = w.revision("bob").await;
    w.put("alice", "alice", "s1").await;
    let v = w.watch("bob", after).await;
    assert!(events(&v).is_empty(), "{v}");
    assert_eq!(v["acl_changed"], false, "{v}");
    assert!(v["revision"].as_u64().unwrap() > after, "{v}");
}

#[tokio::test]
async fn lists_are_ordered() {
    let w = World::new(&["alice", "aaron", "bob", "carol"]).await;
    for key in ["zz", "b", "a.1", "a"] {
        w.put("alice", "alice", key).await;
    }
    for (owner, key) in [("bob", "z"), ("bob", "c"), ("aaron", "x"), ("carol", "m")] {
        w.put(owner, owner, key).await;
    }
    w.share("bob", "alice", "secret://neuro-compute/bob/z", "read")
        .await;
    w.share("bob", "alice", "secret://neuro-compute/bob/c", "read")
        .await;
    w.share("aaron", "alice", "secret://neuro-compute/aaron", "read")
        .await;
    w.share("carol", "alice", "secret://neuro-compute/carol/m", "write")
        .await;
    // Her own first, then what is shared with her, each by owner then key.
    let v = w.ok("GET", "/api/v1/secrets", "alice", "").await;
    let got: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["uri"].as_str().unwrap())
        .collect();
    let want: Vec<String> = [
        "alice/a",
        "alice/a.1",
        "alice/b",
        "alice/zz",
        "aaron/x",
        "bob/c",
        "bob/z",
        "carol/m",
    ]
    .iter()
    .map(|s| format!("secret://neuro-compute/{s}"))
    .collect();
    assert_eq!(got, want);
    // Permissions: the own namespace first, then grants by URI.
    let v = w
        .ok("GET", "/api/v1/users/alice/permissions", "alice", "")
        .await;
    let got: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "secret://neuro-compute/alice",
            "secret://neuro-compute/aaron",
            "secret://neuro-compute/bob/c",
            "secret://neuro-compute/bob/z",
            "secret://neuro-compute/carol/m",
        ]
    );
    // Shared: by URI, then grantee.
    w.share("bob", "carol", "secret://neuro-compute/bob/c", "read")
        .await;
    let v = w
        .ok("GET", "/api/v1/users/bob/permissions/shared", "bob", "")
        .await;
    let got: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["uri"].as_str().unwrap(), g["user"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("secret://neuro-compute/bob/c", "alice"),
            ("secret://neuro-compute/bob/c", "carol"),
            ("secret://neuro-compute/bob/z", "alice"),
        ]
    );
}

/// Reads are answered from the cache of opened values only while the stored seal is the one
/// the entry was opened from: a rewrite, a delete and a re-add with an earlier value all read
/// back at once, through both GET and resolve.
#[tokio::test]
async fn reads_follow_rewrites_and_deletes_at_once() {
    let w = World::new(&["alice"]).await;
    let uri = "secret://neuro-compute/alice/k";
    async fn read(w: &World, uri: &str) -> (StatusCode, Value, Value) {
        let alice = w.token("alice");
        let (st, v) = w
            .call("GET", "/api/v1/secrets/alice/k", alice.as_deref(), None)
            .await;
        let body = format!(r#"{{"uris":["{uri}"]}}"#);
        let r = w
            .ok("POST", "/api/v1/secrets/resolve", "alice", &body)
            .await;
        (st, v["value"].clone(), r["results"][0]["value"].clone())
    }
    let put = |value: &'static str| format!(r#"{{"key":"k","owner":"alice","value":"{value}"}}"#);
    for (i, value) in ["YQ==", "Yg==", "YQ==", "YWFh"].into_iter().enumerate() {
        w.ok("POST", "/api/v1/secrets", "alice", &put(value)).await;
        // Twice: the second read is the cached one.
        for _ in 0..2 {
            let (st, got, resolved) = read(&w, uri).await;
            assert_eq!(st, StatusCode::OK, "write {i}");
            assert_eq!(got, value, "GET after write {i}");
            assert_eq!(resolved, value, "resolve after write {i}");
        }
    }
    w.ok("DELETE", "/api/v1/secrets/alice/k", "alice", "").await;
    let (st, _, resolved) = read(&w, uri).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(resolved, Value::Null);
    w.ok("POST", "/api/v1/secrets", "alice", &put("YQ==")).await;
    let (st, got, _) = read(&w, uri).await;
    assert_eq!((st, got), (StatusCode::OK, Value::from("YQ==")));
}

/// A job token stops working when its `ttl_s` runs out, cached or not: it reads before, and
/// is refused as expired after.
#[tokio::test]
async fn a_job_token_expires_after_its_ttl() {
    let mut w = World::new(&["alice"]).await;
    w.put("alice", "alice", "s1").await;
    let body = format!(r#"{{"secret_env":{{"S":"{URI}"}},"ttl_s":1}}"#);
    let v = w.ok("POST", "/api/v1/jobs", "alice", &body).await;
    w.tokens
        .insert("job".into(), v["token"].as_str().unwrap().to_owned());
    let read = || async {
        let t = w.token("job");
        w.call("GET", "/api/v1/secrets/alice/s1", t.as_deref(), None)
            .await
    };
    let (st, _) = read().await;
    assert_eq!(st, StatusCode::OK);
    // Expiry is checked in whole seconds: past the second after the next one, it is over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, v) = read().await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
}

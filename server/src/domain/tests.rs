//! The authorization matrix at the domain level: every operation against every kind of
//! caller, with no HTTP in between (the API's own, smaller table checks how each outcome maps
//! to a status code: `tests/api_inprocess.rs`).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use secrets_core::api::{Grant, JobSpec, JobVolume};
use secrets_core::{Action, ClusterName, JobId, SecretBytes, SecretKey, UserName};

use super::{Domain, DomainError, Principal};

const URI: &str = "secret://neuro-compute/alice/s1";

fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

fn key(k: &str) -> SecretKey {
    SecretKey::new(k).unwrap()
}

fn user(n: &str) -> Principal {
    Principal::User(name(n))
}

/// A domain on a fresh data directory (tmpfs where there is one), and the directory.
async fn domain() -> (Domain, tempfile::TempDir) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let app = crate::open_service(dir.path(), ClusterName::new("neuro-compute").unwrap(), None)
        .await
        .unwrap();
    (app.domain, dir)
}

/// The callers of the matrix, in the order of its expectation arrays.
const WHO: [&str; 8] = [
    "operator",
    "owner",
    "read",
    "write",
    "manage",
    "stranger",
    "job",
    "other job",
];

/// What one cell needs: the domain, the caller, zed's token id, the other job's id.
struct World {
    d: Domain,
    _dir: tempfile::TempDir,
    callers: Vec<Principal>,
    zed_token: String,
    job2: JobId,
}

/// alice owns s1 and s2; bob reads, carol writes and dave manages s1; eve holds nothing; zed
/// holds read on s1 (so that revoking it succeeds); "job" reads s1, "other job" s2.
async fn world() -> World {
    let (d, dir) = domain().await;
    let op = Principal::Operator;
    let mut zed_token = String::new();
    for u in ["alice", "bob", "carol", "dave", "eve", "zed"] {
        let t = d.create_user(&op, &name(u)).await.unwrap();
        if u == "zed" {
            zed_token = t.token_id;
        }
    }
    let alice = user("alice");
    for k in ["s1", "s2"] {
        d.put_secret(&alice, None, key(k), &SecretBytes::new(b"v".to_vec()))
            .await
            .unwrap();
    }
    for (u, a) in [
        ("bob", Action::Read),
        ("carol", Action::Write),
        ("dave", Action::Manage),
        ("zed", Action::Read),
    ] {
        let g = Grant {
            uri: URI.into(),
            action: a,
        };
        d.grant(&alice, &name(u), &[g]).await.unwrap();
    }
    let job = |uri: &str| JobSpec {
        secret_volumes: vec![JobVolume {
            src_secret_uri: uri.into(),
            dst_path: "/s".into(),
        }],
        ..Default::default()
    };
    let j1 = d.create_job(&alice, &job(URI)).await.unwrap();
    let j2 = d.create_job(&alice, &job("secret:s2")).await.unwrap();
    let as_job = |created: &secrets_core::api::JobCreated, uri: &str| Principal::Job {
        id: created.job_id.to_string(),
        owner: name("alice"),
        uris: Arc::new(
            [crate::domain::auth::parse_full(uri).unwrap()]
                .into_iter()
                .collect::<HashSet<_>>(),
        ),
    };
    let callers = vec![
        Principal::Operator,
        alice.clone(),
        user("bob"),
        user("carol"),
        user("dave"),
        user("eve"),
        as_job(&j1, URI),
        as_job(&j2, "secret://neuro-compute/alice/s2"),
    ];
    World {
        d,
        _dir: dir,
        callers,
        zed_token,
        job2: j2.job_id,
    }
}

type Op = for<'a> fn(&'a World, &'a Principal) -> Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// A cell's outcome: `"ok"`, or the error's kind (`DomainError::kind`).
type Outcome = Result<&'static str, DomainError>;

fn done<T>(r: Result<T, DomainError>) -> Outcome {
    r.map(|_| "ok")
}

macro_rules! op {
    (|$w:ident, $p:ident| $body:expr) => {{
        fn f<'a>($w: &'a World, $p: &'a Principal) -> Pin<Box<dyn Future<Output = Outcome> + 'a>> {
            Box::pin(async move { $body })
        }
        f as Op
    }};
}

#[tokio::test]
async fn authorization_matrix() {
    let rows: Vec<(&str, Op, [&str; 8])> = vec![
        //                                                          op           own   read  write manage stranger job   job2
        (
            "read alice/s1",
            op!(|w, p| done(w.d.read_secret(p, name("alice"), key("s1")).await)),
            [
                "forbidden",
                "ok",
                "ok",
                "ok",
                "ok",
                "forbidden",
                "ok",
                "forbidden",
            ],
        ),
        (
            "write alice/s1",
            op!(|w, p| done(
                w.d.put_secret(
                    p,
                    Some(name("alice")),
                    key("s1"),
                    &SecretBytes::new(b"w".to_vec())
                )
                .await
            )),
            [
                "forbidden",
                "ok",
                "forbidden",
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "delete alice/s1",
            op!(|w, p| done(w.d.delete_secret(p, name("alice"), key("s1")).await)),
            [
                "forbidden",
                "ok",
                "forbidden",
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "list, s1 in it",
            op!(|w, p| {
                let listed = w.d.list_secrets(p).await?;
                Ok(if listed.iter().any(|s| s.uri == URI) {
                    "ok"
                } else {
                    "absent"
                })
            }),
            [
                "forbidden",
                "ok",
                "ok",
                "ok",
                "ok",
                "absent",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "resolve s1, its status",
            op!(|w, p| {
                let r = w.d.resolve(p, vec![URI.into()]).await?;
                Ok(match r.results[0].status {
                    secrets_core::api::ResolveStatus::Ok => "ok",
                    secrets_core::api::ResolveStatus::Forbidden => "resolve: forbidden",
                    _ => "resolve: other",
                })
            }),
            [
                "forbidden",
                "ok",
                "ok",
                "ok",
                "ok",
                "resolve: forbidden",
                "ok",
                "resolve: forbidden",
            ],
        ),
        (
            "watch",
            op!(|w, p| done(w.d.watch(p, None, Duration::ZERO).await)),
            ["forbidden", "ok", "ok", "ok", "ok", "ok", "ok", "ok"],
        ),
        (
            "share s1 with zed",
            op!(|w, p| done(
                w.d.grant(
                    p,
                    &name("zed"),
                    &[Grant {
                        uri: URI.into(),
                        action: Action::Read
                    }]
                )
                .await
            )),
            [
                "forbidden",
                "ok",
                "forbidden",
                "forbidden",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "revoke zed's grant on s1",
            op!(|w, p| done(w.d.revoke(p, &name("zed"), URI).await)),
            [
                "forbidden",
                "ok",
                "forbidden",
                "forbidden",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "list alice's permissions",
            op!(|w, p| done(w.d.list_permissions(p, &name("alice")).await)),
            [
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "list what alice shared",
            op!(|w, p| done(w.d.list_shared(p, &name("alice")).await)),
            [
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "create a job reading s1",
            op!(|w, p| done(
                w.d.create_job(
                    p,
                    &JobSpec {
                        secret_volumes: vec![JobVolume {
                            src_secret_uri: URI.into(),
                            dst_path: "/s".into()
                        }],
                        ..Default::default()
                    }
                )
                .await
            )),
            [
                "forbidden",
                "ok",
                "ok",
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        // Whoever may not delete a job is told it does not exist.
        (
            "delete the other job",
            op!(|w, p| done(w.d.delete_job(p, &w.job2).await)),
            [
                "ok",
                "ok",
                "not found",
                "not found",
                "not found",
                "not found",
                "not found",
                "ok",
            ],
        ),
        (
            "create user new",
            op!(|w, p| done(w.d.create_user(p, &name("new")).await)),
            [
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "remove zed, keeping secrets",
            op!(|w, p| done(w.d.remove_user(p, &name("zed"), false).await)),
            [
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "issue zed a token",
            op!(|w, p| done(w.d.issue_token(p, &name("zed")).await)),
            [
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "list zed's tokens",
            op!(|w, p| done(w.d.list_tokens(p, &name("zed")).await)),
            [
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "revoke zed's token",
            op!(|w, p| done(w.d.revoke_token(p, &w.zed_token).await)),
            [
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "whoami, its kind",
            op!(|w, p| Ok(match w.d.whoami(p).kind.as_str() {
                "operator" => "operator",
                "job" => "job",
                _ => "user",
            })),
            [
                "operator", "user", "user", "user", "user", "user", "job", "job",
            ],
        ),
    ];
    // Each cell on a fresh domain, so that a change made by one caller cannot decide the next
    // caller's answer.
    let mut failures = Vec::new();
    for (what, op, expected) in rows {
        for (i, who) in WHO.iter().enumerate() {
            let w = world().await;
            let got = match op(&w, &w.callers[i]).await {
                Ok(s) => s,
                Err(e) => e.kind(),
            };
            if got != expected[i] {
                failures.push(format!("{what} as {who}: got {got}, want {}", expected[i]));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Refusals for want of permissions name what is missing.
#[tokio::test]
async fn a_refused_read_names_the_missing_permission() {
    let w = world().await;
    match w
        .d
        .read_secret(&user("eve"), name("alice"), key("s1"))
        .await
    {
        Err(DomainError::Forbidden { missing, .. }) => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].uri, URI);
            assert_eq!(missing[0].action, Action::Read);
        }
        other => panic!("{other:?}"),
    }
}

/// The one check of a bearer token: an issued one authenticates as its subject; the same with
/// one hex digit of its secret changed does not, before and after a good use of the real one
/// (the stored path, then the cached path).
#[tokio::test]
async fn only_the_issued_secret_authenticates() {
    let (d, _dir) = domain().await;
    let t = d
        .create_user(&Principal::Operator, &name("alice"))
        .await
        .unwrap();
    let real = t.token.expose().to_owned();
    let last = real.chars().last().unwrap();
    let flipped = if last == '0' { '1' } else { '0' };
    let forged = format!("{}{flipped}", &real[..real.len() - 1]);
    let kind = |r: Result<Principal, DomainError>| match r {
        Ok(Principal::User(u)) => format!("user {u}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => e.kind().to_owned(),
    };
    assert_eq!(kind(d.authenticate(&forged).await), "unauthenticated");
    assert_eq!(kind(d.authenticate(&real).await), "user alice");
    assert_eq!(
        kind(d.authenticate(&forged).await),
        "unauthenticated",
        "after the real one was cached"
    );
}

/// The limits on a resolve and on a job's lifetime are refused as invalid, at their edges.
#[tokio::test]
async fn resolve_size_and_job_lifetime_are_bounded() {
    let w = world().await;
    let alice = user("alice");
    let uris = |n: usize| vec![URI.to_owned(); n];
    assert!(w.d.resolve(&alice, uris(super::MAX_RESOLVE)).await.is_ok());
    match w.d.resolve(&alice, uris(super::MAX_RESOLVE + 1)).await {
        Err(DomainError::Invalid(m)) => assert!(m.contains("at most 1000"), "{m}"),
        other => panic!("{other:?}"),
    }
    let job = |ttl_s| JobSpec {
        secret_volumes: vec![JobVolume {
            src_secret_uri: URI.into(),
            dst_path: "/s".into(),
        }],
        ttl_s: Some(ttl_s),
        ..Default::default()
    };
    assert!(
        w.d.create_job(&alice, &job(super::MAX_JOB_TTL_S))
            .await
            .is_ok()
    );
    for bad in [0, super::MAX_JOB_TTL_S + 1] {
        match w.d.create_job(&alice, &job(bad)).await {
            Err(DomainError::Invalid(m)) => assert!(m.contains("out of range"), "{m}"),
            other => panic!("ttl_s {bad}: {other:?}"),
        }
    }
}

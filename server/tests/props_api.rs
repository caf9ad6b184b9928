//! Property tests of the service's edge: generated bearer tokens, watch queries and request
//! bodies sent through `app(state)` (in process, on a temporary store). Whatever arrives, the
//! answer is a 4xx or a 2xx with the API's error shape, never a panic or a 5xx, and a token
//! that is not one the service issued is never accepted.
//!
//! The suite runs 256 cases each; `PROPTEST_CASES=100000` is the long run (README, bench/fuzz.sh).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use tower::ServiceExt as _;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Router,
    alice: String,
    _dir: tempfile::TempDir,
}

/// One service for all cases: a store on tmpfs when there is one (writes fsync), user alice
/// with one secret.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, dir, admin) = rt.block_on(common::service());
        let f = Fixture {
            rt,
            app,
            alice: String::new(),
            _dir: dir,
        };
        let (st, body) = f.call(
            "POST",
            "/api/v1/admin/users",
            admin.trim(),
            Some(r#"{"name":"alice"}"#),
        );
        assert_eq!(st, StatusCode::CREATED, "{body}");
        let alice = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let f = Fixture { alice, ..f };
        let (st, body) = f.call(
            "POST",
            "/api/v1/secrets",
            &f.alice,
            Some(r#"{"key":"k","value":"aGVsbG8="}"#),
        );
        assert_eq!(st, StatusCode::CREATED, "{body}");
        f
    })
}

impl Fixture {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
        self.rt.block_on(async {
            let resp = self.app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._:/=@?#~ %&+\\-]{0,70}",
        1 => any::<String>(),
    ]
}

/// Strings shaped like tokens (`nst.ID.SECRET`) and near misses.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        text(),
        ("[0-9a-fA-F]{14,18}", "[0-9a-f]{0,70}").prop_map(|(id, s)| format!("nst.{id}.{s}")),
        ("[0-9a-f]{16}", "[0-9a-f.]{60,70}").prop_map(|(id, s)| format!("nst.{id}.{s}")),
        "nst[.]{0,4}[0-9a-f.]{0,90}",
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("".to_owned()),
        Just("1e3".to_owned()),
        text(),
    ]
}

/// A watch query: `since`, `timeout_s` and noise, always ending in `timeout_s=0` so that no
/// case waits.
fn watch_query() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        number().prop_map(|n| format!("since={}", enc(&n))),
        number().prop_map(|n| format!("timeout_s={}", enc(&n))),
        text().prop_map(|t| enc(&t)),
    ];
    proptest::collection::vec(param, 0..4).prop_map(|ps| {
        let mut q = ps.join("&");
        q.push_str("&timeout_s=0");
        q
    })
}

/// Percent-encodes everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~=".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn json_body() -> impl Strategy<Value = String> {
    let uri = ("[a-z]{1,6}", 0..3u8).prop_map(|(k, s)| match s {
        0 => format!("\"secret:{k}\""),
        1 => format!("\"secret:/alice/{k}\""),
        _ => format!("\"secret://neuro-compute/bob/{k}\""),
    });
    let scalar = prop_oneof![
        text().prop_map(|s| serde_json::Value::String(s).to_string()),
        uri.clone(),
        proptest::collection::vec(uri, 0..5).prop_map(|v| format!("[{}]", v.join(","))),
        Just("null".to_owned()),
        Just("0".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"aGVsbG8=\"".to_owned()),
        Just("\"read\"".to_owned()),
        Just(r#"{"A":"secret:k"}"#.to_owned()),
        Just(r#"[{"src_secret_uri":"secret:k","dst_path":"/a/b"}]"#.to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ];
    let field = prop_oneof![
        Just("key"),
        Just("value"),
        Just("owner"),
        Just("uris"),
        Just("name"),
        Just("uri"),
        Just("action"),
        Just("secret_env"),
        Just("secret_volumes"),
        Just("ttl_s"),
    ];
    prop_oneof![
        proptest::collection::vec((field, scalar), 0..5).prop_map(|fs| {
            let inner: Vec<String> = fs.iter().map(|(f, v)| format!("\"{f}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }),
        text(),
    ]
}

fn assert_client_error_shape(st: StatusCode, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(!st.is_server_error(), "{st}: {body}");
    if st.is_client_error() {
        let v: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| TestCaseError::fail(format!("{st}: not JSON ({e}): {body}")))?;
        prop_assert!(v["error"].is_string(), "{st}: {body}");
    }
    Ok(())
}

proptest! {
    // Failures print their minimal input; nothing is written next to the sources.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn only_issued_tokens_authenticate(t in token()) {
        let f = fixture();
        let (st, body) = f.call("GET", "/api/v1/whoami", &t, None);
        if t.trim() != f.alice {
            prop_assert_eq!(st, StatusCode::UNAUTHORIZED, "{}", body);
        }
        assert_client_error_shape(st, &body)?;
    }

    /// The real token with one hex digit of its secret changed never authenticates: on the
    /// stored path, and after a good use of the real one put it in the cache (`warm`).
    #[test]
    fn near_misses_of_an_issued_token_do_not_authenticate(
        pos in 0usize..64,
        shift in 1u32..16,
        warm in any::<bool>(),
    ) {
        let f = fixture();
        let real = f.alice.trim();
        let (head, secret) = real.rsplit_once('.').unwrap();
        let mut forged: Vec<char> = secret.chars().collect();
        let digit = forged[pos].to_digit(16).unwrap();
        forged[pos] = char::from_digit((digit + shift) % 16, 16).unwrap();
        let forged = format!("{head}.{}", forged.into_iter().collect::<String>());
        prop_assert_ne!(&forged, real);
        if warm {
            let (st, body) = f.call("GET", "/api/v1/whoami", real, None);
            prop_assert_eq!(st, StatusCode::OK, "{}", body);
        }
        let (st, body) = f.call("GET", "/api/v1/whoami", &forged, None);
        prop_assert_eq!(st, StatusCode::UNAUTHORIZED, "{}", body);
    }

    #[test]
    fn watch_queries_answer_or_say_why(q in watch_query()) {
        let f = fixture();
        let (st, body) = f.call("GET", &format!("/api/v1/secrets/watch?{q}"), &f.alice, None);
        prop_assert!(st == StatusCode::OK || st == StatusCode::BAD_REQUEST, "{st}: {body}");
        assert_client_error_shape(st, &body)?;
        if st == StatusCode::OK {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            prop_assert!(v["revision"].is_u64(), "{}", body);
        }
    }

    #[test]
    fn request_bodies_never_fail_the_service(
        b in json_body(),
        route in prop_oneof![
            Just("/api/v1/secrets"),
            Just("/api/v1/secrets/resolve"),
            Just("/api/v1/jobs"),
            Just("/api/v1/users/bob/permissions"),
            Just("/api/v1/users/alice/permissions"),
        ],
    ) {
        let f = fixture();
        let (st, body) = f.call("POST", route, &f.alice, Some(&b));
        assert_client_error_shape(st, &body)?;
    }
}

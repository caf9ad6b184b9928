//! Bad input, through the CLI and the raw API: a clear error, the right status and exit code,
//! and nothing already stored changes.

use crate::harness::Server;

#[test]
fn cli_rejects_bad_input_and_changes_nothing() {
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob"]);
    let alice = srv.user("alice", &t[0]);
    alice.ok(&["secret", "add", "k", "original"]);
    let before = alice.ok(&["secret", "ls", "-o", "json"]).stdout_str();

    let long = "k".repeat(254);
    for (args, code, msg) in [
        (
            vec!["secret", "add", "..k", "v"],
            65,
            "invalid secret key '..k': must not start with '..'",
        ),
        (vec!["secret", "add", ".", "v"], 65, "'.' is not a key"),
        (vec!["secret", "add", "a/b", "v"], 65, "'/' is not allowed"),
        (
            vec!["secret", "add", "a b", "v"],
            65,
            "only letters, digits",
        ),
        (
            vec!["secret", "add", &long, "v"],
            65,
            "at most 253 characters",
        ),
        (
            vec!["secret", "add", "k", ""],
            65,
            "the value of 'k' is empty",
        ),
        (
            vec!["secret", "add", "k", "@/nonexistent/file"],
            65,
            "cannot read value file '/nonexistent/file'",
        ),
        (
            vec!["secret", "get", "http://c/alice/k"],
            65,
            "scheme 'http' is not 'secret'",
        ),
        (
            vec!["secret", "get", "secret:k?x"],
            65,
            "a query ('?') is not allowed",
        ),
        (
            vec!["secret", "get", "secret:k#x"],
            65,
            "a fragment ('#') is not allowed",
        ),
        (
            vec!["secret", "get", "secret://u:p@c/alice/k"],
            65,
            "a user or password in the authority is not allowed",
        ),
        (
            vec!["secret", "get", "secret://c:1/alice/k"],
            65,
            "a port in the authority is not allowed",
        ),
        (
            vec!["secret", "get", "secret:/~alice/k"],
            65,
            "a '~' path is not allowed",
        ),
        (
            vec!["secret", "get", "secret:/alice"],
            65,
            "expected secret:KEY",
        ),
        (
            vec!["secret", "add", "secret:/Alice/k", "v"],
            65,
            "invalid user name 'Alice'",
        ),
        (
            vec!["share", "secret:k", "nobody"],
            72,
            "user 'nobody' not found",
        ),
        (
            vec!["share", "secret:k", "Bob"],
            65,
            "invalid user name 'Bob'",
        ),
        (
            vec!["share", "secret://other/alice/k", "bob"],
            65,
            "names cluster 'other'",
        ),
        (
            vec!["share", "secret:k?x", "bob"],
            65,
            "a query ('?') is not allowed",
        ),
        (
            vec!["share", "secret:k", "alice"],
            65,
            "owns 'secret://neuro-compute/alice/k'",
        ),
        (
            vec!["acl", "revoke", "secret:k#f", "bob"],
            65,
            "a fragment ('#') is not allowed",
        ),
        (vec!["secret", "get", "nope"], 72, "Secret 'nope' not found"),
    ] {
        let o = alice.fails(&args, code, msg);
        assert!(!o.stderr.contains("original"));
    }
    // usage errors: exit 2
    for args in [
        vec!["share", "secret:k", "bob", "admin"],
        vec!["secret", "add", "k"],
        vec!["secret", "frobnicate"],
    ] {
        assert_eq!(alice.run(&args).code, 2, "{args:?}");
    }

    // The 1 MiB limit, exactly.
    let dir = srv.dir.path();
    std::fs::write(dir.join("max"), vec![b'x'; 1024 * 1024]).unwrap();
    std::fs::write(dir.join("over"), vec![b'x'; 1024 * 1024 + 1]).unwrap();
    alice.ok(&[
        "secret",
        "add",
        "big",
        &format!("@{}", dir.join("max").display()),
    ]);
    assert_eq!(
        alice
            .run_full(&["secret", "get", "big"], b"", true)
            .stdout
            .len(),
        1024 * 1024
    );
    alice.fails(
        &[
            "secret",
            "add",
            "k",
            &format!("@{}", dir.join("over").display()),
        ],
        65,
        "is 1048577 bytes; the limit is 1048576 bytes (1 MiB)",
    );
    alice.ok(&["secret", "rm", "big"]);

    assert_eq!(
        alice.ok(&["secret", "ls", "-o", "json"]).stdout_str(),
        before,
        "nothing changed"
    );
    assert_eq!(
        alice.run_full(&["secret", "get", "k"], b"", true).stdout,
        b"original"
    );
}

#[test]
fn api_rejects_bad_requests_with_json_errors() {
    let srv = Server::start();
    let t = srv.add_users(&["alice"]);
    let tok = Some(t[0].as_str());
    assert_eq!(
        srv.http(
            "POST",
            "/api/v1/secrets",
            tok,
            Some(r#"{"key":"k","value":"dg=="}"#)
        )
        .status,
        201
    );

    let cases: Vec<(&str, &str, Option<(&str, Vec<u8>)>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/secrets",
            Some(("application/json", b"{\"key\":".to_vec())),
            400,
            "malformed JSON",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some(("application/json", b"[1,2]".to_vec())),
            400,
            "invalid request",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some(("application/json", br#"{"key":"k","value":"***"}"#.to_vec())),
            400,
            "not valid base64",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some((
                "application/json",
                br#"{"key":"k/x","value":"dg=="}"#.to_vec(),
            )),
            400,
            "invalid secret key 'k/x'",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some(("application/json", br#"{"key":"k","value":""}"#.to_vec())),
            400,
            "is empty",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some((
                "application/json",
                br#"{"key":"k","value":"dg==","colour":1}"#.to_vec(),
            )),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/api/v1/secrets",
            Some(("text/plain", br#"{"key":"k","value":"dg=="}"#.to_vec())),
            415,
            "Content-Type: application/json",
        ),
        ("POST", "/api/v1/secrets", None, 415, "Content-Type"),
        (
            "POST",
            "/api/v1/secrets",
            Some(("application/json", vec![b' '; 3 * 1024 * 1024])),
            413,
            "larger than",
        ),
        (
            "GET",
            "/api/v1/nope",
            None,
            404,
            "no route for GET /api/v1/nope",
        ),
        ("GET", "/", None, 404, "no route"),
        (
            "PUT",
            "/api/v1/secrets",
            None,
            405,
            "method PUT is not allowed",
        ),
        (
            "GET",
            "/api/v1/secrets/alice/..k",
            None,
            400,
            "invalid secret key '..k'",
        ),
        (
            "GET",
            "/api/v1/secrets/Alice/k",
            None,
            400,
            "invalid user name 'Alice'",
        ),
        (
            "DELETE",
            "/api/v1/users/alice/permissions",
            None,
            400,
            "missing query parameter 'uri'",
        ),
        (
            "POST",
            "/api/v1/admin/users",
            Some(("application/json", br#"{"name":"x"}"#.to_vec())),
            403,
            "only the operator",
        ),
        (
            "POST",
            "/api/v1/secrets/resolve",
            Some(("application/json", br#"{"uris":"secret:k"}"#.to_vec())),
            400,
            "invalid request",
        ),
    ];
    for (m, p, body, status, msg) in cases {
        let r = srv.http_raw(m, p, tok, body.as_ref().map(|(ct, b)| (*ct, b.as_slice())));
        assert_eq!(r.status, status, "{m} {p}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(err.contains(msg), "{m} {p}: {err:?} lacks {msg:?}");
    }
    // Unauthenticated requests get 401 with a JSON body too.
    let r = srv.http("GET", "/api/v1/secrets", None, None);
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (401, "missing bearer token")
    );
    let r = srv.http(
        "GET",
        "/api/v1/secrets",
        Some("nst.0000000000000000.00"),
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (401, "invalid token")
    );

    let r = srv.http("GET", "/api/v1/secrets/alice/k", tok, None);
    assert_eq!(
        r.json()["value"],
        "dg==",
        "the stored value survived every bad request"
    );
    assert_eq!(r.json()["version"], 1);
}

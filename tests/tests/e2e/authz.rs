//! The authorization matrix: every route against every kind of caller, each allow and deny.

use crate::harness::{Server, b64, http};

const URI: &str = "secret://neuro-compute/alice/s1";
const URI_Q: &str = "secret%3A%2F%2Fneuro-compute%2Falice%2Fs1";

/// The callers, in the order of the expectation arrays below.
const WHO: [&str; 8] = [
    "owner", "read", "write", "manage", "stranger", "job", "no token", "revoked",
];

#[test]
fn every_route_against_every_caller() {
    let srv = Server::start();
    let t = srv.add_users(&["alice", "bob", "carol", "dave", "eve", "zed", "frank"]);
    let (alice, bob, carol, dave, eve, frank) = (&t[0], &t[1], &t[2], &t[3], &t[4], &t[6]);
    let put = |tok: &str, key: &str| {
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, b64("v"));
        assert_eq!(
            srv.http("POST", "/api/v1/secrets", Some(tok), Some(&body))
                .status,
            201
        );
    };
    put(alice, "s1");
    for (user, action) in [("bob", "read"), ("carol", "write"), ("dave", "manage")] {
        let body = format!(r#"[{{"uri":"{URI}","action":"{action}"}}]"#);
        let r = srv.http(
            "POST",
            &format!("/api/v1/users/{user}/permissions"),
            Some(alice),
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let job = srv.http(
        "POST",
        "/api/v1/jobs",
        Some(alice),
        Some(&format!(r#"{{"secret_env":{{"S":"{URI}"}}}}"#)),
    );
    assert_eq!(job.status, 201, "{}", job.body);
    let job_token = job.json()["token"].as_str().unwrap().to_owned();
    // frank's token, revoked by the operator
    let op = srv.admin_token();
    let id = frank.split('.').nth(1).unwrap();
    assert_eq!(
        srv.http(
            "DELETE",
            &format!("/api/v1/admin/tokens/{id}"),
            Some(&op),
            None
        )
        .status,
        204
    );

    let tokens: [Option<&str>; 8] = [
        Some(alice),
        Some(bob),
        Some(carol),
        Some(dave),
        Some(eve),
        Some(&job_token),
        None,
        Some(frank),
    ];

    let check = |route: &str, expected: [u16; 8], f: &dyn Fn(usize, Option<&str>) -> u16| {
        for (i, tok) in tokens.iter().enumerate() {
            let got = f(i, *tok);
            assert_eq!(
                got, expected[i],
                "{route} as {}: got {got}, want {}",
                WHO[i], expected[i]
            );
        }
    };
    let req = |m: &str, p: &str, tok: Option<&str>, b: Option<&str>| {
        http(
            &srv.addr,
            m,
            p,
            tok,
            b.map(|b| ("application/json", b.as_bytes())),
        )
        .unwrap()
    };

    check(
        "GET secret",
        [200, 200, 200, 200, 403, 200, 401, 401],
        &|_, tok| req("GET", "/api/v1/secrets/alice/s1", tok, None).status,
    );
    check(
        "POST secret (overwrite)",
        [201, 403, 201, 201, 403, 403, 401, 401],
        &|_, tok| {
            let body = format!(r#"{{"key":"s1","owner":"alice","value":"{}"}}"#, b64("v"));
            req("POST", "/api/v1/secrets", tok, Some(&body)).status
        },
    );
    check(
        "DELETE secret",
        [204, 403, 204, 204, 403, 403, 401, 401],
        &|_, tok| {
            put(alice, "s1"); // (re)create, so that each caller meets an existing secret
            req("DELETE", "/api/v1/secrets/alice/s1", tok, None).status
        },
    );
    put(alice, "s1");
    check(
        "GET secrets (list)",
        [200, 200, 200, 200, 200, 403, 401, 401],
        &|i, tok| {
            let r = req("GET", "/api/v1/secrets", tok, None);
            if r.status == 200 {
                let listed = r.body.contains(URI);
                assert_eq!(
                    listed,
                    WHO[i] != "stranger",
                    "list as {}: {}",
                    WHO[i],
                    r.body
                );
            }
            r.status
        },
    );
    check(
        "POST resolve",
        [200, 200, 200, 200, 200, 200, 401, 401],
        &|i, tok| {
            let r = req(
                "POST",
                "/api/v1/secrets/resolve",
                tok,
                Some(&format!(r#"{{"uris":["{URI}"]}}"#)),
            );
            if r.status == 200 {
                let status = r.json()["results"][0]["status"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let want = if WHO[i] == "stranger" {
                    "forbidden"
                } else {
                    "ok"
                };
                assert_eq!(status, want, "resolve as {}", WHO[i]);
            }
            r.status
        },
    );
    check(
        "POST permissions (share onward)",
        [201, 403, 403, 201, 403, 403, 401, 401],
        &|_, tok| {
            let body = format!(r#"[{{"uri":"{URI}","action":"read"}}]"#);
            req("POST", "/api/v1/users/zed/permissions", tok, Some(&body)).status
        },
    );
    check(
        "DELETE permissions (revoke)",
        [204, 403, 403, 204, 403, 403, 401, 401],
        &|_, tok| {
            let body = format!(r#"[{{"uri":"{URI}","action":"read"}}]"#);
            assert_eq!(
                req(
                    "POST",
                    "/api/v1/users/zed/permissions",
                    Some(alice),
                    Some(&body)
                )
                .status,
                201
            );
            req(
                "DELETE",
                &format!("/api/v1/users/zed/permissions?uri={URI_Q}"),
                tok,
                None,
            )
            .status
        },
    );
    check(
        "GET permissions",
        [200, 403, 403, 403, 403, 403, 401, 401],
        &|_, tok| req("GET", "/api/v1/users/alice/permissions", tok, None).status,
    );
    check(
        "GET permissions/shared",
        [200, 403, 403, 403, 403, 403, 401, 401],
        &|_, tok| req("GET", "/api/v1/users/alice/permissions/shared", tok, None).status,
    );
    check(
        "POST jobs",
        [201, 201, 201, 201, 403, 403, 401, 401],
        &|_, tok| {
            let body =
                format!(r#"{{"secret_volumes":[{{"src_secret_uri":"{URI}","dst_path":"/s"}}]}}"#);
            req("POST", "/api/v1/jobs", tok, Some(&body)).status
        },
    );
    check(
        "POST admin/users",
        [403, 403, 403, 403, 403, 403, 401, 401],
        &|i, tok| {
            req(
                "POST",
                "/api/v1/admin/users",
                tok,
                Some(&format!(r#"{{"name":"new{i}"}}"#)),
            )
            .status
        },
    );
    check(
        "GET whoami",
        [200, 200, 200, 200, 200, 200, 401, 401],
        &|_, tok| req("GET", "/api/v1/whoami", tok, None).status,
    );
    check("GET ping (open)", [200; 8], &|_, tok| {
        req("GET", "/api/v1/ping", tok, None).status
    });

    // The operator manages users but reads no secret.
    assert_eq!(
        req(
            "POST",
            "/api/v1/admin/users",
            Some(&op),
            Some(r#"{"name":"newop"}"#)
        )
        .status,
        201
    );
    assert_eq!(
        req("GET", "/api/v1/secrets/alice/s1", Some(&op), None).status,
        403
    );
    // A forbidden read names what is missing.
    let r = req("GET", "/api/v1/secrets/alice/s1", Some(eve), None);
    assert_eq!(r.json()["missing"][0]["uri"], URI);
    assert_eq!(r.json()["missing"][0]["action"], "read");
    // A denial is audited.
    srv.assert_audited(r#""actor":"user:eve","action":"secret.read","uri":"secret://neuro-compute/alice/s1","outcome":"denied""#);
}

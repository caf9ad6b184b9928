//! Bad input, through the CLI and the raw API: a clear error, the right status and exit code,
//! and nothing already stored changes.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use crate::harness::{Server, bad_value, bin};

#[test]
fn cli_rejects_bad_input_and_changes_nothing() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let alice = srv.user("alice", &t[0]);
    alice.ok(&["secret", "add", "k", "original"]);
    let before = alice.ok(&["secret", "ls", "-o", "json"]).stdout_str();

    let long = "k".repeat(254);
    // A value refused while the arguments are parsed, before any request: exit 65 as well,
    // and the line names the argument (`bad_value`).
    const BAD_VALUE: i32 = -65;
    for (args, code, msg) in [
        (
            vec!["secret", "add", "..k", "v"],
            BAD_VALUE,
            "invalid secret key '..k': must not start with '..'",
        ),
        (
            vec!["secret", "add", ".", "v"],
            BAD_VALUE,
            "'.' is not a key",
        ),
        (
            vec!["secret", "add", "a/b", "v"],
            BAD_VALUE,
            "'/' is not allowed",
        ),
        (
            vec!["secret", "add", "a b", "v"],
            BAD_VALUE,
            "only letters, digits",
        ),
        (
            vec!["secret", "add", &long, "v"],
            BAD_VALUE,
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
            BAD_VALUE,
            "scheme 'http' is not 'secret'",
        ),
        (
            vec!["secret", "get", "secret:k?x"],
            BAD_VALUE,
            "a query ('?') is not allowed",
        ),
        (
            vec!["secret", "get", "secret:k#x"],
            BAD_VALUE,
            "a fragment ('#') is not allowed",
        ),
        (
            vec!["secret", "get", "secret://u:p@c/alice/k"],
            BAD_VALUE,
            "a user or password in the authority is not allowed",
        ),
        (
            vec!["secret", "get", "secret://c:1/alice/k"],
            BAD_VALUE,
            "a port in the authority is not allowed",
        ),
        (
            vec!["secret", "get", "secret:/~alice/k"],
            BAD_VALUE,
            "a '~' path is not allowed",
        ),
        (
            vec!["secret", "get", "secret:/alice"],
            BAD_VALUE,
            "expected secret:KEY",
        ),
        (
            vec!["secret", "add", "secret:/Alice/k", "v"],
            BAD_VALUE,
            "invalid user name 'Alice'",
        ),
        (
            vec!["share", "secret:k", "nobody"],
            72,
            "user 'nobody' not found",
        ),
        (
            vec!["share", "secret:k", "Bob"],
            BAD_VALUE,
            "invalid user name 'Bob'",
        ),
        (
            vec!["share", "secret://other/alice/k", "bob"],
            65,
            "names cluster 'other'",
        ),
        (
            vec!["share", "secret:k?x", "bob"],
            BAD_VALUE,
            "a query ('?') is not allowed",
        ),
        (
            vec!["share", "secret:k", "alice"],
            65,
            "owns 'secret://neuro-compute/alice/k'",
        ),
        (
            vec!["acl", "revoke", "secret:k#f", "bob"],
            BAD_VALUE,
            "a fragment ('#') is not allowed",
        ),
        (vec!["secret", "get", "nope"], 72, "Secret 'nope' not found"),
    ] {
        let o = if code == BAD_VALUE {
            bad_value(&alice, &args, msg)
        } else {
            alice.fails(&args, code, msg)
        };
        assert!(!o.stderr.contains("original"));
    }
    // usage errors: exit 2
    for args in [
        vec!["secret", "add", "k"],
        vec!["secret", "frobnicate"],
        vec!["secret", "get", "k", "--nope"],
        vec!["secret", "ls", "-o", "yaml"],
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
    let (srv, t) = Server::start_with_users(&["alice"]);
    let tok = Some(t[0].as_str());
    let created = srv.http(
        "POST",
        "/api/v1/secrets",
        tok,
        Some(r#"{"key":"k","value":"dg=="}"#),
    );
    let version = created.json()["version"].clone();
    assert!(version.is_u64(), "{}", created.json());
    assert_eq!(created.status, 201);

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
        ("GET", "/nope", None, 404, "no route"),
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
    let r = srv.get("nst.0000000000000000.00", "/api/v1/secrets");
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
    // The version the write got (1 on the embedded store, etcd's revision on etcd).
    assert_eq!(r.json()["version"], version);
}

/// `neuro --url URL ARGS` with a made-up token and an empty config: (exit code, stderr).
fn neuro_at(url: &str, args: &[&str]) -> (i32, String) {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(bin("neuro"))
        .arg("--url")
        .arg(url)
        .args(args)
        .env("NEURO_TOKEN", "nst.0000000000000000.00")
        .env_remove("NEURO_URL")
        .env_remove("NEURO_CA_FILE")
        .env("XDG_CONFIG_HOME", home.path())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A malformed user name, key, URI, job id or token is refused while the arguments are
/// parsed: bad input, exit 65 (before issue 19, the usage error 2), not the 69 of a service
/// that cannot be reached, and no connection is even attempted (a listening socket that
/// nobody accepts on sees none).
#[test]
fn bad_values_are_bad_input_before_any_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listening = format!("http://{}", listener.local_addr().unwrap());
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["admin", "user", "add", "Alice"],
            "'<NAME>': invalid user name 'Alice'",
        ),
        (
            &["admin", "token", "ls", "../x"],
            "'<USER>': invalid user name '../x'",
        ),
        (
            &["share", "secret:k", "bob/../x"],
            "'<USER>': invalid user name",
        ),
        (
            &["share", "secret:k?x", "bob"],
            "'<URI>': invalid secret URI 'secret:k?x'",
        ),
        (
            &["acl", "revoke", "http://x/alice", "bob"],
            "scheme 'http' is not 'secret'",
        ),
        (
            &["secret", "get", "secret:/alice/../k"],
            "'<KEY>': invalid secret URI",
        ),
        (
            &["secret", "rm", "a/b"],
            "'<KEY>': invalid secret key 'a/b'",
        ),
        (
            &["job", "rm", "job-../../admin"],
            "'<JOB_ID>': invalid job id 'job-../../admin'",
        ),
        (&["job", "rm", "job-0123456789ABCDEF"], "invalid job id"),
        (&["share", "secret:k", "bob", "own"], "invalid action 'own'"),
        (
            &["login", "--token", "nst.00 00"],
            "'--token <TOKEN>': it contains whitespace",
        ),
    ];
    for (args, msg) in cases {
        for url in [&listening, &closed] {
            let (code, stderr) = neuro_at(url, args);
            assert_eq!(code, 65, "neuro {args:?} at {url}: {stderr}");
            assert!(
                stderr.starts_with("ERROR: ") && stderr.lines().count() == 1,
                "neuro {args:?}: {stderr:?}"
            );
            assert!(
                stderr.contains(msg),
                "neuro {args:?}: {stderr:?} lacks {msg:?}"
            );
        }
    }
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "no connection was attempted"
    );
    // The same commands with good values do reach for the service: 69 at the closed port.
    for args in [
        &["admin", "user", "add", "alice"][..],
        &["share", "secret:k", "bob"],
        &["job", "rm", "job-0123456789abcdef"],
        &["secret", "rm", "secret:/alice/k"],
        &["login", "--token", "nst.0000000000000000.00"],
    ] {
        let (code, stderr) = neuro_at(&closed, args);
        assert_eq!(code, 69, "neuro {args:?}: {stderr}");
    }
}

/// A `NEURO_TOKEN` with whitespace inside is refused before any request (bad input, 65),
/// without echoing it.
#[test]
fn a_malformed_neuro_token_is_bad_input_and_is_not_printed() {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(bin("neuro"))
        .args(["--url", "http://127.0.0.1:9", "secret", "ls"])
        .env("NEURO_TOKEN", "nst.0000000000000000.zq9 x7")
        .env("XDG_CONFIG_HOME", home.path())
        .env("HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("invalid NEURO_TOKEN: it contains whitespace"),
        "{stderr}"
    );
    assert!(!stderr.contains("zq9"), "the token is echoed: {stderr}");
    // The token given where clap expects no value (`--token` forgotten): clap would quote it.
    for args in [
        vec![
            "login",
            "--url",
            "http://127.0.0.1:9",
            "nst.0000000000000000.zq9secret",
        ],
        vec!["secret", "ls", "--token=nst.0000000000000000.zq9secret"],
    ] {
        let o = Command::new(bin("neuro"))
            .args(&args)
            .env("XDG_CONFIG_HOME", home.path())
            .env("HOME", home.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("zq9"), "the token is echoed: {stderr}");
        if args[0] == "login" {
            assert!(stderr.contains("unexpected argument '****'"), "{stderr}");
        }
    }
}

/// `neuro secret get --file PATH` where PATH is a link or a pipe: refused, nothing written
/// through it; a regular file is replaced by a 0600 file with the value.
#[test]
fn secret_get_file_never_writes_through_a_planted_symlink() {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, symlink};
    let (_srv, alice) = Server::start_with_alice_owning("k", "the-value");
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"victim's").unwrap();
    // A link, or a pipe a reader waits on: refused (65), nothing written anywhere.
    let out = dir.path().join("out");
    symlink(&victim, &out).unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for p in [&out, &fifo] {
        let o = alice.run(&["secret", "get", "k", "--file", p.to_str().unwrap()]);
        assert_eq!(o.code, 65, "{}", o.stderr);
        assert!(o.stderr.contains("is not a regular file"), "{}", o.stderr);
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim's");
    assert!(std::fs::symlink_metadata(&out).unwrap().is_symlink());
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A regular file is replaced, 0600, with no temporary left.
    let file = dir.path().join("file");
    std::fs::write(&file, b"old").unwrap();
    alice.ok(&["secret", "get", "k", "--file", file.to_str().unwrap()]);
    let md = std::fs::symlink_metadata(&file).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&file).unwrap(), b"the-value");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 4, "no temporary file left");
}

//! The real `secret-inject` against a hostile service: a listener on 127.0.0.1 that reads the
//! request, then answers raw bytes of its choosing (results missing, reordered, repeated or
//! never asked for). The tests look only at what any HTTP client inside the wrapper must
//! give: the exit code, stderr, whether the job ran and what it saw.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_secret-inject");

/// `alpha` and `beta`, base64 (as the service sends values).
const ALPHA: &str = "YWxwaGE=";
const BETA: &str = "YmV0YQ==";

/// The job: prints what it saw of `A` and `B`, so an empty stdout means it never ran.
const JOB: &str = r#"printf 'ran A=%s B=%s' "${A-unset}" "${B-unset}""#;

/// The `--timeout` of every run.
const TIMEOUT_SECS: u64 = 10;

/// The URIs asked by each request the service received.
type Asked = Arc<Mutex<Vec<Vec<String>>>>;

/// A hostile service on a loopback port: each connection's request is read whole, then
/// `answer` writes what it likes (given the URIs asked) until it returns or the peer goes.
fn serve(answer: impl Fn(&mut TcpStream, &[String]) + Send + Sync + 'static) -> (String, Asked) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked: Asked = Arc::default();
    let seen = asked.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (answer, seen) = (answer.clone(), seen.clone());
            std::thread::spawn(move || {
                let uris = read_request(&mut conn);
                seen.lock().unwrap().push(uris.clone());
                answer(&mut conn, &uris);
            });
        }
    });
    (url, asked)
}

/// Reads one request (head, then `Content-Length` bytes of JSON); the URIs it asks.
fn read_request(conn: &mut TcpStream) -> Vec<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "the request ended early");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("the request has a Content-Length");
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    req["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// An answer with `status` and a `Content-Length` body.
fn http(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An `ok` result for `uri` with the base64 value `b64`.
fn ok(uri: &str, b64: &str) -> String {
    format!(r#"{{"uri":"{uri}","status":"ok","version":1,"value":"{b64}"}}"#)
}

/// `{"results":[...]}` of these results.
fn results(rs: &[String]) -> String {
    format!(r#"{{"results":[{}]}}"#, rs.join(","))
}

/// A service that answers `bytes` to every request.
fn canned(bytes: Vec<u8>) -> String {
    serve(move |c, _| {
        let _ = c.write_all(&bytes);
    })
    .0
}

/// secret-inject with these `--env` mappings, running [`JOB`]; `A` is inherited as
/// `inherited`, which the job must never see in place of a value.
fn inject(url: &str, envs: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--url", url, "--timeout", &TIMEOUT_SECS.to_string()]);
    for e in envs {
        cmd.args(["--env", e]);
    }
    cmd.args(["--", "/bin/sh", "-c", JOB])
        .env("NEURO_TOKEN", "hostile-test-token")
        .env("A", "inherited")
        .env_remove("B")
        .stdin(Stdio::null());
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The run failed with `code` before the job started: nothing on stdout, only error lines
/// on stderr, no value and no control character in them.
#[track_caller]
fn failed_closed(o: &Output, code: i32) {
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout {out:?}, stderr {err:?}"
    );
    assert_eq!(out, "", "the job ran; stderr {err:?}");
    assert!(!err.is_empty());
    for line in err.lines() {
        assert!(line.starts_with("secret-inject: ERROR: "), "{err:?}");
    }
    for v in ["alpha", "beta", "hostile-test-token"] {
        assert!(!err.contains(v), "stderr names {v}: {err:?}");
    }
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
}

/// One mapping or two, answered with `rs` whatever was asked: refused with 69, no job.
#[track_caller]
fn refused(envs: &[&str], rs: &[String]) {
    let url = canned(http("200 OK", &results(rs)));
    let o = inject(&url, envs).output().unwrap();
    failed_closed(&o, 69);
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
}

#[test]
fn an_answer_without_results_is_refused() {
    refused(&["A=secret:a"], &[]);
    refused(&["A=secret:a", "B=secret:b"], &[ok("secret:a", ALPHA)]);
}

#[test]
fn a_result_for_a_uri_never_asked_is_refused() {
    // Instead of the one asked, and beside it.
    refused(&["A=secret:a"], &[ok("secret:c", BETA)]);
    refused(
        &["A=secret:a"],
        &[ok("secret:a", ALPHA), ok("secret:c", BETA)],
    );
    // The fully qualified form of an asked URI is another URI: results carry it as asked.
    refused(&["A=secret:a"], &[ok("secret://c/u/a", ALPHA)]);
}

#[test]
fn a_repeated_result_is_refused() {
    refused(
        &["A=secret:a"],
        &[ok("secret:a", ALPHA), ok("secret:a", BETA)],
    );
    refused(
        &["A=secret:a", "B=secret:b"],
        &[ok("secret:a", ALPHA), ok("secret:a", ALPHA)],
    );
}

#[test]
fn results_in_another_order_go_to_their_own_mappings() {
    let url = canned(http(
        "200 OK",
        &results(&[ok("secret:b", BETA), ok("secret:a", ALPHA)]),
    ));
    let o = inject(&url, &["A=secret:a", "B=secret:b"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "ran A=alpha B=beta");
}

#[test]
fn two_mappings_of_one_uri_both_get_its_value() {
    // This service answers each URI asked, once per time asked.
    let (url, asked) = serve(|c, uris| {
        let rs: Vec<String> = uris.iter().map(|u| ok(u, ALPHA)).collect();
        let _ = c.write_all(&http("200 OK", &results(&rs)));
    });
    let o = inject(&url, &["A=secret:a", "B=secret:a"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "ran A=alpha B=alpha");
    assert_eq!(asked.lock().unwrap().len(), 1, "one request");
}

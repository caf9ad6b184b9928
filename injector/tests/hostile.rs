//! The real `secret-inject` against a hostile service: a listener on 127.0.0.1 that reads the
//! request, then answers raw bytes of its choosing (results missing, reordered, repeated or
//! never asked for; bodies without end; conflicting lengths; control characters in its error
//! text). The tests look only at what any HTTP client inside the wrapper must give: the exit
//! code, stderr, whether the job ran and what it saw, the time taken and the peak memory.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_secret-inject");

/// `alpha` and `beta`, base64 (as the service sends values).
const ALPHA: &str = "YWxwaGE=";
const BETA: &str = "YmV0YQ==";

/// The job: prints what it saw of `A` and `B`, so an empty stdout means it never ran.
const JOB: &str = r#"printf 'ran A=%s B=%s' "${A-unset}" "${B-unset}""#;

/// The `--timeout` of every run.
const TIMEOUT_SECS: u64 = 10;

/// The peak resident memory allowed to secret-inject on any answer: 64 MiB for the process
/// itself and its parsing, plus the most raw bytes of an answer it should ever hold (32 MiB,
/// the wrapper's bound, derived from the service's 16 MiB of values per resolve).
const PEAK_LIMIT_KIB: u64 = (64 + 32) * 1024;

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

#[test]
fn the_services_error_text_reaches_stderr_with_control_characters_escaped() {
    // In the error of a refused request, and in a result's.
    for (answer, code) in [
        (
            http(
                "403 Forbidden",
                r#"{"error":"\u001b[31mdenied\nsecret-inject: ERROR: forged line\r\u0007"}"#,
            ),
            77,
        ),
        (
            http(
                "200 OK",
                r#"{"results":[{"uri":"secret:a","status":"invalid","error":"\u001b[31mbad\nsecret-inject: ERROR: forged line\u009b"}]}"#,
            ),
            65,
        ),
    ] {
        let url = canned(answer);
        let o = inject(&url, &["A=secret:a"]).output().unwrap();
        failed_closed(&o, code);
        let err = text(&o.stderr);
        assert!(!o.stderr.contains(&0x1b), "a raw ESC on stderr: {err:?}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains("forged line"), "the text is kept: {err:?}");
    }
}

#[test]
fn conflicting_content_lengths_are_refused() {
    // The body is a whole answer at the second length, so a client that believes either
    // header alone would run the job.
    let body = results(&[ok("secret:a", ALPHA)]);
    let n = body.len();
    for head in [
        format!("Content-Length: 10\r\nContent-Length: {n}"),
        format!("Content-Length: {n}\r\nContent-Length: 10"),
        format!("Content-Length: 10, {n}"),
        // Not a length, but a framing beside one: whichever a client believes, it guesses.
        format!("Transfer-Encoding: chunked\r\nContent-Length: {n}"),
        format!("Content-Length: {n}\r\nTransfer-Encoding: chunked"),
    ] {
        let url = canned(format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\n{body}").into_bytes());
        let o = inject(&url, &["A=secret:a"]).output().unwrap();
        failed_closed(&o, 69);
    }
}

/// How a run under [`measure`] ended.
#[derive(Debug)]
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The most of secret-inject's peak resident memory (VmHWM) seen while it ran.
    peak_kib: u64,
    elapsed: Duration,
}

/// secret-inject's VmHWM, or None once it is gone (or a zombie, which has no memory).
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` to its end, reading its peak resident memory about every millisecond; kills
/// it once the peak passes [`PEAK_LIMIT_KIB`] or it outlives its timeout by 10 s.
fn measure(cmd: &mut Command) -> Measured {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(kib) = vm_hwm_kib(child.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if peak_kib > PEAK_LIMIT_KIB || t0.elapsed() > Duration::from_secs(TIMEOUT_SECS + 10) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let elapsed = t0.elapsed();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Measured {
        code: status.code(),
        stdout,
        stderr,
        peak_kib,
        elapsed,
    }
}

/// An answer that never ends, `head` then `unit` forever, is refused (69) within the
/// timeout without the job, and secret-inject's memory stays under [`PEAK_LIMIT_KIB`].
#[track_caller]
fn bounded(what: &str, head: &'static [u8], unit: Vec<u8>) {
    let url = serve(move |c, _| {
        if c.write_all(head).is_err() {
            return;
        }
        while c.write_all(&unit).is_ok() {}
    })
    .0;
    let m = measure(&mut inject(&url, &["A=secret:a"]));
    eprintln!(
        "{what}: peak {} KiB in {:?}, exit {:?}",
        m.peak_kib, m.elapsed, m.code
    );
    assert!(
        m.peak_kib <= PEAK_LIMIT_KIB,
        "{what}: peak resident memory {} KiB > {PEAK_LIMIT_KIB} KiB ({m:?})",
        m.peak_kib
    );
    assert!(
        m.elapsed < Duration::from_secs(TIMEOUT_SECS + 2),
        "{what}: ran {:?} with --timeout {TIMEOUT_SECS}",
        m.elapsed
    );
    assert_eq!(m.code, Some(69), "{what}: {m:?}");
    assert_eq!(m.stdout, "", "{what}: the job ran: {m:?}");
}

#[test]
fn endless_chunks_with_long_extensions_keep_memory_bounded() {
    // A chunk of one byte (a space) behind 8000 bytes of extension, forever.
    let mut unit = b"1;".to_vec();
    unit.extend(std::iter::repeat_n(b'x', 8000));
    unit.extend_from_slice(b"\r\n \r\n");
    bounded(
        "chunks with 8000-byte extensions",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        unit,
    );
}

#[test]
fn endless_chunks_keep_memory_bounded() {
    let mut unit = b"2000\r\n".to_vec();
    unit.extend(std::iter::repeat_n(b' ', 0x2000));
    unit.extend_from_slice(b"\r\n");
    bounded(
        "8 KiB chunks",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        unit,
    );
}

#[test]
fn a_huge_content_length_keeps_memory_bounded() {
    bounded(
        "Content-Length of 512 MiB",
        b"HTTP/1.1 200 OK\r\nContent-Length: 536870912\r\n\r\n",
        vec![0; 64 * 1024],
    );
    bounded(
        "Content-Length of 2^64-1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
        vec![0; 64 * 1024],
    );
}

#[test]
fn an_endless_body_to_the_close_keeps_memory_bounded() {
    bounded(
        "a body to the close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        vec![b' '; 64 * 1024],
    );
}

#[test]
fn an_endless_head_keeps_memory_bounded() {
    bounded(
        "header lines",
        b"HTTP/1.1 200 OK\r\n",
        b"X-Pad: 0123456789abcdef0123456789abcdef\r\n".to_vec(),
    );
    bounded(
        "one header line",
        b"HTTP/1.1 200 OK\r\nX: ",
        vec![b'x'; 8192],
    );
}

#[test]
fn an_endless_chunk_size_line_keeps_memory_bounded() {
    bounded(
        "one chunk line",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;",
        vec![b'x'; 8192],
    );
}

/// The largest answer the service gives: 16 MiB of values (its `MAX_RESOLVE_BYTES`), here
/// 16 values of 1 MiB (its `MAX_VALUE_LEN`) as base64, sent in 8 KiB chunks and with a
/// length. It is read whole: each mapping is then refused for its own reason (no
/// environment entry holds 1 MiB), not the answer for its size.
#[test]
fn the_largest_answer_the_service_gives_is_read() {
    // 1 MiB - 1 bytes of 0x69 0xa6 0x9a: "aaaa" in base64, no NUL.
    let value = "aaaa".repeat((1024 * 1024 - 1) / 3);
    let uris: Vec<String> = (0..16).map(|i| format!("secret:k{i}")).collect();
    let body = results(&uris.iter().map(|u| ok(u, &value)).collect::<Vec<_>>());
    assert!(body.len() > 21 * 1024 * 1024, "{}", body.len());
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let envs: Vec<String> = (0..16).map(|i| format!("V{i}=secret:k{i}")).collect();
    let envs: Vec<&str> = envs.iter().map(String::as_str).collect();
    for (how, answer) in [
        ("chunked", chunked),
        ("with a length", http("200 OK", &body)),
    ] {
        let url = canned(answer);
        let m = measure(&mut inject(&url, &envs));
        eprintln!(
            "largest answer, {how}: peak {} KiB in {:?}",
            m.peak_kib, m.elapsed
        );
        assert_eq!(m.code, Some(65), "{how}: {m:?}");
        assert_eq!(m.stdout, "");
        assert_eq!(m.stderr.lines().count(), 16, "{how}: {}", m.stderr);
        assert!(
            m.stderr.lines().all(|l| l.contains("MAX_ARG_STRLEN")),
            "{how}: {}",
            m.stderr
        );
    }
}

//! TLS: the service with a certificate made at test time; the CLI trusting it via --ca-file.

use crate::harness::{Neuro, Server};

#[test]
fn https_with_a_self_signed_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let srv = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);
    let url = srv.url.replace("127.0.0.1", "localhost");
    let admin = srv.admin_token();

    // Without the CA the CLI refuses the certificate: unavailable, exit 69.
    let n = Neuro::new(&srv, "op");
    let o = n.run(&["login", "--url", &url, "--token", &admin]);
    assert_eq!(o.code, 69, "{}", o.stderr);
    assert!(
        o.stderr
            .starts_with("ERROR: service unavailable at https://localhost:"),
        "{}",
        o.stderr
    );

    n.ok(&[
        "login",
        "--url",
        &url,
        "--token",
        &admin,
        "--ca-file",
        cert.to_str().unwrap(),
    ]);
    let tok = n
        .ok(&["admin", "user", "add", "alice"])
        .stdout_str()
        .trim()
        .to_owned();
    let alice = Neuro::new(&srv, "alice");
    alice.ok(&[
        "login",
        "--url",
        &url,
        "--token",
        &tok,
        "--ca-file",
        cert.to_str().unwrap(),
    ]);
    alice.ok(&["secret", "add", "k", "over-tls"]);
    assert_eq!(
        alice.run_full(&["secret", "get", "k"], b"", true).stdout,
        b"over-tls"
    );

    // Plain HTTP to the TLS port does not work.
    let o = alice.run(&["--url", &srv.url.replace("https", "http"), "secret", "ls"]);
    assert_eq!(o.code, 69, "{}", o.stderr);
    // A CA file that is not PEM is bad input.
    let o = alice.run(&["--ca-file", key.to_str().unwrap(), "secret", "ls"]);
    assert_eq!(o.code, 65, "{}", o.stderr);
}

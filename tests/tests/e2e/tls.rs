//! TLS: the service with a certificate made at test time; the CLI trusting it via --ca-file.

use crate::harness::{Neuro, Server, self_signed_localhost_cert};

/// `neuro login --url URL --token TOKEN --ca-file CA`.
fn login_trusting<'a>(url: &'a str, token: &'a str, ca: &'a std::path::Path) -> [&'a str; 7] {
    let ca = ca.to_str().unwrap();
    ["login", "--url", url, "--token", token, "--ca-file", ca]
}

#[test]
fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_localhost_cert(dir.path());
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

    n.ok(&login_trusting(&url, &admin, &cert));
    let tok = n
        .ok(&["admin", "user", "add", "alice"])
        .stdout_str()
        .trim()
        .to_owned();
    let alice = Neuro::new(&srv, "alice");
    alice.ok(&login_trusting(&url, &tok, &cert));
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

/// Starts secretd with `cert`/`key`; returns it with the URL by host name.
fn tls_server(cert: &std::path::Path, key: &std::path::Path) -> (Server, String) {
    let srv = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = srv.url.replace("127.0.0.1", "localhost");
    (srv, url)
}

#[test]
fn the_readme_certificate_recipe_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("openssl req "))
        .expect("README shows how to make a certificate");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir.path())
        .output()
        .expect("openssl (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (srv, url) = tls_server(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
    let ca = dir.path().join("cert.pem");
    let n = Neuro::new(&srv, "op");
    for (u, name) in [(&url, "by-name"), (&srv.url, "by-address")] {
        n.ok(&login_trusting(u, &srv.admin_token(), &ca));
        n.ok(&["admin", "user", "add", name]);
    }
    // The job side takes the CA from NEURO_CA_FILE too, as neuro does.
    let tok = n.ok(&["admin", "user", "add", "job-side"]).stdout_str();
    let tok = tok.trim();
    let user = Neuro::new(&srv, "job-side");
    let ca_arg = ca.to_str().unwrap();
    user.ok(&["login", "--url", &url, "--token", tok, "--ca-file", ca_arg]);
    user.ok(&["secret", "add", "k", "v"]);
    let out = std::process::Command::new(crate::harness::bin("secret-inject"))
        .args([
            "--url",
            &url,
            "--env",
            "A=secret:k",
            "--",
            "sh",
            "-c",
            "test \"$A\" = v",
        ])
        .env("NEURO_TOKEN", tok)
        .env("NEURO_CA_FILE", &ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn certificate_errors_fail_fast_with_the_reason() {
    use std::time::{Duration, Instant};
    // What `openssl req -x509` makes by default: a self-signed CA certificate.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&key_pair).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ca_cert.pem()).unwrap();
    std::fs::write(&key, key_pair.serialize_pem()).unwrap();
    let (srv, url) = tls_server(&cert, &key);
    let admin = srv.admin_token();
    let n = Neuro::new(&srv, "op");

    let t = Instant::now();
    let o = n.run(&login_trusting(&url, &admin, &cert));
    assert_eq!(o.code, 69, "{}", o.stderr);
    assert!(o.stderr.contains("TLS handshake failed"), "{}", o.stderr);
    assert!(o.stderr.contains("CaUsedAsEndEntity"), "{}", o.stderr);
    assert!(o.stderr.contains("CA:FALSE"), "{}", o.stderr);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // secret-inject and secretfs retry an unavailable service until their deadline; a
    // certificate they cannot accept is not worth waiting for.
    let mnt = dir.path().join("mnt");
    for (name, args) in [
        ("secret-inject", vec!["--env", "A=secret:k", "--", "true"]),
        (
            "secretfs",
            vec![
                "--volume",
                "secret:k:/tmp/never-mounted/k",
                "--mount-root",
                mnt.to_str().unwrap(),
            ],
        ),
    ] {
        let t = Instant::now();
        let out = std::process::Command::new(crate::harness::bin(name))
            .args(["--url", &url, "--ca-file", cert.to_str().unwrap()])
            .args(["--timeout", "30"])
            .args(&args)
            .env("NEURO_TOKEN", &admin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{name}: {err}");
        assert!(err.contains("CaUsedAsEndEntity"), "{name}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
    }

    // Without a CA file: not trusted, with the hint to pass one.
    let o = n.run(&["login", "--url", &url, "--token", &admin]);
    assert_eq!(o.code, 69, "{}", o.stderr);
    assert!(o.stderr.contains("TLS handshake failed"), "{}", o.stderr);
}

#[test]
fn the_wrong_scheme_fails_fast_with_a_hint() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_localhost_cert(dir.path());
    let (tls, _) = tls_server(&cert, &key);
    let plain = Server::start();
    for (url, hint) in [
        (
            tls.url.replace("https://", "http://"),
            "is the URL https://?",
        ),
        (
            plain.url.replace("http://", "https://"),
            "is the URL http://?",
        ),
    ] {
        let t = Instant::now();
        let out = std::process::Command::new(crate::harness::bin("secret-inject"))
            .args(["--url", &url, "--ca-file", cert.to_str().unwrap()])
            .args(["--timeout", "30", "--env", "A=secret:k", "--", "true"])
            .env("NEURO_TOKEN", tls.admin_token())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{url}: {err}");
        assert!(err.contains(hint), "{url}: {err}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{url}: {:?}",
            t.elapsed()
        );
    }
}

//! secret-inject over https: its own blocking rustls client (no async runtime, no HTTP
//! library) against a real secretd with a certificate made at test time: values resolve, and
//! a certificate it cannot accept (another CA, another name, no CA) stops it at once with the
//! reason and exit 69.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{Neuro, Server, bin, contains, self_signed_localhost_cert};

/// `secret-inject --url URL [--ca-file CA] --timeout 30 ARGS...` with `token`.
fn inject(url: &str, token: &str, ca: Option<&Path>, args: &[&str]) -> (Output, Duration) {
    let mut c = std::process::Command::new(bin("secret-inject"));
    c.args(["--url", url, "--timeout", "30"]);
    if let Some(ca) = ca {
        c.arg("--ca-file").arg(ca);
    }
    let t = Instant::now();
    let out = c
        .args(args)
        .env("NEURO_TOKEN", token)
        .env_remove("NEURO_CA_FILE")
        .output()
        .unwrap();
    (out, t.elapsed())
}

#[test]
fn https_resolves_and_refuses_a_wrong_ca_or_name_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_localhost_cert(dir.path());
    // Another CA, of another name: the service's certificate is not signed by it.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "another CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = dir.path().join("other-ca.pem");
    let other = params.self_signed(&rcgen::KeyPair::generate().unwrap());
    std::fs::write(&other_ca, other.unwrap().pem()).unwrap();
    let srv = Server::start_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let by_name = srv.url.replace("127.0.0.1", "localhost");
    let ca = cert.to_str().unwrap();
    let op = Neuro::new(&srv, "op");
    op.ok(&[
        "login",
        "--url",
        &by_name,
        "--token",
        &srv.admin_token(),
        "--ca-file",
        ca,
    ]);
    let tok = op.ok(&["admin", "user", "add", "alice"]).stdout_str();
    let tok = tok.trim();
    let alice = Neuro::new(&srv, "alice");
    alice.ok(&["login", "--url", &by_name, "--token", tok, "--ca-file", ca]);
    alice.ok(&["secret", "add", "k", "over blocking tls"]);
    alice.ok(&["secret", "add", "k2", "second"]);

    // Resolved, by host name, with a path-less URL and with a trailing slash, through dash.
    let check = [
        "--env",
        "A=secret:k",
        "--env",
        "B=secret:/alice/k2",
        "--",
        "sh",
        "-c",
        r#"test "$A" = "over blocking tls" && test "$B" = second && test -z "$NEURO_TOKEN""#,
    ];
    for url in [by_name.clone(), format!("{by_name}/")] {
        let (out, _) = inject(&url, tok, Some(&cert), &check);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Not accepted: each fails fast (no retry until --timeout 30) with the reason and hint.
    for (url, ca, reason, hint) in [
        (
            &by_name,
            Some(other_ca.as_path()),
            "UnknownIssuer",
            "pass --ca-file",
        ),
        (&by_name, None, "UnknownIssuer", "pass --ca-file"),
        // The certificate names localhost, not 127.0.0.1.
        (
            &srv.url,
            Some(cert.as_path()),
            "NotValidForName",
            "does not name the host",
        ),
    ] {
        let (out, took) = inject(url, tok, ca, &check);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{url} {ca:?}: {err}");
        assert!(err.contains("TLS handshake failed"), "{url} {ca:?}: {err}");
        assert!(err.contains(reason), "{url} {ca:?}: {err}");
        assert!(err.contains(hint), "{url} {ca:?}: {err}");
        assert!(!err.contains(tok), "{err}");
        assert!(took < Duration::from_secs(5), "{url} {ca:?}: {took:?}");
    }

    // A CA file without a certificate, or none at all, is bad input before any request.
    for bad in [key.as_path(), &dir.path().join("missing.pem")] {
        let (out, _) = inject(&by_name, tok, Some(bad), &check);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "{}: {err}", bad.display());
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }
}

/// The bytes of the sections of an ELF64 file that are loaded into memory (SHF_ALLOC, not
/// NOBITS): its code and data, without debug information or symbol tables.
fn loaded_sections(elf: &[u8]) -> Vec<&[u8]> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "an ELF64 file");
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    (0..shnum)
        .map(|i| shoff + i * shentsize)
        .filter(|&h| u64_at(h + 8) & 0x2 != 0 && u32_at(h + 4) != 8)
        .map(|h| &elf[u64_at(h + 0x18)..u64_at(h + 0x18) + u64_at(h + 0x20)])
        .collect()
}

/// The wrapper speaks HTTP and TLS itself: no code of the async stack (tokio, hyper,
/// reqwest, hickory), which made most of its binary and of its start-up, is loaded with it.
/// Their panic locations name their sources (`.../tokio-1.x/src/...`) wherever their code is.
#[test]
fn the_wrapper_links_no_async_http_stack() {
    let exe = std::fs::read(bin("secret-inject")).unwrap();
    let sections = loaded_sections(&exe);
    assert!(
        sections.iter().any(|s| contains(s, b"/clap_builder-")),
        "the check finds a crate the wrapper does use"
    );
    for name in [
        "/tokio-1.",
        "/hyper-1.",
        "/reqwest-0.",
        "/hickory-resolver-",
    ] {
        assert!(
            !sections.iter().any(|s| contains(s, name.as_bytes())),
            "secret-inject contains code of {name}"
        );
    }
}

/// A "service" that accepts and then trickles a TLS record one byte every 50 ms, for at most
/// `for_s` seconds per connection; returns its `https://` URL.
fn trickling_service(for_s: u64) -> String {
    use std::io::Write as _;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                // A handshake record header announcing 16 KiB, then its bytes, slowly.
                let _ = conn.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
                let end = Instant::now() + Duration::from_secs(for_s);
                while Instant::now() < end && conn.write_all(&[0]).is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    url
}

/// Every socket read and write inside rustls ends by the deadline: a service that keeps
/// sending a byte now and then (never a whole TLS record) cannot hold the wrapper past
/// `--timeout`.
#[test]
fn a_trickling_handshake_is_given_up_at_the_deadline() {
    let url = trickling_service(12);
    let t = Instant::now();
    let out = std::process::Command::new(bin("secret-inject"))
        .args(one_second_resolve(&url))
        .env("NEURO_TOKEN", "never-sent")
        .env_remove("NEURO_CA_FILE")
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(4), "{took:?}: {err}");
}

/// A DNS server that never answers holds `getaddrinfo` for the resolver's timeout (5 s a
/// try); the service's name is looked up within `--timeout` all the same. The job's view of
/// /etc/resolv.conf is replaced in a mount namespace of its own; the silent server is a UDP
/// socket of this test on a loopback address that nothing else uses.
#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn a_silent_dns_server_is_given_up_at_the_deadline_root() {
    crate::harness::tier::require_root("a mount namespace to replace /etc/resolv.conf");
    let silent = std::net::UdpSocket::bind("127.83.0.1:53").expect("bind a silent DNS server");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.83.0.1\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    let t = Instant::now();
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
        .arg(&conf)
        .arg(bin("secret-inject"))
        .args(one_second_resolve("http://secrets.nowhere.test:8080"))
        .env(
            "NEURO_TOKEN",
            format!("nst.0123456789abcdef.{}", "0".repeat(64)),
        )
        .output()
        .unwrap();
    let took = t.elapsed();
    drop(silent);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("timed out resolving 'secrets.nowhere.test'"),
        "{err}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}: {err}");
}

/// Arguments for one mapping resolved through `url` within one second, then `true`.
fn one_second_resolve(url: &str) -> [&str; 8] {
    [
        "--url",
        url,
        "--timeout",
        "1",
        "--env",
        "A=secret:k",
        "--",
        "true",
    ]
}

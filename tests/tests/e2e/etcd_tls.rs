//! secretd on an etcd that asks for TLS with client certificates, and on one that asks for a
//! user and password: the `--etcd-*` flags, and clear failures when they are wrong.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Server;

/// One etcd member started with `args`, killed when dropped.
struct Member {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Member {
    fn start(scheme: &str, args: &[&str]) -> Self {
        crate::harness::tier::require_etcd();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect::<Vec<_>>()
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let client = format!("127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "tls"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("{scheme}://{client}")])
            .args(["--advertise-client-urls", &format!("{scheme}://{client}")])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server) runs");
        Member {
            child,
            client,
            _dir: dir,
        }
    }

    /// Waits until `etcdctl ARGS endpoint health` succeeds.
    fn wait(&self, ctl: &[&str]) {
        let t0 = Instant::now();
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.client])
                .args(ctl)
                .args(["endpoint", "health"])
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctl(&self, ctl: &[&str], args: &[&str]) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.client])
            .args(ctl)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`:
/// `(ca, server cert, server key, client cert, client key)`.
fn pki(dir: &Path) -> [PathBuf; 5] {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test etcd CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        "etcd",
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf("secretd", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `secretd` with `args` on a fresh data dir, expected to fail: (exit code, stderr).
fn start_fails(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    crate::harness::secretd_start_fails(&dir.path().join("data"), args)
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn secretd_talks_to_etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key, ccert, ckey] = pki(dir.path());
    let etcd = Member::start(
        "https",
        &[
            "--cert-file",
            s(&cert),
            "--key-file",
            s(&key),
            "--trusted-ca-file",
            s(&ca),
            "--client-cert-auth",
        ],
    );
    let ctl = ["--cacert", s(&ca), "--cert", s(&ccert), "--key", s(&ckey)];
    etcd.wait(&ctl);
    let url = format!("etcd://{}/tls", etcd.client);
    let tls = [
        "--store",
        &url,
        "--etcd-ca",
        s(&ca),
        "--etcd-cert",
        s(&ccert),
        "--etcd-key",
        s(&ckey),
    ];
    let srv = Server::start_with(&tls);
    let alice = srv.add_users(&["alice"]).remove(0);
    srv.put(&alice, "k", b"over tls");
    let r = srv.get(&alice, "/api/v1/secrets/alice/k");
    assert_eq!(r.status, 200, "{}", r.body);

    // Without the client certificate, or without the CA, it cannot start, and says why.
    let (code, err) = start_fails(&["--store", &url, "--etcd-ca", s(&ca)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("opening the store at etcd://"), "{err}");
    let (code, err) = start_fails(&["--store", &url]);
    assert_eq!(code, 1, "{err}");
    // The etcd options without an etcd store: refused, not ignored.
    let (code, err) = start_fails(&["--etcd-ca", s(&ca)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--etcd-ca only apply with --store etcd://"),
        "{err}"
    );
    // A key without its certificate is a usage error.
    let (code, err) = start_fails(&["--store", &url, "--etcd-key", s(&ckey)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--etcd-cert"), "{err}");
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn secretd_logs_in_to_etcd_with_a_user_and_password_file() {
    // JWT tokens that expire 1 s after the log-in, whatever happens meanwhile.
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = (keys.path().join("jwt.key"), keys.path().join("jwt.pub"));
    for args in [
        vec!["genrsa", "-out", s(&private), "2048"],
        vec!["rsa", "-in", s(&private), "-pubout", "-out", s(&public)],
    ] {
        let ok = Command::new("openssl").args(&args).output().unwrap();
        assert!(ok.status.success(), "openssl {args:?}");
    }
    let jwt = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=1s",
        s(&public),
        s(&private)
    );
    let etcd = Member::start("http", &["--auth-token", &jwt]);
    etcd.wait(&[]);
    etcd.ctl(&[], &["user", "add", "root:root-pw"]);
    etcd.ctl(&[], &["user", "add", "secretd:s3cret-pw"]);
    etcd.ctl(&[], &["role", "add", "secretd"]);
    etcd.ctl(
        &[],
        &[
            "role",
            "grant-permission",
            "secretd",
            "--prefix=true",
            "readwrite",
            "/auth/",
        ],
    );
    etcd.ctl(&[], &["user", "grant-role", "secretd", "secretd"]);
    etcd.ctl(&[], &["auth", "enable"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let url = format!("etcd://{}/auth", etcd.client);
    let srv = Server::start_with(&[
        "--store",
        &url,
        "--etcd-user",
        "secretd",
        "--etcd-password-file",
        s(&pw),
    ]);
    let alice = srv.add_users(&["alice"]).remove(0);
    srv.put(&alice, "k", b"with a password");
    assert_eq!(srv.get(&alice, "/api/v1/secrets/alice/k").status, 200);
    // After etcd's token expired, secretd logs in again by itself.
    std::thread::sleep(Duration::from_millis(2500));
    srv.put(&alice, "k", b"after the token expired");
    assert_eq!(srv.get(&alice, "/api/v1/secrets/alice/k").status, 200);
    assert!(
        !srv.stderr().contains("s3cret-pw"),
        "the etcd password is in the log"
    );

    // A wrong password: no start, a message that says so, and no password in it.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong-pw").unwrap();
    let (code, err) = start_fails(&[
        "--store",
        &url,
        "--etcd-user",
        "secretd",
        "--etcd-password-file",
        s(&bad),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");
    // Outside its role's prefix: refused, with etcd's reason.
    let (code, err) = start_fails(&[
        "--store",
        &format!("etcd://{}/other", etcd.client),
        "--etcd-user",
        "secretd",
        "--etcd-password-file",
        s(&pw),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

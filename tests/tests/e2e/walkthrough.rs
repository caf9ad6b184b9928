//! The seed page's walkthrough, as alice and bob, and the searches for leaked values/tokens.

use crate::harness::{Server, contains};

const PASSWORD: &str = "p@$$w0rd123";

#[test]
fn seed_walkthrough_share_revoke_and_no_leaks() {
    let mut srv = Server::start();
    let tokens = srv.add_users(&["alice", "bob"]);
    for t in &tokens {
        assert!(
            t.starts_with("nst.") && !t.contains(char::is_whitespace),
            "{t:?}"
        );
    }
    let alice = srv.user("alice", &tokens[0]);
    let bob = srv.user("bob", &tokens[1]);

    // Before the share, bob is refused and sees nothing of alice's.
    alice.ok(&["secret", "add", "secret-password", PASSWORD]);
    let o = bob.fails(
        &["secret", "get", "secret:/alice/secret-password"],
        77,
        "missing read on secret://neuro-compute/alice/secret-password",
    );
    assert!(o.stdout.is_empty());
    assert!(!bob.ok(&["acl", "list"]).stdout_str().contains("alice"));
    assert!(!bob.ok(&["secret", "ls"]).stdout_str().contains("alice"));

    // `neuro secret add secret-password @path/to/file.txt`: bytes exact, binary included.
    let file = srv.dir.path().join("path/to/file.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let binary: Vec<u8> = (0..=255u8)
        .chain(b"\0\n\r\xff tail".iter().copied())
        .collect();
    std::fs::write(&file, &binary).unwrap();
    let at = format!("@{}", file.display());
    alice.ok(&["secret", "add", "file-secret", &at]);
    assert_eq!(
        alice
            .run_full(&["secret", "get", "file-secret"], b"", true)
            .stdout,
        binary
    );
    // @- reads stdin
    let o = alice.run_full(
        &["secret", "add", "stdin-secret", "@-"],
        b"from stdin\n",
        false,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        alice
            .run_full(&["secret", "get", "stdin-secret"], b"", true)
            .stdout,
        b"from stdin\n"
    );
    // --file writes mode 0600
    let dest = srv.dir.path().join("out.bin");
    alice.ok(&[
        "secret",
        "get",
        "file-secret",
        "--file",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&dest).unwrap(), binary);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // `neuro secret ls`: the table of the seed page.
    assert_eq!(
        alice.ok(&["secret", "ls"]).stdout_str(),
        "  KEY\n╶─────────────────╴\n  file-secret\n  secret-password\n  stdin-secret\n"
    );
    assert_eq!(
        alice.ok(&["secret", "ls", "-q"]).stdout_str(),
        "file-secret\nsecret-password\nstdin-secret\n"
    );
    assert!(
        alice
            .ok(&["secret", "ls", "--full-uri"])
            .stdout_str()
            .contains("  secret://neuro-compute/alice/secret-password\n")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&alice.ok(&["secret", "ls", "--output", "json"]).stdout).unwrap();
    assert_eq!(json[1]["key"], "secret-password");
    assert_eq!(
        json[1]["uri"],
        "secret://neuro-compute/alice/secret-password"
    );
    assert!(json[1]["version"].as_u64().unwrap() > 0);
    assert!(json[1].get("value").is_none());

    // `neuro share secret:secret-password bob`
    alice.ok(&["share", "secret:secret-password", "bob"]);
    let acl = bob.ok(&["acl", "list"]).stdout_str();
    assert!(
        acl.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["secret://neuro-compute/alice/secret-password", "read"]),
        "{acl}"
    );
    assert_eq!(
        bob.ok(&["acl", "ls"]).stdout_str(),
        acl,
        "ls and list are one command"
    );
    let ls = bob.ok(&["secret", "ls"]).stdout_str();
    assert!(ls.contains("\n  secret:/alice/secret-password\n"), "{ls}");
    assert!(!ls.contains("file-secret"), "only the shared secret: {ls}");
    let got = bob.run_full(
        &["secret", "get", "secret:/alice/secret-password"],
        b"",
        true,
    );
    assert_eq!((got.code, got.stdout.as_slice()), (0, PASSWORD.as_bytes()));
    // read is not write: bob cannot overwrite or delete it
    bob.fails(
        &["secret", "add", "secret:/alice/secret-password", "x"],
        77,
        "missing write",
    );
    bob.fails(
        &["secret", "rm", "secret:/alice/secret-password"],
        77,
        "missing write",
    );
    let shared = alice.ok(&["acl", "ls", "--shared"]).stdout_str();
    assert_eq!(
        shared.split_whitespace().collect::<Vec<_>>(),
        [
            "secret://neuro-compute/alice/secret-password",
            "read",
            "bob"
        ]
    );

    // revoke
    alice.ok(&["acl", "revoke", "secret:secret-password", "bob"]);
    bob.fails(
        &["secret", "get", "secret:/alice/secret-password"],
        77,
        "missing read on secret://neuro-compute/alice/secret-password",
    );
    assert!(!bob.ok(&["acl", "list"]).stdout_str().contains("alice"));
    assert!(!bob.ok(&["secret", "ls"]).stdout_str().contains("alice"));
    alice.fails(
        &["acl", "revoke", "secret:secret-password", "bob"],
        72,
        "holds no grant",
    );

    // `neuro secret rm secret-password`
    alice.ok(&["secret", "rm", "secret-password"]);
    alice.fails(
        &["secret", "rm", "secret-password"],
        72,
        "Secret 'secret-password' not found",
    );
    alice.fails(
        &["secret", "get", "secret-password"],
        72,
        "Secret 'secret-password' not found",
    );
    assert!(
        !alice
            .ok(&["secret", "ls"])
            .stdout_str()
            .contains("secret-password")
    );

    // Tokens: revocable, and stored only as hashes.
    let op = srv.user("operator2", &srv.admin_token());
    let ids = op.ok(&["admin", "token", "ls", "bob"]).stdout_str();
    let id = ids
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(tokens[1].contains(&id), "the id is the token's public part");
    op.ok(&["admin", "token", "revoke", &id]);
    bob.fails(&["secret", "ls"], 77, "token has been revoked");
    alice.ok(&["secret", "ls"]);

    srv.assert_audited(r#""actor":"user:bob","action":"secret.read","uri":"secret://neuro-compute/alice/secret-password","outcome":"ok""#);
    assert!(srv.stop().success(), "SIGTERM is a clean shutdown");
    // Encryption at rest and hashed tokens: no stored byte sequence equals a value or token.
    let mut values: Vec<Vec<u8>> = vec![
        PASSWORD.into(),
        binary[100..200].to_vec(),
        b"from stdin".to_vec(),
    ];
    values.extend(tokens.iter().map(|t| t.as_bytes().to_vec()));
    // the tokens' secret part, without the public id
    values.extend(
        tokens
            .iter()
            .map(|t| t.rsplit('.').next().unwrap().as_bytes().to_vec()),
    );
    let admin = srv.admin_token();
    for entry in std::fs::read_dir(srv.data_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name == "admin.token" {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        for v in &values {
            assert!(
                !contains(&bytes, v),
                "{name} holds a value or token in clear"
            );
        }
        assert!(
            !contains(&bytes, admin.as_bytes()),
            "{name} holds the operator token"
        );
    }

    // No value or token in any output but the ones meant to print them, nor in the logs.
    srv.transcript
        .add("secretd stderr", srv.stderr().as_bytes());
    srv.transcript.add("audit log", srv.audit_log().as_bytes());
    for v in values.iter().chain([&admin.as_bytes().to_vec()]) {
        let hits = srv.transcript.find(v);
        assert!(hits.is_empty(), "a value or token leaked into: {hits:?}");
    }
}

#[test]
fn secret_listing_says_when_each_secret_was_written() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (t[0].as_str(), t[1].as_str());
    let before = std::time::SystemTime::now();
    srv.put(alice, "k", b"v");
    srv.share(alice, "secret://neuro-compute/alice/k", "bob");
    for token in [alice, bob] {
        let list = srv.get(token, "/api/v1/secrets").json();
        let at = list[0]["updated_at"]
            .as_str()
            .unwrap_or_else(|| panic!("no updated_at in {list}"));
        let at = humantime::parse_rfc3339(at).unwrap();
        let age = at
            .duration_since(before - std::time::Duration::from_secs(2))
            .expect("written after the test began");
        assert!(age < std::time::Duration::from_secs(10), "{list}");
    }
}

//! Replicas on etcd: two `secretd` on one real 3-member etcd cluster (started by each test),
//! their consistency, and what losing members does to them.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::etcd::EtcdCluster;
use crate::harness::{Server, b64, bin, contains, secretd_start_fails};

/// Two replicas on `cluster`, prefix `prefix`; the second uses the first's master key.
fn replicas(cluster: &EtcdCluster, prefix: &str, extra: &[&str]) -> (Server, Server) {
    let url = cluster.url(prefix);
    let mut args = vec!["--cluster", "neuro-compute", "--store", &url];
    args.extend_from_slice(extra);
    let a = Server::start_with(&args);
    let key = a.data_dir().join("master.key");
    let key = key.to_str().unwrap();
    let mut args_b = args.clone();
    args_b.extend_from_slice(&["--master-key", key]);
    let b = Server::start_with(&args_b);
    (a, b)
}

/// A user created through `a`, with a token.
fn user(a: &Server, name: &str) -> String {
    a.add_users(&[name]).remove(0)
}

fn value_of(srv: &Server, token: &str, owner_key: &str) -> (u16, serde_json::Value) {
    let r = srv.get(token, &format!("/api/v1/secrets/{owner_key}"));
    let j = if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    };
    (r.status, j)
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_write_through_one_replica_is_read_watched_and_revoked_through_the_other_at_once() {
    let etcd = EtcdCluster::start(3);
    let (a, b) = replicas(&etcd, "consistency", &[]);
    let alice = user(&a, "alice");
    let bob = user(&a, "bob");

    // Acknowledged by A, read through B at once, with the same version; writes by others
    // to the same etcd, outside the prefix, change nothing.
    for i in 0..20 {
        assert!(
            etcd.etcdctl(&["put", "/unrelated/key", "x"])
                .status
                .success()
        );
        let body = format!(r#"{{"key":"k","value":"{}"}}"#, b64(format!("v{i}")));
        let w = a.post(&alice, "/api/v1/secrets", &body);
        assert_eq!(w.status, 201, "{}", w.body);
        let (st, j) = value_of(&b, &alice, "alice/k");
        assert_eq!(st, 200);
        assert_eq!(j["value"], b64(format!("v{i}")), "read {i} through B");
        assert_eq!(
            j["version"],
            w.json()["version"],
            "versions compare across replicas"
        );
    }

    // B's change feed sees a write made through A within 1 s.
    let since = b.get(&alice, "/api/v1/secrets/watch").json()["revision"]
        .as_u64()
        .unwrap();
    let addr = b.addr.clone();
    let tok = alice.clone();
    let watcher = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = crate::harness::http_json(
            &addr,
            "GET",
            &format!("/api/v1/secrets/watch?since={since}&timeout_s=10"),
            Some(&tok),
            None,
        )
        .unwrap();
        (t0, r)
    });
    std::thread::sleep(Duration::from_millis(300));
    let written = Instant::now();
    a.put(&alice, "k", b"new");
    let (_, r) = watcher.join().unwrap();
    let seen = written.elapsed();
    let events = r.json()["events"].clone();
    assert_eq!(
        events[0]["uri"], "secret://neuro-compute/alice/k",
        "{}",
        r.body
    );
    assert!(
        seen < Duration::from_secs(1),
        "the watch on B took {seen:?}"
    );

    // A grant made on A works on B at once; revoked on A, it is refused on B at once.
    a.share(&alice, "secret://neuro-compute/alice/k", "bob");
    assert_eq!(value_of(&b, &bob, "alice/k").0, 200);
    let r = a.delete(
        &alice,
        "/api/v1/users/bob/permissions?uri=secret://neuro-compute/alice/k",
    );
    assert!(
        r.status == 204 || r.status == 200,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(
        value_of(&b, &bob, "alice/k").0,
        403,
        "the revoked grant still works on B"
    );

    // A job token made through A works through B until its job is deleted through A.
    let r = a.post(
        &alice,
        "/api/v1/jobs",
        r#"{"secret_env":{"S":"secret://neuro-compute/alice/k"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let job = r.json();
    let job_token = job["token"].as_str().unwrap().to_owned();
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    assert_eq!(value_of(&b, &job_token, "alice/k").0, 200);
    let r = a.delete(&alice, &format!("/api/v1/jobs/{job_id}"));
    assert!(r.status < 300, "{} {}", r.status, r.body);
    assert_eq!(
        value_of(&b, &job_token, "alice/k").0,
        401,
        "the ended job reads on B"
    );

    // A user removed through A is gone on B at once (its token with it).
    assert_eq!(value_of(&b, &bob, "bob/none").0, 404);
    let r = a.delete(&a.admin_token(), "/api/v1/admin/users/bob?secrets=delete");
    assert!(r.status < 300, "{} {}", r.status, r.body);
    assert_eq!(
        value_of(&b, &bob, "bob/none").0,
        401,
        "the removed user's token on B"
    );
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn values_and_tokens_are_never_in_etcd_in_plaintext() {
    let etcd = EtcdCluster::start(1);
    let (a, _b) = replicas(&etcd, "sealed", &[]);
    let alice = user(&a, "alice");
    let value = "plaintext-canary-7d1f0e";
    a.put(&alice, "canary", value.as_bytes());
    let r = a.post(
        &alice,
        "/api/v1/jobs",
        r#"{"secret_env":{"S":"secret://neuro-compute/alice/canary"}}"#,
    );
    let job_token = r.json()["token"].as_str().unwrap().to_owned();
    let dump = etcd.etcdctl(&["get", "--prefix", "/sealed/"]);
    assert!(dump.status.success());
    assert!(
        contains(&dump.stdout, b"/sealed/secrets/alice/canary"),
        "the dump holds the records"
    );
    let admin = a.admin_token();
    for (what, needle) in [
        ("value", value.to_owned()),
        ("value in base64", b64(value)),
        ("user token", alice.clone()),
        ("job token", job_token.clone()),
        ("operator token", admin.clone()),
        (
            "a token's secret part",
            alice.rsplit('.').next().unwrap().to_owned(),
        ),
        (
            "a job token's secret part",
            job_token.rsplit('.').next().unwrap().to_owned(),
        ),
    ] {
        assert!(
            !contains(&dump.stdout, needle.as_bytes()),
            "etcd holds the {what} in plaintext"
        );
    }
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_replica_with_another_master_key_refuses_to_start_and_writes_nothing() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("keys");
    let a = Server::start_with(&["--store", &url]);
    let _alice = user(&a, "alice");
    let before = etcd.etcdctl(&["get", "--prefix", "/keys/", "-w", "json"]);
    let before_rev = serde_json::from_slice::<serde_json::Value>(&before.stdout).unwrap()["header"]
        ["revision"]
        .clone();

    // Its own, different master key.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = secretd_start_fails(&dir.path().join("other"), &["--store", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("master key"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    std::fs::create_dir(dir.path().join("wrong")).unwrap();
    let key = dir.path().join("wrong/master.key");
    crate::harness::write_private(&key, &[7u8; 32]);
    let (code, err) = secretd_start_fails(&dir.path().join("wrong"), &["--store", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the master key '{}' does not match",
            key.display()
        )),
        "{err}"
    );
    assert!(!dir.path().join("wrong/admin.token").exists());
    let after = etcd.etcdctl(&["get", "--prefix", "/keys/", "-w", "json"]);
    let after_rev =
        serde_json::from_slice::<serde_json::Value>(&after.stdout).unwrap()["header"]["revision"]
            .clone();
    assert_eq!(before_rev, after_rev, "the refused replica wrote to etcd");
    // The first replica is unaffected.
    assert_eq!(a.get(&a.admin_token(), "/api/v1/whoami").status, 200);
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn replicas_starting_together_on_a_new_store_make_exactly_one_operator_token() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("first");
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("master.key");
    crate::harness::write_private(&key, &[42u8; 32]);
    let key = key.to_str().unwrap().to_owned();
    let starters: Vec<_> = (0..4)
        .map(|_| {
            let (url, key) = (url.clone(), key.clone());
            std::thread::spawn(move || Server::start_with(&["--store", &url, "--master-key", &key]))
        })
        .collect();
    let servers: Vec<Server> = starters.into_iter().map(|t| t.join().unwrap()).collect();
    let holders: Vec<&Server> = servers
        .iter()
        .filter(|s| s.data_dir().join("admin.token").exists())
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "exactly one replica creates the operator token"
    );
    let tokens = etcd.etcdctl(&["get", "--prefix", "/first/tokens/", "--keys-only"]);
    let n = String::from_utf8_lossy(&tokens.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(n, 1, "one token record in etcd");
    for s in &servers {
        if !s.data_dir().join("admin.token").exists() {
            assert!(
                s.stderr().contains("another replica created it"),
                "{}",
                s.stderr()
            );
        }
        // The one operator token works through every replica.
        assert_eq!(
            s.get(&holders[0].admin_token(), "/api/v1/whoami").status,
            200
        );
    }
}

/// Writes `k{i}` through `a` from a thread until told to stop; returns what was acknowledged
/// and the longest time one write took.
fn burst(
    a: &Server,
    token: &str,
    n: usize,
    mid: impl FnOnce(),
) -> (Vec<(String, String)>, Duration) {
    let (addr, token) = (a.addr.clone(), token.to_owned());
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut worst = Duration::ZERO;
        for i in 0..n {
            let (k, v) = (format!("k{i}"), format!("value-{i}"));
            let body = format!(r#"{{"key":"{k}","value":"{}"}}"#, b64(&v));
            let t0 = Instant::now();
            let r = crate::harness::http_json(
                &addr,
                "POST",
                "/api/v1/secrets",
                Some(&token),
                Some(&body),
            );
            worst = worst.max(t0.elapsed());
            if let Ok(r) = r
                && r.status == 201
            {
                acked.push((k, v));
            }
        }
        (acked, worst)
    });
    std::thread::sleep(Duration::from_millis(300));
    mid();
    writer.join().unwrap()
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn losing_the_leader_in_a_burst_of_writes_loses_no_acknowledged_write() {
    let mut etcd = EtcdCluster::start(3);
    let (a, b) = replicas(&etcd, "leader", &[]);
    let alice = user(&a, "alice");
    let leader = etcd.wait_for_leader(Duration::from_secs(5));
    let mut killed_at = None;
    let (acked, worst) = burst(&a, &alice, 300, || {
        etcd.kill(leader);
        killed_at = Some(Instant::now());
    });
    assert!(
        acked.len() > 250,
        "only {} of 300 writes acknowledged",
        acked.len()
    );
    assert!(worst < Duration::from_secs(5), "one write took {worst:?}");
    for (k, v) in &acked {
        let (st, j) = value_of(&b, &alice, &format!("alice/{k}"));
        assert_eq!(
            (st, j["value"].as_str()),
            (200, Some(b64(v).as_str())),
            "{k} through B"
        );
    }
    // A new leader, and both replicas serve.
    etcd.wait_for_leader(Duration::from_secs(5));
    a.put(&alice, "after", b"x");
    assert_eq!(value_of(&b, &alice, "alice/after").0, 200);
    eprintln!(
        "leader killed: {} of 300 writes acknowledged, slowest write {worst:?}",
        acked.len()
    );
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn losing_the_majority_fails_fast_and_etcd_coming_back_needs_no_restart() {
    let mut etcd = EtcdCluster::start(3);
    let (a, b) = replicas(&etcd, "majority", &["--max-staleness", "2s"]);
    let alice = user(&a, "alice");
    a.put(&alice, "k", b"v");
    let n = crate::harness::Neuro::new(&a, "alice-cli");
    n.ok(&["login", "--url", &a.url, "--token", &alice]);

    // One member down (not necessarily the leader): nothing changes for users.
    let leader = etcd.wait_for_leader(Duration::from_secs(5));
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    a.put(&alice, "k", b"v2");
    assert_eq!(value_of(&b, &alice, "alice/k").1["value"], b64("v2"));

    // Two down: writes fail with 503 within the request deadline, the CLI exits 69.
    etcd.kill(leader);
    let t0 = Instant::now();
    let r = a.post(&alice, "/api/v1/secrets", r#"{"key":"k","value":"djM="}"#);
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(took < Duration::from_secs(6), "the write took {took:?}");
    let out = n.run(&["secret", "add", "k2", "v"]);
    assert_eq!(out.code, 69, "{}", out.stderr);
    // Reads fail closed once the view is older than --max-staleness.
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let (st, _) = value_of(&b, &alice, "alice/k");
    assert_eq!(
        st, 503,
        "a read with etcd away for longer than --max-staleness"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the refused read took {:?}",
        t0.elapsed()
    );
    let ping = b.http("GET", "/api/v1/ping", None, None);
    assert_eq!(ping.status, 503);

    // etcd comes back: both replicas serve again, without a restart.
    etcd.restart(leader);
    etcd.restart(follower);
    etcd.wait_for_leader(Duration::from_secs(20));
    let t0 = Instant::now();
    loop {
        let r = a.post(&alice, "/api/v1/secrets", r#"{"key":"k","value":"djQ="}"#);
        if r.status == 201 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no recovery: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t0 = Instant::now();
    while value_of(&b, &alice, "alice/k").1["value"] != b64("v4") {
        assert!(t0.elapsed() < Duration::from_secs(10), "B did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn migrate_moves_an_embedded_store_to_etcd_and_back() {
    let etcd = EtcdCluster::start(1);
    let mut src = Server::start_with(&["--cluster", "neuro-compute", "--store", "embedded"]);
    let tokens = src.add_users(&["alice", "bob"]);
    let alice = tokens[0].clone();
    src.put(&alice, "k", b"migrated value");
    src.put(&alice, "big", &vec![b'x'; 1 << 20]);
    src.share(&alice, "secret://neuro-compute/alice/k", "bob");
    let _ = src.stop();
    let url = etcd.url("migrated");
    let migrate = |from: &str, to: &str| {
        let out = Command::new(bin("secretd"))
            .args(["migrate", "--from", from, "--to", to])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let data = src.data_dir();
    let data = data.to_str().unwrap();
    let (code, out, err) = migrate(data, &url);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("secrets 2"), "{out}");
    assert!(out.contains("users 2"), "{out}");
    assert!(out.contains("grants 1"), "{out}");
    // Into a store that is not empty: refused.
    let (code, _, err) = migrate(data, &url);
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");

    // A replica on the copy, with the same master key and data dir, serves the same secrets.
    let key = format!("{data}/master.key");
    let on_etcd = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--store",
        &url,
        "--master-key",
        &key,
    ]);
    let (st, j) = value_of(&on_etcd, &alice, "alice/k");
    assert_eq!(
        (st, j["value"].clone()),
        (200, b64("migrated value").into())
    );
    assert_eq!(
        value_of(&on_etcd, &alice, "alice/big").1["value"],
        b64(vec![b'x'; 1 << 20])
    );
    drop(on_etcd);

    // And back, as a backup: the checksums match.
    let back = tempfile::tempdir().unwrap();
    let back_dir = back.path().join("backup");
    let (code, out2, err) = migrate(&url, back_dir.to_str().unwrap());
    assert_eq!(code, 0, "{out2}{err}");
    let checksum = |s: &str| s.split("checksum ").nth(1).map(|c| c[..16].to_owned());
    assert_eq!(checksum(&out), checksum(&out2), "{out}\n{out2}");
}

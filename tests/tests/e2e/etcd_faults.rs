//! Faults and edge cases of the etcd store, on real etcd: a hung member (SIGSTOP, not a
//! crash), compaction while a replica's watch is away, revisions across replicas, and
//! `migrate` from a place that holds no store.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::etcd::EtcdCluster;
use crate::harness::{Server, b64, bin};

fn start(url: &str, key: Option<&std::path::Path>) -> Server {
    let mut args = vec!["--cluster", "neuro-compute", "--store", url];
    let k;
    if let Some(key) = key {
        k = key.to_str().unwrap().to_owned();
        args.extend_from_slice(&["--master-key", &k]);
    }
    Server::start_with(&args)
}

fn revision(srv: &Server, token: &str) -> u64 {
    let r = srv.get(token, "/api/v1/secrets/watch");
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["revision"].as_u64().unwrap()
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_revision_learned_on_one_replica_is_a_valid_since_on_the_other() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("since");
    let a = start(&url, None);
    let alice = a.add_users(&["alice"]).remove(0);
    a.put(&alice, "k", b"v1");
    let mut b = start(&url, Some(&a.data_dir().join("master.key")));
    // B restarts with the operator token in place (so it writes nothing) after another
    // deployment (or anything else) wrote to the same etcd, outside the prefix.
    let token = std::fs::read(a.data_dir().join("admin.token")).unwrap();
    let b_token = b.data_dir().join("admin.token");
    crate::harness::write_private(&b_token, &token);
    for _ in 0..5 {
        assert!(etcd.etcdctl(&["put", "/other/x", "y"]).status.success());
    }
    b.restart();

    let (ra, rb) = (revision(&a, &alice), revision(&b, &alice));
    assert_eq!(ra, rb, "the replicas disagree on the newest revision");
    // A client that learned a revision on one replica polls the other (a load balancer).
    for (srv, since) in [(&a, rb), (&b, ra)] {
        let r = srv.get(
            &alice,
            &format!("/api/v1/secrets/watch?since={since}&timeout_s=0"),
        );
        assert_eq!(r.status, 200, "since={since}: {}", r.body);
    }
    // And the next write through A is an event on B after that revision.
    let w = a.post(
        &alice,
        "/api/v1/secrets",
        &format!(r#"{{"key":"k","value":"{}"}}"#, b64("v2")),
    );
    assert_eq!(w.status, 201, "{}", w.body);
    let r = b.get(
        &alice,
        &format!("/api/v1/secrets/watch?since={ra}&timeout_s=5"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["events"][0]["version"], w.json()["version"]);
}

/// Writes `value` to alice/k through `w`, then reads it through `r` (the read must not be
/// stale and must not fail): returns how long the slower of the two requests took. Each is
/// one user's request, which the issue wants answered within 5 s with one member down: the
/// write may wait out an attempt on the hung member and a new leader (etcd rpc::DEADLINE, 4 s),
/// the read a barrier (1 s), so the two together may pass 5 s.
fn write_then_read(w: &Server, r: &Server, token: &str, value: &str) -> Duration {
    let body = format!(r#"{{"key":"k","value":"{}"}}"#, b64(value));
    let t0 = Instant::now();
    let put = w.post(token, "/api/v1/secrets", &body);
    assert_eq!(put.status, 201, "write {value}: {}", put.body);
    let wrote = t0.elapsed();
    let t0 = Instant::now();
    let got = r.get(token, "/api/v1/secrets/alice/k");
    assert_eq!(got.status, 200, "read {value}: {}", got.body);
    assert_eq!(
        got.json()["value"],
        b64(value),
        "a stale read of an acknowledged write ({value})"
    );
    wrote.max(t0.elapsed())
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_hung_member_under_a_replicas_watch_costs_a_delay_not_stale_reads() {
    let etcd = EtcdCluster::start(3);
    // A watches and reads member 0 first; B writes through the two others.
    let a = start(&etcd.url_in_order(&[0, 1, 2], "hung"), None);
    let key = a.data_dir().join("master.key");
    let b = start(&etcd.url_in_order(&[1, 2, 0], "hung"), Some(&key));
    let alice = a.add_users(&["alice"]).remove(0);
    write_then_read(&b, &a, &alice, "before");

    etcd.pause(0);
    let worst = alternate_writes_and_reads(&a, &b, &alice, Duration::from_secs(12));
    etcd.resume(0);
    eprintln!("member 0 hung: slowest write or read through the other replica {worst:?}");
    assert!(worst < Duration::from_secs(5), "a request took {worst:?}");

    // Then the leader hangs, whichever member it is.
    std::thread::sleep(Duration::from_secs(2));
    let leader = etcd.wait_for_leader(Duration::from_secs(10));
    etcd.pause(leader);
    let worst = alternate_writes_and_reads(&a, &b, &alice, Duration::from_secs(8));
    etcd.resume(leader);
    eprintln!("leader (member {leader}) hung: slowest write or read {worst:?}");
    assert!(worst < Duration::from_secs(5), "a request took {worst:?}");
}

/// For `during`, every 100 ms, a write through one replica read back through the other,
/// both ways in turn; returns the slowest request.
fn alternate_writes_and_reads(a: &Server, b: &Server, token: &str, during: Duration) -> Duration {
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    let mut i = 0;
    while t0.elapsed() < during {
        let (w, r) = if i % 2 == 0 { (b, a) } else { (a, b) };
        let took = write_then_read(w, r, token, &format!("v{i}"));
        if took > Duration::from_millis(500) {
            eprintln!("v{i} at {:?}: {took:?}", t0.elapsed());
        }
        worst = worst.max(took);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    worst
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn compaction_while_a_replicas_watch_is_away_reloads_it_correctly() {
    let mut etcd = EtcdCluster::start(3);
    let a = start(&etcd.url_in_order(&[0, 1, 2], "compact"), None);
    let key = a.data_dir().join("master.key");
    let b = start(&etcd.url_in_order(&[1, 2, 0], "compact"), Some(&key));
    let tokens = a.add_users(&["alice", "bob"]);
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());
    a.put(&alice, "k", b"old");
    a.put(&alice, "gone", b"x");
    assert_eq!(a.get(&bob, "/api/v1/secrets/bob/none").status, 404);

    // A's watch is on member 0: kill it while B changes things, then compact everything.
    etcd.kill(0);
    b.put(&alice, "k", b"new");
    assert!(b.delete(&alice, "/api/v1/secrets/alice/gone").status < 300);
    let r = b.delete(&a.admin_token(), "/api/v1/admin/users/bob?secrets=delete");
    assert!(r.status < 300, "{} {}", r.status, r.body);
    let st = etcd.etcdctl_on(1, &["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let rev = v[0]["Status"]["header"]["revision"].as_u64().unwrap();
    let out = etcd.etcdctl_on(1, &["compact", &rev.to_string(), "--physical"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let t0 = Instant::now();
    loop {
        let k = a.get(&alice, "/api/v1/secrets/alice/k");
        let gone = a.get(&alice, "/api/v1/secrets/alice/gone").status;
        let bob_st = a.get(&bob, "/api/v1/secrets/bob/none").status;
        if k.status == 200 && k.json()["value"] == b64("new") && gone == 404 && bob_st == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "A after compaction: k {} {}, gone {gone}, bob {bob_st}",
            k.status,
            k.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The reloaded copy follows new writes, and its feed has the writes after compaction.
    let since = revision(&a, &alice);
    b.put(&alice, "k", b"newer");
    let r = a.get(
        &alice,
        &format!("/api/v1/secrets/watch?since={since}&timeout_s=5"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["events"][0]["uri"],
        "secret://neuro-compute/alice/k"
    );
    assert_eq!(
        a.get(&alice, "/api/v1/secrets/alice/k").json()["value"],
        b64("newer")
    );
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn migrate_from_a_directory_that_holds_no_store_fails_and_creates_nothing() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("nosource");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    for from in [missing.clone(), dir.path().join("empty")] {
        let out = Command::new(bin("secretd"))
            .args(["migrate", "--from"])
            .arg(&from)
            .args(["--to", &url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}{err}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(&from.display().to_string()), "{err}");
        assert!(err.contains("no store"), "{err}");
    }
    assert!(!missing.exists(), "migrate created the source directory");
    assert!(!dir.path().join("empty/secrets.redb").exists());
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn both_replicas_writing_deleting_and_revoking_agree() {
    let mut etcd = EtcdCluster::start(3);
    let a = start(&etcd.url_in_order(&[0, 1, 2], "agree"), None);
    let key = a.data_dir().join("master.key");
    let mut b = start(&etcd.url_in_order(&[2, 1, 0], "agree"), Some(&key));
    let tokens = a.add_users(&["alice", "bob"]);
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());

    // Concurrent writes to one key through both replicas: versions rise per writer, and both
    // replicas end on the value of the highest acknowledged version.
    let writer = |srv: &Server, tag: &'static str| {
        let (addr, tok) = (srv.addr.clone(), alice.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0..30 {
                let v = format!("{tag}{i}");
                let body = format!(r#"{{"key":"k","value":"{}"}}"#, b64(&v));
                let r = crate::harness::http_json(
                    &addr,
                    "POST",
                    "/api/v1/secrets",
                    Some(&tok),
                    Some(&body),
                )
                .unwrap();
                assert_eq!(r.status, 201, "{}", r.body);
                acked.push((r.json()["version"].as_u64().unwrap(), v));
            }
            acked
        })
    };
    let (wa, wb) = (writer(&a, "a"), writer(&b, "b"));
    let (va, vb) = (wa.join().unwrap(), wb.join().unwrap());
    for acked in [&va, &vb] {
        assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "{acked:?}");
    }
    let last = va.iter().chain(&vb).max().unwrap().clone();
    for srv in [&a, &b] {
        let r = srv.get(&alice, "/api/v1/secrets/alice/k");
        assert_eq!(r.json()["value"], b64(&last.1));
        assert_eq!(r.json()["version"], last.0);
    }

    // Deleted through A, then created again: B's feed says deleted, then the new version.
    let since = revision(&b, &alice);
    let r = a.delete(&alice, "/api/v1/secrets/alice/k");
    assert!(r.status < 300, "{} {}", r.status, r.body);
    let w = b.get(
        &alice,
        &format!("/api/v1/secrets/watch?since={since}&timeout_s=5"),
    );
    let ev = w.json()["events"][0].clone();
    assert_eq!(ev["deleted"], true, "{}", w.body);
    let deleted_at = ev["version"].as_u64().unwrap();
    assert!(deleted_at > last.0);
    assert_eq!(b.get(&alice, "/api/v1/secrets/alice/k").status, 404);
    a.put(&alice, "k", b"again");
    let w = b.get(
        &alice,
        &format!("/api/v1/secrets/watch?since={deleted_at}&timeout_s=5"),
    );
    let ev = w.json()["events"][0].clone();
    assert_eq!(ev["deleted"], false, "{}", w.body);
    let r = b.get(&alice, "/api/v1/secrets/alice/k");
    assert_eq!(r.json()["value"], b64("again"));
    assert_eq!(r.json()["version"], ev["version"]);
    assert!(ev["version"].as_u64().unwrap() > deleted_at);

    // Values of the largest size, through one replica, read through the other, and loaded
    // again by a restarted replica.
    let big: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![b'a' + i; secrets_core::MAX_VALUE_LEN])
        .collect();
    for (i, v) in big.iter().enumerate() {
        a.put(&alice, &format!("big{i}"), v);
        let r = b.get(&alice, &format!("/api/v1/secrets/alice/big{i}"));
        assert_eq!(r.status, 200);
        assert!(r.json()["value"] == b64(v), "big{i} through B");
    }
    b.restart();
    for (i, v) in big.iter().enumerate() {
        let r = b.get(&alice, &format!("/api/v1/secrets/alice/big{i}"));
        assert!(r.json()["value"] == b64(v), "big{i} after B's reload");
    }

    // A token B has just verified (and cached), revoked through A: refused on B at once.
    assert_eq!(b.get(&bob, "/api/v1/secrets/bob/none").status, 404);
    let id = bob.split('.').nth(1).unwrap();
    let r = a.delete(&a.admin_token(), &format!("/api/v1/admin/tokens/{id}"));
    assert!(r.status < 300, "{} {}", r.status, r.body);
    assert_eq!(b.get(&bob, "/api/v1/secrets/bob/none").status, 401);

    // Every member killed and restarted at once: both replicas serve again, no restart.
    for i in 0..3 {
        etcd.kill(i);
    }
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_for_leader(Duration::from_secs(20));
    let t0 = Instant::now();
    loop {
        let r = a.post(
            &alice,
            "/api/v1/secrets",
            &format!(r#"{{"key":"k","value":"{}"}}"#, b64("after")),
        );
        if r.status == 201 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = b.get(&alice, "/api/v1/secrets/alice/k");
    assert_eq!(
        (r.status, r.json()["value"].clone()),
        (200, b64("after").into())
    );
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn migrate_and_store_mistakes_say_what_to_do() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("partial");
    let run = |args: &[&str]| {
        let out = Command::new(bin("secretd")).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A copy interrupted half-way leaves a non-empty target: the refusal says how to empty it.
    assert!(
        etcd.etcdctl(&["put", "/partial/users/alice", "x"])
            .status
            .success()
    );
    let mut src = Server::start_with(&["--store", "embedded"]);
    let data = src.data_dir();
    let data = data.to_str().unwrap().to_owned();
    // From a data directory whose secretd still runs: the lock, and what to do.
    let (code, err) = run(&["migrate", "--from", &data, "--to", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stop secretd on it first"), "{err}");
    let _ = src.stop();
    let (code, err) = run(&["migrate", "--from", &data, "--to", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("etcdctl del --prefix /partial/"), "{err}");
    // A misspelt store: the message names both kinds.
    let (code, err) = run(&["--store", "embeded"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'embedded'"), "{err}");
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_replica_authenticating_to_etcd_recovers_after_etcd_restarts() {
    let mut etcd = EtcdCluster::start(1);
    let ctl = |args: &[&str]| {
        let out = etcd.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["user", "add", "root:rootpw"]);
    ctl(&["user", "grant-role", "root", "root"]);
    ctl(&["user", "add", "neuro:neuropw"]);
    ctl(&["role", "add", "neuro"]);
    ctl(&[
        "role",
        "grant-permission",
        "neuro",
        "readwrite",
        "/authp/",
        "--prefix=true",
    ]);
    ctl(&["user", "grant-role", "neuro", "neuro"]);
    ctl(&["auth", "enable"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "neuropw\n").unwrap();
    let pw = pw.to_str().unwrap();
    let url = etcd.url("authp");
    let a = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--store",
        &url,
        "--etcd-user",
        "neuro",
        "--etcd-password-file",
        pw,
    ]);
    let admin = a.admin_token();
    assert_eq!(a.get(&admin, "/api/v1/whoami").status, 200);

    // etcd restarts: its auth tokens are gone; the replica authenticates again by itself.
    etcd.terminate(0);
    std::thread::sleep(Duration::from_secs(1));
    etcd.restart(0);
    etcd.wait_for_leader(Duration::from_secs(20));
    let t0 = Instant::now();
    loop {
        let r = a.get(&admin, "/api/v1/whoami");
        if r.status == 200 && t0.elapsed() > Duration::from_secs(6) {
            break;
        }
        assert!(
            r.status == 200 || t0.elapsed() < Duration::from_secs(10),
            "no recovery after etcd restarted: {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let alice = a.add_users(&["alice"]).remove(0);
    a.put(&alice, "k", b"v2");
    let r = a.get(&alice, "/api/v1/secrets/alice/k");
    assert_eq!(
        (r.status, r.json()["value"].clone()),
        (200, b64("v2").into())
    );
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_replica_catches_up_on_more_than_a_watch_message_of_values() {
    let etcd = EtcdCluster::start(3);
    // A knows member 0 only; B the two others.
    let a = start(&etcd.url_in_order(&[0], "catchup"), None);
    let key = a.data_dir().join("master.key");
    let b = start(&etcd.url_in_order(&[1, 2], "catchup"), Some(&key));
    let alice = a.add_users(&["alice"]).remove(0);
    a.put(&alice, "k", b"before");
    etcd.pause(0);
    // 300 MiB (300 keys: loading them takes longer than a barrier) written into the prefix while A's member hangs (straight into etcd,
    // through its JSON gateway: faster than sealing): when it is back, etcd sends A up to 1000
    // revisions in one watch message.
    let t0 = Instant::now();
    let gateway = etcd.endpoint(1);
    for i in 0..300u32 {
        let mut v = vec![b'v'; 1 << 20];
        v[..4].copy_from_slice(&i.to_le_bytes());
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            b64(format!("/catchup/filler/{i}")),
            b64(&v)
        );
        // A put may meet the election that pausing member 0 (the leader, maybe) started.
        let mut tries = 0;
        loop {
            let r = crate::harness::http_json(&gateway, "POST", "/v3/kv/put", None, Some(&body))
                .unwrap();
            if r.status == 200 {
                break;
            }
            tries += 1;
            assert!(tries < 20, "{} {}", r.status, r.body);
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    b.put(&alice, "k", b"after");
    eprintln!("300 MiB written in {:?}", t0.elapsed());
    etcd.resume(0);
    let t0 = Instant::now();
    loop {
        let r = a.get(&alice, "/api/v1/secrets/alice/k");
        if r.status == 200 && r.json()["value"] == b64("after") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A did not catch up: {} {}; A's log ends: {}",
            r.status,
            r.body,
            a.stderr()
                .lines()
                .rev()
                .find(|l| l.contains("watch"))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("A caught up {:?} after its member came back", t0.elapsed());
    for l in a.stderr().lines().filter(|l| l.contains("reloading")) {
        eprintln!("A: {l}");
    }
}

#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_replica_cut_off_from_etcd_stops_honouring_a_grant_revoked_elsewhere_after_max_staleness() {
    let etcd = EtcdCluster::start(3);
    let a = start(&etcd.url_in_order(&[0, 1], "stale"), None);
    let key = a.data_dir().join("master.key").to_str().unwrap().to_owned();
    // B reaches etcd through member 2 only.
    let b = Server::start_with(&[
        "--cluster",
        "neuro-compute",
        "--store",
        &etcd.url_in_order(&[2], "stale"),
        "--master-key",
        &key,
        "--max-staleness",
        "2s",
    ]);
    let tokens = a.add_users(&["alice", "bob"]);
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());
    a.put(&alice, "k", b"v");
    a.share(&alice, "secret://neuro-compute/alice/k", "bob");
    assert_eq!(b.get(&bob, "/api/v1/secrets/alice/k").status, 200);

    // Member 2 hangs; the grant is revoked through A, which still has a quorum.
    etcd.pause(2);
    let cut = Instant::now();
    let r = a.delete(
        &alice,
        "/api/v1/users/bob/permissions?uri=secret://neuro-compute/alice/k",
    );
    assert!(r.status < 300, "{} {}", r.status, r.body);
    // B cannot see the revocation; past --max-staleness it refuses instead of serving.
    let mut last = 0;
    while cut.elapsed() < Duration::from_secs(5) {
        last = b.get(&bob, "/api/v1/secrets/alice/k").status;
        if cut.elapsed() > Duration::from_millis(2500) {
            assert_eq!(
                last,
                503,
                "B honours a revoked grant {:?} after",
                cut.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last, 503);
    etcd.resume(2);
    let t0 = Instant::now();
    loop {
        let st = b.get(&bob, "/api/v1/secrets/alice/k").status;
        if st == 403 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "B after its member came back: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Replicas of one store must share one --cluster name: it is part of every URI the store's
/// grants and jobs hold, and a replica under another name could neither see nor revoke them.
/// The first start keeps the name beside the key check value; a replica with another name
/// stops before writing anything and names both. (Embedded stores keep theirs too.)
#[test]
#[cfg_attr(not(feature = "etcd"), ignore = "needs etcd: feature etcd")]
fn a_replica_with_another_cluster_name_is_refused() {
    let etcd = EtcdCluster::start(1);
    let url = etcd.url("names");
    let a = start(&url, None);
    let alice = a.add_users(&["alice"]).remove(0);
    a.put(&alice, "k", b"v");
    let before = etcd.etcdctl(&["get", "--prefix", "/names/", "--keys-only"]);
    let dir = tempfile::tempdir().unwrap();
    let key = a.data_dir().join("master.key");
    let (code, err) = crate::harness::secretd_start_fails(
        &dir.path().join("b"),
        &[
            "--cluster",
            "other",
            "--store",
            &url,
            "--master-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    for needle in [
        "'neuro-compute'",
        "--cluster 'other'",
        "nothing was written",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let after = etcd.etcdctl(&["get", "--prefix", "/names/", "--keys-only"]);
    assert_eq!(before.stdout, after.stdout, "the refused replica wrote");
    // The same name starts.
    let b = start(&url, Some(&key));
    assert_eq!(b.get(&alice, "/api/v1/secrets/alice/k").status, 200);

    // An embedded store keeps its name too.
    let mut e = Server::start_with(&["--store", "embedded"]);
    let data = e.data_dir();
    e.stop();
    let (code, err) = crate::harness::secretd_start_fails(
        &data,
        &["--cluster", "renamed", "--store", "embedded"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("serves cluster 'default'"), "{err}");
}

/// `migrate` refuses a target another user could read or change: a directory owned by
/// another user, one writable by others, a store file of another user's, a symbolic link.
/// What is missing it creates 0700 and 0600.
#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn migrate_refuses_a_target_another_user_can_touch_root() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    crate::harness::tier::require_root("chown to nobody");
    let dir = tempfile::tempdir().unwrap();
    let mut src = Server::start_with(&["--store", "embedded"]);
    let data = src.data_dir();
    let alice = src.add_users(&["alice"]).remove(0);
    src.put(&alice, "k", b"v");
    src.stop();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    let migrate = |to: &std::path::Path| {
        Command::new(bin("secretd"))
            .args(["migrate", "--from"])
            .arg(&data)
            .arg("--to")
            .arg(to)
            .output()
            .unwrap()
    };
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    nix::unistd::chown(&theirs, Some(nobody), None).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = dir.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("secrets.redb"), b"").unwrap();
    nix::unistd::chown(&planted.join("secrets.redb"), Some(nobody), None).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    for (to, needle) in [
        (&theirs, "belongs to uid"),
        (&open, "group or others may write"),
        (&planted, "belongs to uid"),
        (&link, "symbolic link"),
    ] {
        let out = migrate(to);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", to.display());
        assert!(err.contains(needle), "{}: {err}", to.display());
    }
    assert!(
        !theirs.join("secrets.redb").exists(),
        "a copy in nobody's directory"
    );
    assert!(!open.join("secrets.redb").exists());
    // A new directory: created private, and the copy in it too.
    let fresh = dir.path().join("new/backup");
    let out = migrate(&fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("secrets.redb")), 0o600);
}

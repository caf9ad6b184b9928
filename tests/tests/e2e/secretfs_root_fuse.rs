//! secretfs end to end, with real FUSE mounts. Needs root and /dev/fuse: these tests fail
//! (never skip) without them. Each secretfs runs in a private mount namespace (`unshare -m`),
//! so a failing test leaves no mount on the host; the tests look inside with `nsenter`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::secretfs::{
    Ns, SecretFs, fuse_alice_owning_k, host_secretfs_mounts, secretfs_mounts,
};
use crate::harness::tier::require_fuse;
use crate::harness::{Server, bin};

/// Polls `f` until it returns true; returns how long that took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

const REFUSED: [&str; 4] = ["EROFS", "EPERM", "EACCES", "EBUSY"];

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn exact_placement_ownership_and_read_only() {
    require_fuse();
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    srv.put(alice, "one", &[0xff]);
    srv.put(alice, "big", &big);
    srv.put(alice, "two", b"second\nfile\n");
    srv.put(alice, "far", b"far away");
    srv.put(bob, "shared", b"from bob");
    srv.share(bob, "secret:/bob/shared", "alice");

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let dir = w.join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("other.txt"), b"keep me").unwrap();
    let spec = w.join("spec.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"secret_volumes":[{{"src_secret_uri":"secret:two","dst_path":"{}/two.txt"}}]}}"#,
            dir.display()
        ),
    )
    .unwrap();
    let p = |s: &str| w.join(s);
    let vols = [
        format!("secret:one:{}", p("dir/one.bin").display()),
        format!(
            "secret://neuro-compute/alice/big:{}",
            p("dir/big.bin").display()
        ),
        format!("secret:/bob/shared:{}", p("dir/shared.txt").display()),
        format!("secret:far:{}", p("new/deeper/far.txt").display()),
    ];
    let mut args = vec![
        "--spec",
        spec.to_str().unwrap(),
        "--uid",
        "1000",
        "--gid",
        "1001",
    ];
    for v in &vols {
        args.extend(["--volume", v.as_str()]);
    }
    let mut fs =
        SecretFs::start(&srv, w, alice, Ns::Own, &args).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(host_secretfs_mounts(), 0, "nothing is mounted on the host");

    for (path, want) in [
        ("dir/one.bin", vec![0xff]),
        ("dir/big.bin", big.clone()),
        ("dir/two.txt", b"second\nfile\n".to_vec()),
        ("dir/shared.txt", b"from bob".to_vec()),
        ("new/deeper/far.txt", b"far away".to_vec()),
    ] {
        assert_eq!(fs.cat(&p(path)).unwrap(), want, "{path}");
        let st = fs.probe(None, &["stat", p(path).to_str().unwrap()]);
        assert_eq!(st, format!("1000 1001 400 {}", want.len()), "{path}");
    }
    // the directory's other file is still there, unchanged
    let ls = fs.exec(None, &["ls", "-A", dir.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout),
        "big.bin\none.bin\nother.txt\nshared.txt\ntwo.txt\n"
    );
    assert_eq!(fs.cat(&dir.join("other.txt")).unwrap(), b"keep me");

    // the job's uid reads; another uid does not
    let two = p("dir/two.txt");
    let two = two.to_str().unwrap();
    let o = fs.exec(Some((1000, 1001)), &["cat", two]);
    assert!(o.status.success() && o.stdout == b"second\nfile\n", "{o:?}");
    assert_eq!(
        fs.probe(Some((1002, 1002)), &["try", "open", two]),
        "EACCES"
    );

    // nothing can be changed, by the owner or by root
    let root_new = fs.root.join("new");
    for user in [None, Some((1000, 1001))] {
        for (op, path, arg) in [
            ("write", two, ""),
            ("append", two, ""),
            ("trunc", two, ""),
            ("chmod", two, ""),
            ("unlink", two, ""),
            ("rename", two, "/tmp/x"),
            ("creat", root_new.to_str().unwrap(), ""),
            ("mkdir", root_new.to_str().unwrap(), ""),
        ] {
            let r = fs.probe(user, &["try", op, path, arg]);
            assert!(
                REFUSED.contains(&r.as_str()),
                "{op} {path} as {user:?}: {r}"
            );
        }
    }
    assert_eq!(fs.cat(&p("dir/two.txt")).unwrap(), b"second\nfile\n");
    assert_eq!(fs.probe(None, &["stat", two]), "1000 1001 400 12");

    // the status area and the audit log
    let st = fs.status();
    assert_eq!(st["files"].as_array().unwrap().len(), 5);
    assert_eq!(st["files"][0]["path"], two);
    assert!(st["files"][0]["version"].as_u64().unwrap() > 0);
    let audit = std::fs::read_to_string(&fs.audit).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains(r#""uid":1000"#))
        .unwrap_or_else(|| panic!("no open by uid 1000 in {audit}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["uri"].as_str(), v["result"].as_str()),
        (Some("secret:two"), Some("ok"))
    );
    assert!(
        v["executable"].as_str().unwrap().ends_with("/cat"),
        "{line}"
    );
    assert!(v["pid"].as_u64().unwrap() > 1);
    assert!(
        !audit.contains("second") && !audit.contains("from bob"),
        "no value in the audit"
    );

    // SIGTERM: exit 0, ready file gone, what it created removed, the directory as it was
    assert!(fs.term().success(), "{}", fs.stderr());
    assert!(!fs.ready.exists());
    assert!(!p("new").exists(), "created parents removed");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["other.txt"]);
    assert_eq!(host_secretfs_mounts(), 0);
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn missing_or_forbidden_secrets_stop_it_before_ready() {
    require_fuse();
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    srv.put(&t[0], "ok", b"v");
    srv.put(&t[1], "private", b"v");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    for (vol, code, msg) in [
        (
            "secret:nope",
            72,
            "secret://neuro-compute/alice/nope: not found",
        ),
        (
            "secret:/bob/private",
            77,
            "secret://neuro-compute/bob/private: forbidden",
        ),
    ] {
        let path = w.join("d/x.txt");
        let okv = format!("secret:ok:{}", w.join("d/ok.txt").display());
        let v = format!("{vol}:{}", path.display());
        let report = w.join("error.json");
        let Err((c, stderr)) = SecretFs::start(
            &srv,
            w,
            &t[0],
            Ns::Own,
            &[
                "--volume",
                &okv,
                "--volume",
                &v,
                "--error-file",
                report.to_str().unwrap(),
            ],
        ) else {
            panic!("{vol}: secretfs started");
        };
        assert_eq!(c, code, "{vol}: {stderr}");
        assert!(
            stderr.contains(&format!("ERROR: {}: {msg}", path.display())),
            "{vol}: {stderr}"
        );
        // The same, for `neuro run`: the documented status file (secrets_core::handoff).
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let (uri, class) = msg.rsplit_once(": ").unwrap();
        assert_eq!(
            got,
            serde_json::json!({"code": code, "errors": [{
                "path": path.to_str().unwrap(),
                "uri": uri,
                "class": class,
                "detail": class,
            }]}),
            "{vol}"
        );
        std::fs::remove_file(&report).unwrap();
        assert!(!w.join("ready").exists());
        assert!(!w.join("d").exists(), "nothing created");
        assert_eq!(host_secretfs_mounts(), 0);
    }
    // a bad token and an unreachable service fail too
    let v = format!("secret:ok:{}", w.join("x").display());
    let Err((c, e)) = SecretFs::start(
        &srv,
        w,
        "nst.0000000000000000.00",
        Ns::Own,
        &["--volume", &v],
    ) else {
        panic!()
    };
    assert_eq!(c, 77, "{e}");
    let Err((c, e)) = SecretFs::start(&srv, w, &t[0], Ns::Own, &["--volume", "secret:ok:/x:ro"])
    else {
        panic!()
    };
    assert_eq!(c, 65, "{e}");
    assert!(e.contains("suffixes are not supported"), "{e}");
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn rotation_snapshots_outage_and_revocation() {
    require_fuse();
    let (mut srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (t[0].clone(), t[1].clone());
    srv.put(&alice, "k", b"v1");
    srv.put(&alice, "gone", b"soon deleted");
    srv.put(&bob, "shared", b"bob's");
    srv.share(&bob, "secret:/bob/shared", "alice");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (k, gone, shared) = (w.join("s/k"), w.join("s/gone"), w.join("s/shared"));
    let vols = [
        format!("secret:k:{}", k.display()),
        format!("secret:gone:{}", gone.display()),
        format!("secret:/bob/shared:{}", shared.display()),
    ];
    let mut args = vec!["--uid", "1000", "--gid", "1000"];
    for v in &vols {
        args.extend(["--volume", v.as_str()]);
    }
    let fs = SecretFs::start(&srv, w, &alice, Ns::Own, &args).unwrap_or_else(|e| panic!("{e:?}"));
    let v1 = fs.status()["files"][0]["version"].as_u64().unwrap();

    // A handle opened before a rotation keeps its bytes; the next open sees the new ones.
    let probe = bin("fsprobe");
    let mut hold = Command::new("nsenter")
        .args([
            "-t",
            &fs.pid.to_string(),
            "-m",
            "--",
            probe.to_str().unwrap(),
            "hold",
            k.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(hold.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "first 7631");
    srv.put(&alice, "k", b"v2-longer");
    let took = wait_for("rotation", Duration::from_secs(1), || {
        fs.cat(&k).unwrap() == b"v2-longer"
    });
    eprintln!("rotation seen after {took:?}");
    writeln!(hold.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "second 7631",
        "the old handle keeps the old bytes"
    );
    hold.wait().unwrap();
    let st = fs.status();
    assert!(st["files"][0]["version"].as_u64().unwrap() > v1);
    assert_eq!(st["stale_since"], serde_json::Value::Null);

    // The service goes away: files keep being served, the status says since when stale.
    srv.kill9();
    wait_for("stale", Duration::from_secs(5), || {
        !fs.status()["stale_since"].is_null()
    });
    assert_eq!(fs.cat(&k).unwrap(), b"v2-longer");
    assert_eq!(fs.cat(&shared).unwrap(), b"bob's");
    // ... and comes back: rotation resumes.
    srv.restart();
    srv.put(&alice, "k", b"v3");
    wait_for("rotation after the outage", Duration::from_secs(8), || {
        fs.cat(&k).unwrap() == b"v3"
    });
    wait_for("fresh again", Duration::from_secs(2), || {
        fs.status()["stale_since"].is_null()
    });

    // Revocation and deletion: new opens fail within a second.
    assert_eq!(
        srv.delete(
            &bob,
            "/api/v1/users/alice/permissions?uri=secret%3A%2Fbob%2Fshared"
        )
        .status,
        204
    );
    let took = wait_for("revocation", Duration::from_secs(1), || {
        fs.probe(
            Some((1000, 1000)),
            &["try", "open", shared.to_str().unwrap()],
        ) == "EACCES"
    });
    eprintln!("revocation seen after {took:?}");
    assert_eq!(srv.delete(&alice, "/api/v1/secrets/alice/gone").status, 204);
    wait_for("deletion", Duration::from_secs(1), || {
        fs.probe(Some((1000, 1000)), &["try", "open", gone.to_str().unwrap()]) == "EACCES"
    });
    assert!(
        fs.status()["files"][2]["state"]
            .as_str()
            .unwrap()
            .starts_with("revoked")
    );
    assert_eq!(fs.cat(&k).unwrap(), b"v3", "the others are unaffected");
    // The kernel refuses the job's uid by the file's mode alone; root reaches the daemon,
    // which refuses too and audits it.
    assert_eq!(
        fs.probe(None, &["try", "open", shared.to_str().unwrap()]),
        "EACCES"
    );
    let audit = std::fs::read_to_string(&fs.audit).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(r#""uri":"secret:/bob/shared""#)
                && l.contains(r#""result":"revoked""#)),
        "{audit}"
    );
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn kill_9_leaves_a_stale_mount_the_next_start_clears() {
    let (srv, t, work) = fuse_alice_owning_k();
    // A namespace that outlives both secretfs runs, as a pod's would.
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sleep", "600"])
        .spawn()
        .unwrap();
    let h = holder.id();
    std::thread::sleep(Duration::from_millis(200));
    let ns_mounts = || secretfs_mounts(&format!("/proc/{h}/mountinfo"));
    let w = work.path();
    // In a directory that does not exist yet: secretfs creates placeholders for it.
    let path = w.join("new/k.txt");
    let v = format!("secret:k:{}", path.display());
    let mut first = SecretFs::start(&srv, w, &t[0], Ns::Of(h), &["--volume", &v])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(ns_mounts(), 2, "the root and one bind mount");

    // Memory hygiene, seen from outside: locked memory, no core dumps.
    let status = std::fs::read_to_string(format!("/proc/{}/status", first.pid)).unwrap();
    let vmlck: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(vmlck > 0, "VmLck is 0: memory not locked\n{status}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", first.pid)).unwrap();
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );
    // Dumpability has no /proc field; the status area reports the kernel's PR_GET_DUMPABLE.
    assert_eq!(first.status()["dumpable"], false);

    first.kill9();
    assert_eq!(ns_mounts(), 2, "SIGKILL leaves the mounts behind, dead");
    std::fs::remove_file(w.join("ready")).unwrap();
    let mut second = SecretFs::start(&srv, w, &t[0], Ns::Of(h), &["--volume", &v])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(second.stderr().contains("cleared"), "{}", second.stderr());
    assert!(
        second
            .stderr()
            .contains("removed the placeholders of an earlier run (2)"),
        "{}",
        second.stderr()
    );
    assert_eq!(ns_mounts(), 2);
    assert_eq!(second.cat(&path).unwrap(), b"value");
    assert!(second.term().success());
    assert_eq!(ns_mounts(), 0, "no mount left after SIGTERM");
    assert!(
        !w.join("new").exists(),
        "the placeholders of both runs are gone"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn a_store_restored_from_a_backup_keeps_rotation_going_without_polling() {
    require_fuse();
    // A backup of the embedded store's file (etcd has its own snapshots).
    let mut srv = Server::start_with(&["--cluster", "neuro-compute", "--store", "embedded"]);
    let t = srv.add_users(&["alice"]);
    let alice = t[0].clone();
    srv.put(&alice, "k", b"v1");
    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(
        srv.data_dir().join("secrets.redb"),
        backup.path().join("secrets.redb"),
    )
    .unwrap();
    // The live store moves on: its revision is well ahead of the backup's.
    for i in 0..20 {
        srv.put(&alice, "other", format!("o{i}").as_bytes());
    }
    let work = tempfile::tempdir().unwrap();
    let k = work.path().join("s/k");
    let vol = format!("secret:k:{}", k.display());
    let fs = SecretFs::start(&srv, work.path(), &alice, Ns::Own, &["--volume", &vol])
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(fs.cat(&k).unwrap(), b"v1");

    // Restore the backup: secretfs's watch position is now ahead of the service.
    srv.kill9();
    std::fs::copy(
        backup.path().join("secrets.redb"),
        srv.data_dir().join("secrets.redb"),
    )
    .unwrap();
    srv.restart();
    srv.put(&alice, "k", b"v2");
    wait_for("rotation after the restore", Duration::from_secs(8), || {
        fs.cat(&k).unwrap() == b"v2"
    });
    // Settled: secretfs long-polls the feed again instead of resolving over and over.
    std::thread::sleep(Duration::from_secs(1));
    let reads = || srv.audit_log().matches(r#""action":"secret.read""#).count();
    let before = reads();
    std::thread::sleep(Duration::from_secs(3));
    let polled = reads() - before;
    assert!(polled <= 1, "{polled} reads in 3 s while nothing changed");
    srv.put(&alice, "k", b"v3");
    let took = wait_for("rotation", Duration::from_secs(1), || {
        fs.cat(&k).unwrap() == b"v3"
    });
    eprintln!("rotation after the restore seen after {took:?}");
    assert_eq!(fs.status()["stale_since"], serde_json::Value::Null);
}

/// `MOUNT_ROOT/.metrics`: the status area's counters in the Prometheus text format, read
/// fresh on every open, with no path, URI or value in it.
#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn metrics_file_counts_operations_in_prometheus_text() {
    let (srv, t, work) = fuse_alice_owning_k();
    let w = work.path();
    let file = w.join("files/k");
    let vol = format!("secret:k:{}", file.display());
    let mut fs = SecretFs::start(&srv, w, &t[0], Ns::Own, &["--volume", &vol])
        .unwrap_or_else(|e| panic!("{e:?}"));
    let metrics = |fs: &SecretFs| -> std::collections::HashMap<String, f64> {
        let raw = fs.cat(&fs.root.join(".metrics")).expect("read .metrics");
        let text = String::from_utf8(raw).unwrap();
        assert!(
            text.contains("# TYPE secretfs_operations_total counter"),
            "{text}"
        );
        for secret in ["files/k", "secret:k", "alice", "value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
                (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("{l}")))
            })
            .collect()
    };
    let before = metrics(&fs);
    assert_eq!(before[r#"secretfs_files{state="ok"}"#], 1.0);
    assert_eq!(before["secretfs_stale"], 0.0);
    for _ in 0..3 {
        assert_eq!(fs.cat(&file).unwrap(), b"value");
    }
    let after = metrics(&fs);
    let opens = r#"secretfs_operations_total{op="open"}"#;
    // Three opens of the file and one of .metrics itself.
    assert_eq!(after[opens] - before[opens], 4.0, "{after:?}");
    let ls = fs.exec(None, &["ls", "-A", fs.root.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(".metrics"),
        "{ls:?}"
    );
    assert!(fs.term().success());
}

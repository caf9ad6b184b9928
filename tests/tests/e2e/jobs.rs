//! Jobs: creation checks (permissions, existence) and the job token's exact scope.

use crate::harness::{Server, b64, yaml_docs};

#[test]
fn job_tokens_read_exactly_their_uris_until_deleted() {
    let (srv, t) = Server::start_with_users(&["alice", "bob"]);
    let (alice, bob) = (&t[0], &t[1]);
    for (tok, key, val) in [
        (alice, "a1", "va1"),
        (alice, "a2", "va2"),
        (alice, "a3", "va3"),
        (bob, "b1", "vb1"),
        (bob, "b2", "vb2"),
    ] {
        let body = format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(val));
        assert_eq!(srv.post(tok, "/api/v1/secrets", &body).status, 201);
    }
    srv.share(bob, "secret:/bob/b1", "alice");

    // Missing permissions: 403 listing each missing URI, nothing created.
    let r = srv.post(alice, "/api/v1/jobs", r#"{"secret_env":{"A":"secret:a1","B":"secret:/bob/b2"},"secret_volumes":[{"src_secret_uri":"secret://neuro-compute/bob/zz","dst_path":"/x"}]}"#);
    assert_eq!(r.status, 403, "{}", r.body);
    let missing: Vec<String> = r.json()["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m["uri"].as_str().unwrap(),
                m["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        missing,
        [
            "secret://neuro-compute/bob/b2 read",
            "secret://neuro-compute/bob/zz read"
        ]
    );

    // Missing secrets: 404 with the keys sorted.
    let r = srv.post(
        alice,
        "/api/v1/jobs",
        r#"{"secret_env":{"A":"secret:zeta","B":"secret:alpha","C":"secret:a1"}}"#,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "Missing secrets: 'alpha', 'zeta'");

    // A good job: env and volume URIs, in short and full forms.
    let r = srv.post(alice, "/api/v1/jobs", r#"{"secret_env":{"A":"secret:a1","B":"secret:/bob/b1"},"secret_volumes":[{"src_secret_uri":"secret://neuro-compute/alice/a2","dst_path":"/var/secrets/a2"}],"ttl_s":600}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    let j = r.json();
    let (job_id, job) = (
        j["job_id"].as_str().unwrap().to_owned(),
        j["token"].as_str().unwrap().to_owned(),
    );
    assert!(j["expires_at"].as_str().unwrap().ends_with('Z'));
    let get = |owner: &str, key: &str| srv.get(&job, &format!("/api/v1/secrets/{owner}/{key}"));
    let r = get("alice", "a1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], b64("va1"));
    assert_eq!(get("alice", "a2").status, 200);
    assert_eq!(get("bob", "b1").status, 200);
    assert_eq!(get("alice", "a3").status, 403, "not in the job");
    assert_eq!(get("bob", "b2").status, 403, "not in the job");
    assert_eq!(srv.get(&job, "/api/v1/secrets").status, 403, "no list");
    let body = format!(r#"{{"key":"a1","value":"{}"}}"#, b64("x"));
    assert_eq!(
        srv.post(&job, "/api/v1/secrets", &body).status,
        403,
        "no write"
    );
    assert_eq!(srv.delete(&job, "/api/v1/secrets/alice/a1").status, 403);
    assert_eq!(srv.post(&job, "/api/v1/jobs", "{}").status, 403);
    assert_eq!(srv.get(&job, "/api/v1/users/alice/permissions").status, 403);

    // resolve: one round trip, per-URI outcomes; short forms expand against the job's user.
    let r = srv.post(&job, "/api/v1/secrets/resolve", r#"{"uris":["secret:a1","secret:/bob/b1","secret:a3","secret:bad?q","secret://neuro-compute/alice/a2"]}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let res = r.json()["results"].clone();
    let statuses = strs_by(&res, |x| x["status"].as_str());
    assert_eq!(statuses, ["ok", "ok", "forbidden", "invalid", "ok"]);
    assert_eq!(res[1]["value"], b64("vb1"));
    assert!(res[2].get("value").is_none());

    // Revoking bob's share cuts the job off that secret at once.
    assert_eq!(
        srv.delete(
            bob,
            "/api/v1/users/alice/permissions?uri=secret%3A%2Fbob%2Fb1"
        )
        .status,
        204
    );
    assert_eq!(get("bob", "b1").status, 403);

    // bob cannot end alice's job; alice can, and the token dies with it.
    assert_eq!(
        srv.delete(bob, &format!("/api/v1/jobs/{job_id}")).status,
        404
    );
    assert_eq!(
        srv.delete(alice, &format!("/api/v1/jobs/{job_id}")).status,
        204
    );
    assert_eq!(get("alice", "a1").status, 401);
    assert_eq!(
        srv.delete(alice, &format!("/api/v1/jobs/{job_id}")).status,
        404
    );
}

#[test]
fn job_spec_is_validated() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let body = format!(r#"{{"key":"k","value":"{}"}}"#, b64("v"));
    assert_eq!(srv.post(&t[0], "/api/v1/secrets", &body).status, 201);
    for (spec, msg) in [
        (
            r#"{"secret_env":{"1X":"secret:k"}}"#,
            "invalid variable name '1X'",
        ),
        (r#"{"secret_env":{"X":"k"}}"#, "missing 'secret:' scheme"),
        (
            r#"{"secret_volumes":[{"src_secret_uri":"secret:k","dst_path":"rel"}]}"#,
            "must be absolute",
        ),
        (
            r#"{"secret_volumes":[{"src_secret_uri":"secret:k","dst_path":"/a"},{"src_secret_uri":"secret:k","dst_path":"/a"}]}"#,
            "used twice",
        ),
        (
            r#"{"secret_env":{"X":"secret:k"},"ttl_s":0}"#,
            "ttl_s 0 is out of range",
        ),
        (
            r#"{"secret_env":{"X":"secret://other/alice/k"}}"#,
            "cluster 'other'",
        ),
        (
            r#"{"secret_env":{"X":"secret:k"},"extra":1}"#,
            "unknown field",
        ),
    ] {
        let r = srv.post(&t[0], "/api/v1/jobs", spec);
        assert_eq!(r.status, 400, "{spec}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap().to_owned();
        assert!(err.contains(msg), "{spec}: {err:?} lacks {msg:?}");
    }
}

/// `neuro job manifest ARGS`, which must succeed; the documents it printed.
fn manifest(user: &crate::harness::Neuro, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["job", "manifest"];
    all.extend(args);
    let o = user.run_full(&all, b"", true);
    assert_eq!(o.code, 0, "{}", o.stderr);
    yaml_docs(&o.stdout_str())
}

/// The strings in the array `v`.
fn strs(v: &serde_json::Value) -> Vec<&str> {
    strs_by(v, serde_json::Value::as_str)
}

/// A string picked out of each element of the array `v`.
fn strs_by<'a>(
    v: &'a serde_json::Value,
    pick: impl Fn(&'a serde_json::Value) -> Option<&'a str>,
) -> Vec<&'a str> {
    let items = v.as_array().unwrap();
    items.iter().map(|x| pick(x).unwrap()).collect()
}

#[test]
fn job_manifest_layout_and_bad_input() {
    let (srv, t) = Server::start_with_users(&["alice"]);
    let alice = srv.user("alice", &t[0]);
    alice.ok(&["secret", "add", "k", "v"]);
    let image = ["--image", "img"];
    for (args, msg) in [
        (vec!["--volume", "secret:k:/neuro/x"], "under /neuro"),
        (
            vec!["--volume", "secret:k:/a", "--volume", "secret:k:/a"],
            "two secrets are mapped to '/a'",
        ),
        (vec!["--volume", "secret:k:/a:ro"], "volume"),
        (
            vec!["--env", "A=secret:k", "--env", "A=1"],
            "'A' is given twice",
        ),
        (vec!["--env", "1A=secret:k"], "1A"),
        (vec!["--user", "alice"], "invalid user 'alice'"),
        (vec!["--service-url", "ftp://x"], "invalid --service-url"),
        (vec!["--image", "a b"], "invalid --image"),
    ] {
        let mut a = vec!["job", "manifest"];
        if !args.contains(&"--image") {
            a.extend(image);
        }
        a.extend(args);
        a.extend(["--", "true"]);
        // `--user` is refused while the arguments are parsed, the others after: 65 alike.
        alice.fails(&a, 65, msg);
    }

    // Without volumes there is no sidecar; --user sets the job's user and the file owner.
    let docs = manifest(
        &alice,
        &[
            "--env",
            "X=secret:k",
            "--user",
            "1000:2000",
            "--ttl",
            "1h",
            "--image",
            "img",
            "--",
            "true",
        ],
    );
    // Audit lines are written in order: once this job's is there, any earlier one would be.
    srv.assert_audited(r#""action":"job.create""#);
    assert_eq!(
        srv.audit_log().matches(r#""action":"job.create""#).count(),
        1,
        "bad input created no job"
    );
    let spec = &docs[1]["spec"];
    assert_eq!(spec["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(spec["initContainers"][0]["name"], "neuro-install");
    assert_eq!(spec["securityContext"]["fsGroup"], 2000);
    assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 0o440);
    let job = &spec["containers"][0];
    assert_eq!(job["securityContext"]["runAsUser"], 1000);
    assert_eq!(job["securityContext"]["runAsGroup"], 2000);
    let cmd = strs(&job["command"]);
    assert_eq!(cmd[cmd.len() - 3..], ["--env", "X=secret:k", "--"]);
    assert_eq!(job["args"], serde_json::json!(["true"]));

    // With a volume: secretfs owns the files for that user; the file is a subPath mount.
    let docs = manifest(
        &alice,
        &[
            "--volume",
            "secret:k:/etc/k",
            "--volume",
            "secret:k:/etc/k2",
            "--user",
            "7",
            "--image",
            "img",
            "--",
            "true",
        ],
    );
    let spec = &docs[1]["spec"];
    let fs = &spec["initContainers"][1];
    assert_eq!(fs["restartPolicy"], "Always");
    let args = strs(&fs["args"]);
    for pair in [
        ["--uid", "7"],
        ["--gid", "7"],
        ["--volume", "secret:k:/etc/k2"],
    ] {
        assert!(
            args.windows(2).any(|w| w == pair),
            "{args:?} lacks {pair:?}"
        );
    }
    let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    let sub: Vec<(&str, &str)> = mounts
        .iter()
        .filter_map(|m| Some((m["mountPath"].as_str()?, m["subPath"].as_str()?)))
        .collect();
    assert_eq!(sub, [("/etc/k", "fs/0"), ("/etc/k2", "fs/1")]);

    alice.fails(
        &[
            "job",
            "manifest",
            "--volume",
            "secret:nope:/x",
            "--env",
            "A=secret:nope2",
            "--image",
            "i",
            "--",
            "true",
        ],
        72,
        "Missing secrets: 'nope', 'nope2'",
    );
    // The manifest cannot be written: the job it would have run is deleted again.
    alice.fails(
        &[
            "job",
            "manifest",
            "--output",
            "/nonexistent/job.yaml",
            "--volume",
            "secret:k:/x",
            "--image",
            "i",
            "--",
            "true",
        ],
        1,
        "writing '/nonexistent/job.yaml'",
    );
    srv.assert_audited(r#""action":"job.delete","outcome":"ok""#);
    crate::harness::bad_value(&alice, &["job", "rm", "../x"], "invalid job id '../x'");
    alice.fails(
        &["job", "rm", "job-0000000000000000"],
        72,
        "job 'job-0000000000000000' not found",
    );
    // The service checks the shape too, whoever calls it.
    let r = srv.delete(&t[0], "/api/v1/jobs/job-XYZ");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("invalid job id 'job-XYZ'"), "{}", r.body);
}

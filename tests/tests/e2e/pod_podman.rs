//! `neuro job manifest` run for real: the images built by container/build.sh, the pod played by
//! podman (see podman.rs for why not `kube play`), the secrets read inside the job container.
//! Needs root, /dev/fuse and podman (scripts/setup.sh installs it); fails, never skips,
//! without them.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::podman::{Images, Pod, podman, podman_ok};
use crate::harness::tier::{require_fuse, require_podman};
use crate::harness::{Neuro, Out, SEED_JOB_MAPPINGS, Server, bin, yaml_docs};

const VALUE: &str = "p@$$w0rd 123!";
const ROTATED: &str = "n3w-p@ss";

fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The secretfs and secret-inject images from this build's binaries, and a job image that
/// holds busybox and a file of its own in the directory the secret goes to.
fn build_images(ctx: &Path) -> (Images, String, String, String) {
    let _held = crate::harness::podman::image_lock();
    let tag = unique("e2e");
    let bin_dir = bin("secretfs").parent().unwrap().to_owned();
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../container/build.sh"))
        .args(["--bin-dir", bin_dir.to_str().unwrap(), "--tag", &tag])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "container/build.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fs = format!("localhost/neuro-secretfs:{tag}");
    let inject = format!("localhost/neuro-secret-inject:{tag}");
    let job = format!("localhost/neuro-e2e-job:{tag}");
    let images = Images(vec![fs.clone(), inject.clone(), job.clone()]);
    std::fs::create_dir_all(ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static (scripts/setup.sh)");
    std::fs::write(ctx.join("other.txt"), "the image's own file\n").unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         COPY other.txt /var/secrets/other.txt\n",
    )
    .unwrap();
    // A label of its own: two tests' cached builds would otherwise be one image, and the
    // first test's `rmi -f` would remove the other's.
    let label = format!("neuro-e2e-tag={tag}");
    podman_ok(&[
        "build",
        "--quiet",
        "--label",
        &label,
        "--tag",
        &job,
        ctx.to_str().unwrap(),
    ]);
    (images, fs, inject, job)
}

/// A service with alice and one secret, and the images of this build.
struct Setup {
    srv: Server,
    alice: Neuro,
    _images: Images,
    flags: Vec<String>,
    job_image: String,
}

impl Setup {
    fn new(key: &str) -> Self {
        require_fuse();
        require_podman();
        let (srv, alice) = Server::start_with_alice_owning(key, VALUE);
        let (images, fs, inject, job_image) = build_images(&srv.dir.path().join("ctx"));
        let flags = vec![
            "--image".into(),
            job_image.clone(),
            "--secretfs-image".into(),
            fs,
            "--inject-image".into(),
            inject,
            "--service-url".into(),
            srv.url.clone(),
        ];
        Setup {
            srv,
            alice,
            _images: images,
            flags,
            job_image,
        }
    }

    /// `neuro job manifest` with this setup's images and URL; its output and documents.
    fn manifest(&self, mappings: &[&str], command: &[&str]) -> (Out, Vec<Value>) {
        let mut args = vec!["job", "manifest"];
        args.extend(mappings);
        args.extend(self.flags.iter().map(String::as_str));
        args.push("--");
        args.extend(command);
        let o = self.alice.run_full(&args, b"", true);
        assert_eq!(o.code, 0, "neuro job manifest: {}", o.stderr);
        let docs = yaml_docs(&o.stdout_str());
        (o, docs)
    }
}

/// What the job container checks about itself.
const JOB_SCRIPT: &str = r#"
stat -c 'file mode=%a uid=%u' /var/secrets/secret-password.txt
echo "file=$(cat /var/secrets/secret-password.txt)"
echo "env=$mypass"
echo "plain=$PLAIN"
echo "dir=$(ls /var/secrets | tr '\n' ' ')"
echo "other=$(cat /var/secrets/other.txt)"
echo "token-var=${NEURO_TOKEN:-unset}"
echo "pid1=$(tr '\0' '\n' < /proc/1/cmdline | head -n 1)"
if (echo x > /var/secrets/secret-password.txt) 2>/dev/null; then echo write=allowed; else echo write=refused; fi
grep CapEff /proc/self/status
echo rotate-now
i=0
while [ "$(cat /var/secrets/secret-password.txt)" = "$mypass" ] && [ $i -lt 300 ]; do
  sleep 0.1; i=$((i+1))
done
echo "rotated=$(cat /var/secrets/secret-password.txt)"
exit 3
"#;

/// What the second container, which has no mapping, can find.
const OBSERVER_SCRIPT: &str = r#"
test -e /var/secrets/secret-password.txt && echo file=present || echo file=absent
echo "dir=$(ls /var/secrets | tr '\n' ' ')"
test -e /neuro && echo neuro=present || echo neuro=absent
echo "env=${mypass:-unset}"
echo "hits=$(find / -xdev -type f -exec grep -lF "$NEEDLE" {} + 2>/dev/null | wc -l)"
"#;

#[test]
#[cfg_attr(not(feature = "podman"), ignore = "needs podman: feature podman")]
fn the_job_manifest_runs_under_podman_and_only_the_job_reads_its_secrets() {
    let st = Setup::new("secret-password");
    let (srv, alice, job_image) = (&st.srv, &st.alice, &st.job_image);
    let (o, docs) = st.manifest(&SEED_JOB_MAPPINGS, &["sh", "-c", JOB_SCRIPT]);
    let text = o.stdout_str();
    assert!(!text.contains(VALUE), "no secret value in the manifest");
    assert_eq!(docs.len(), 2, "a Secret and a Pod: {text}");
    let (secret, pod) = (&docs[0], &docs[1]);
    assert_eq!(secret["kind"], "Secret");
    let token = secret["stringData"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("nst."));
    assert!(
        !serde_json::to_string(pod).unwrap().contains(&token),
        "the token is not in the pod spec"
    );
    let job_id = pod["metadata"]["labels"]["neuro.io/job"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(o.stderr.contains(&format!("neuro job rm {job_id}")));

    let mut p = Pod::create(pod, &[secret], &srv.dir.path().join("node"));
    p.start_init().unwrap();
    // The sidecar's FUSE mount came out to the node through Bidirectional propagation.
    let mounts = p.node_mounts();
    assert!(
        mounts.iter().any(|m| m.contains(" - fuse secretfs ")),
        "{mounts:?}"
    );

    let started = p.start_containers();
    assert_eq!(started, [format!("{}-job", p.name)]);
    // Rotation reaches the job's file through the subPath mount of the FUSE file.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.logs(&started[0]).contains("rotate-now") {
        assert!(Instant::now() < deadline, "job: {}", p.logs(&started[0]));
        std::thread::sleep(Duration::from_millis(50));
    }
    alice.ok(&["secret", "add", "secret-password", ROTATED]);
    let (code, logs) = p.wait(&started[0], Duration::from_secs(60));
    assert_eq!(code, 3, "the job's exit code passes through: {logs}");
    let lines: Vec<&str> = logs.lines().collect();
    for want in [
        "file mode=400 uid=0",
        &format!("file={VALUE}"),
        &format!("env={VALUE}"),
        "plain=plain value",
        "dir=other.txt secret-password.txt ",
        "other=the image's own file",
        "token-var=unset",
        // secret-inject stays as the container's init
        "pid1=/neuro/bin/secret-inject",
        "write=refused",
        "CapEff:\t0000000000000000",
        &format!("rotated={ROTATED}"),
    ] {
        assert!(lines.contains(&want), "job output lacks {want:?}:\n{logs}");
    }

    // A second container of the same pod, without the mapping, finds nothing.
    let observer = format!("{}-observer", p.name);
    let o = podman()
        .args(["run", "--pod", &p.name, "--name", &observer])
        .args(["-e", &format!("NEEDLE={VALUE}")])
        .args(["--entrypoint", "sh", job_image, "-c", OBSERVER_SCRIPT])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "observer: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "file=absent",
        "dir=other.txt ",
        "neuro=absent",
        "env=unset",
        "hits=0",
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "observer output lacks {want:?}:\n{out}"
        );
    }

    // The sidecar audited the job's open, without the value.
    let fs_logs = p.logs(&p.sidecars[0]);
    assert!(
        fs_logs.contains(r#""event":"open","path":"/var/secrets/secret-password.txt""#),
        "{fs_logs}"
    );
    assert!(!fs_logs.contains(VALUE) && !fs_logs.contains(ROTATED) && !fs_logs.contains(&token));

    // The pod ends: SIGTERM to the sidecar unmounts everything, on the node too.
    assert_eq!(p.stop_sidecars(), vec![0]);
    assert_eq!(
        p.node_mounts().len(),
        2,
        "only the two tmpfs volumes remain: {:?}",
        p.node_mounts()
    );
    drop(p);

    // `neuro job rm` revokes the token.
    let body = r#"{"uris":["secret:secret-password"]}"#;
    let before = srv.post(&token, "/api/v1/secrets/resolve", body);
    assert_eq!(before.status, 200);
    alice.ok(&["job", "rm", &job_id]);
    let after = srv.post(&token, "/api/v1/secrets/resolve", body);
    assert_eq!(after.status, 401, "{}", after.body);
}

#[test]
#[cfg_attr(not(feature = "podman"), ignore = "needs podman: feature podman")]
fn a_pod_whose_secret_is_gone_never_starts_the_job() {
    let st = Setup::new("gone");
    let (_, docs) = st.manifest(
        &["--volume", "secret:gone:/var/secrets/gone.txt"],
        &["true"],
    );
    // Deleted after the manifest was made, before the pod starts: the sidecar fails closed.
    st.alice.ok(&["secret", "rm", "gone"]);
    let mut p = Pod::create(&docs[1], &[&docs[0]], &st.srv.dir.path().join("node"));
    let err = p.start_init().unwrap_err();
    assert!(
        err.contains("exited with 72")
            && err.contains("/var/secrets/gone.txt")
            && err.contains("not found"),
        "{err}"
    );
    assert!(
        !p.node_mounts().iter().any(|m| m.contains(" - fuse ")),
        "nothing mounted: {:?}",
        p.node_mounts()
    );
}

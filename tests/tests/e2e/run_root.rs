//! `neuro run` on this machine: needs root and /dev/fuse (fails, never skips, without them).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::tier::require_fuse;
use crate::harness::{SEED_JOB_MAPPINGS, Server, bin};

const SEED: &str = "p@$$w0rd123";

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn the_seed_job_sees_its_file_and_variable_and_the_host_does_not() {
    require_fuse();
    let (srv, alice) = Server::start_with_alice_owning("secret-password", SEED);
    let host_had = Path::new("/var/secrets").exists();
    let mut args = vec!["run"];
    args.extend(SEED_JOB_MAPPINGS);
    args.extend([
        "--",
        "sh",
        "-c",
        "cat /var/secrets/secret-password.txt; echo; echo \"$mypass\"; echo \"$PLAIN\"; \
         test -z \"$NEURO_TOKEN\" && echo no-token; exit 5",
    ]);
    let o = alice.run_full(&args, b"", true);
    assert_eq!(o.code, 5, "the command's exit status: {}", o.stderr);
    assert_eq!(
        o.stdout_str(),
        format!("{SEED}\n{SEED}\nplain value\nno-token\n")
    );
    assert!(!o.stderr.contains(SEED));
    assert_eq!(
        Path::new("/var/secrets").exists(),
        host_had,
        "nothing created on the host"
    );
    // the job token was revoked when the job ended
    srv.assert_audited(r#""actor":"user:alice","action":"job.delete","outcome":"ok""#);
    assert!(srv.audit_log().contains(r#""action":"secret.read","uri":"secret://neuro-compute/alice/secret-password","outcome":"ok""#));

    // A missing secret stops it before the command starts.
    let marker = srv.dir.path().join("started");
    let touch = format!("touch {}", marker.display());
    alice.fails(
        &[
            "run",
            "--env",
            "a:secret:nope",
            "--volume",
            "secret:other:/tmp/x",
            "--",
            "sh",
            "-c",
            &touch,
        ],
        72,
        "Missing secrets: 'nope', 'other'",
    );
    alice.fails(
        &["run", "--volume", "secret:k:/x:ro", "--", "true"],
        65,
        "suffixes are not supported",
    );
    assert!(!marker.exists());
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn sigterm_stops_the_job_and_cleans_up() {
    require_fuse();
    let (srv, alice) = Server::start_with_alice_owning("k", "v");
    // log and ready live apart from the target's directory: the job's writes under an
    // overlaid directory stay in its own namespace.
    let out = tempfile::tempdir().unwrap();
    let (log, ready) = (out.path().join("log"), out.path().join("ready"));
    let target = srv.dir.path().join("secrets/k.txt");
    let script = format!(
        "trap 'echo TERM >> {l}; exit 0' TERM; cat {f} > {r}; while :; do sleep 0.05; done",
        l = log.display(),
        f = target.display(),
        r = ready.display()
    );
    let child = Command::new(bin("neuro"))
        .args([
            "run",
            "--volume",
            &format!("secret:k:{}", target.display()),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("XDG_CONFIG_HOME", &alice.config_home)
        .env_remove("NEURO_URL")
        .env_remove("NEURO_TOKEN")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(Some(child));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read(&ready).unwrap_or_default() != b"v" {
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !target.exists(),
        "the file is not visible on the host while the job runs"
    );
    let mut c = child.0.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = c.wait().unwrap();
    assert_eq!(
        st.code(),
        Some(0),
        "the job's own exit status after its TERM trap"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "TERM\n");
    assert!(
        !target.exists() && !srv.dir.path().join("secrets").exists(),
        "nothing left on the host"
    );
    srv.assert_audited(r#""action":"job.delete","outcome":"ok""#);
    // this job's working directory is gone (its id is in the audit log of its reads)
    let audit = srv.audit_log();
    let id = audit
        .split(r#""actor":"job:"#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the job read its secret")
        .to_owned();
    assert!(
        !std::env::temp_dir()
            .join(format!("neuro-run-{id}"))
            .exists()
    );
}

#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn missing_paths_beside_other_mounts_and_beside_the_run_directory() {
    require_fuse();
    let (srv, alice) = Server::start_with_alice_owning("k", "v");

    // A directory with a mount below it (as /var has while a container engine runs): the
    // overlay that creates the missing path keeps that mount visible to the job.
    let base = srv.dir.path().join("base");
    std::fs::create_dir_all(base.join("sub")).unwrap();
    let b = base.display();
    let job = format!("cat {b}/new/secret.txt; echo; cat {b}/sub/f");
    let script = format!(
        "mount -t tmpfs t {b}/sub && echo hello > {b}/sub/f && exec \"$0\" run \
         --volume secret:k:{b}/new/secret.txt -- sh -c '{job}'"
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(bin("neuro"))
        .env("XDG_CONFIG_HOME", &alice.config_home)
        .env_remove("NEURO_URL")
        .env_remove("NEURO_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "v\nhello\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!base.join("new").exists());

    // A missing directory right in the temporary directory, where neuro run keeps its own
    // files: the overlay covers those too, and the job still starts.
    let fresh = std::env::temp_dir().join(format!("neuro-e2e-{}", std::process::id()));
    let path = fresh.join("secret.txt");
    let o = alice.run_full(
        &[
            "run",
            "--volume",
            &format!("secret:k:{}", path.display()),
            "--",
            "cat",
            path.to_str().unwrap(),
        ],
        b"",
        true,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout_str(), "v");
    assert!(!fresh.exists(), "nothing left on the host");
}

/// A secretfs that fails after `--private` has laid an overlay on the temporary directory
/// (which hides neuro's run directory inside secretfs's namespace): neuro still gets its
/// report, with the class and the path, through the `--error-file` secretfs opened before
/// mounting anything.
#[test]
#[cfg_attr(not(feature = "fuse"), ignore = "needs root and FUSE: feature fuse")]
fn a_failed_secretfs_reports_through_its_error_file_even_under_an_overlay() {
    require_fuse();
    let (srv, alice) = Server::start_with_alice_owning("k", "v");
    let fresh = std::env::temp_dir().join(format!("neuro-e2e-fail-{}", std::process::id()));
    let marker = srv.dir.path().join("started");
    let o = alice.fails(
        &[
            "run",
            "--volume",
            &format!("secret:k:{}", fresh.join("x").display()),
            "--volume",
            "secret:k:/proc/neuro-e2e-x",
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
        65,
        "secretfs could not serve the files: /proc/neuro-e2e-x: ",
    );
    assert!(
        o.stderr
            .contains("secretfs mounts nothing over /proc, /sys or /dev"),
        "{}",
        o.stderr
    );
    assert!(!marker.exists(), "the job did not start");
    assert!(!fresh.exists(), "nothing left on the host");
}

/// Stops `neuro run` (and so its job) if the test fails before it does.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_millis(500));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! The embedded store on a full disk (root: a small tmpfs in a private mount namespace): a
//! write fails, `health` says why, and once space is freed the next write succeeds without a
//! restart, with every write acknowledged before still there.

// A test fails by panicking; unwrap is its assertion.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use secrets_server::store::embedded::EmbeddedStore;
use secrets_server::store::{Store, StoreError, Table};

const DIR_VAR: &str = "SECRETD_STORE_FULL_DIR";
const INNER: &str = "store_on_a_full_tmpfs_inner";

/// Runs the inner test in `unshare -m` with a 4 MiB tmpfs on a fresh directory: the mount
/// lives only in that namespace, so it is gone when the inner test ends, however it ends.
#[test]
#[cfg_attr(not(feature = "root"), ignore = "needs root: feature root")]
fn store_recovers_after_the_disk_was_full_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (mount in a private mount namespace); euid {}",
        nix::unistd::geteuid()
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=4m,mode=700 secretd-test "$0" && exec "$1" "$2" --exact --ignored --nocapture --test-threads=1"#)
        .arg(dir.path())
        .arg(&exe)
        .arg(INNER)
        .env(DIR_VAR, dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "inner test failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("test {INNER} ... ok")),
        "the inner test did not run: {stdout}\n{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the tmpfs leaked onto the host directory"
    );
}

fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

#[tokio::test]
#[ignore = "run by store_recovers_after_the_disk_was_full_root inside its private tmpfs"]
async fn store_on_a_full_tmpfs_inner() {
    let dir = std::path::PathBuf::from(std::env::var_os(DIR_VAR).expect(DIR_VAR));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(&format!(" {} ", dir.display())) && mounts.contains("secretd-test"),
        "{} is not the test's tmpfs",
        dir.display()
    );
    let s = EmbeddedStore::open(&dir.join("secrets.redb")).unwrap();
    assert_eq!(s.health().await, Ok(()));

    // Acknowledged before the fault.
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("alice/k{i}");
        let value = vec![i as u8; 1000];
        let v = s.put_secret(&key, &value).await.unwrap();
        acked.push((key, v, value));
    }
    s.put(Table::Users, "alice", b"record").await.unwrap();
    let rev_before = s.revision().await.unwrap();

    let filler = dir.join("filler");
    fill(&filler);
    let big = vec![7u8; 256 * 1024];
    let mut failure = None;
    for i in 0..64 {
        match s.put_secret(&format!("alice/big{i}"), &big).await {
            Ok(v) => acked.push((format!("alice/big{i}"), v, big.clone())),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("no write failed on a full disk");
    assert!(matches!(failure, StoreError::Io(_)), "{failure:?}");
    let why = s
        .health()
        .await
        .expect_err("healthy right after a failed write");
    assert!(why.contains("No space left on device"), "{why}");
    // Reads still answer while the disk is full.
    assert_eq!(
        s.get(Table::Users, "alice").await.unwrap(),
        Some(b"record".to_vec())
    );

    std::fs::remove_file(&filler).unwrap();
    // No restart: the next write goes through.
    let v = s
        .put_secret("alice/after", b"after the fault")
        .await
        .unwrap();
    assert!(v > rev_before, "{v} <= {rev_before}");
    assert_eq!(s.health().await, Ok(()));
    for (key, version, value) in &acked {
        let got = s.get_secret(key).await.unwrap().expect(key);
        assert_eq!((got.version, &got.sealed), (*version, value), "{key}");
    }
    assert_eq!(
        s.get_secret("alice/after").await.unwrap().unwrap().sealed,
        b"after the fault"
    );

    // health() finds out by itself that the disk takes writes again, without a client write.
    fill(&filler);
    let mut failed = false;
    for i in 0..64 {
        if s.put_secret(&format!("alice/again{i}"), &big)
            .await
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "no write failed on the second full disk");
    assert!(s.health().await.is_err());
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(s.health().await, Ok(()));
}

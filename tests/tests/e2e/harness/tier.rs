//! What each test tier needs, checked at the start of its tests. A tier's tests are ignored
//! unless its cargo feature of secrets-tests is on (`root`, `fuse`, `etcd`, `podman`,
//! `browser`; `all` for every one, as scripts/test.sh runs them): a run that switches a tier on
//! has promised what the tier needs, so each check fails, never skips, when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Fails unless this runs as root; `why` says what needs it.
#[track_caller]
pub fn require_root(why: &str) {
    let euid = nix::unistd::geteuid();
    assert!(euid.is_root(), "this test needs root ({why}); euid {euid}");
}

/// Fails unless this runs as root with /dev/fuse: secretfs mounts, each in a private mount
/// namespace.
#[track_caller]
pub fn require_fuse() {
    require_root("secretfs mounts in a private mount namespace");
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (secretfs mounts)"
    );
}

/// Fails unless etcd and etcdctl run (Debian etcd-server and etcd-client; scripts/setup.sh
/// installs them).
#[track_caller]
pub fn require_etcd() {
    for (tool, version) in [("etcd", "--version"), ("etcdctl", "version")] {
        let ok = Command::new(tool)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "this test needs {tool}: run scripts/setup.sh");
    }
}

/// Fails unless podman runs (scripts/setup.sh installs it).
#[track_caller]
pub fn require_podman() {
    let ok = super::podman::podman()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "this test needs podman: run scripts/setup.sh");
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fails unless Chromium, node and playwright-core are installed.
#[track_caller]
pub fn require_browser() {
    let setup = "run scripts/setup.sh, which installs chromium, nodejs, npm and playwright-core";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {setup}"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: {setup}"
    );
    let pw = repo().join("tests/console/node_modules/playwright-core/package.json");
    assert!(pw.exists(), "{} is missing: {setup}", pw.display());
}

//! `neuro-docs` as built. Being an integration test of this crate, it also makes a plain
//! `cargo test` build the `neuro-docs` binary, which the end-to-end tests in `tests/` run.

use std::process::Command;

/// Runs `neuro-docs ARG`, which must succeed; its stdout.
fn run(arg: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_neuro-docs");
    let o = Command::new(bin).arg(arg).output().expect("run neuro-docs");
    assert!(o.status.success(), "neuro-docs {arg}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_built_binary_prints_its_version_and_help() {
    let version = concat!("neuro-docs ", env!("CARGO_PKG_VERSION"), "\n");
    assert_eq!(run("--version"), version);
    assert!(run("--help").contains("Usage: neuro-docs"));
}

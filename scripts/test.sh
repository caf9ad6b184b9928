#!/usr/bin/env bash
# The whole test suite: setup, one debug build of every binary, unit and end-to-end tests with
# every test tier on, then formatting and lints. CI runs exactly this (.ci/run). A plain
# `cargo test` runs only what needs no root, FUSE, etcd, podman or browser (README, "Tests and
# benchmarks"); the tier features here switch the rest on, and a tier whose need is unmet
# fails, never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every tier: root, fuse, etcd, podman and browser end-to-end tests, and the server's root test.
tiers=secrets-tests/all,secrets-server/root

scripts/setup.sh
cargo build --locked --workspace --bins --features "$tiers"
cargo test --locked --workspace --features "$tiers"
# The end-to-end suite again with every secretd on etcd (one member shared by the tests, a key
# prefix per server); the etcd tests that start their own
# members (etcd_cluster, etcd_faults, etcd_tls) ran above.
NEURO_TEST_STORE=etcd cargo test --locked -p secrets-tests --test e2e --features all -- --skip etcd_cluster:: --skip etcd_faults:: --skip etcd_tls::
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --features "$tiers" -- -D warnings

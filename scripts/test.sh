#!/usr/bin/env bash
# The whole test suite: setup, one debug build of every binary, unit and end-to-end tests,
# then formatting and lints. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --workspace --bins
cargo test --locked --workspace
# The end-to-end suite again with every secretd on etcd (one member shared by the tests, a key
# prefix per server); the etcd tests that start their own
# members (etcd_cluster, etcd_faults, etcd_tls) ran above.
NEURO_TEST_STORE=etcd cargo test --locked -p secrets-tests --test e2e -- --skip etcd_cluster:: --skip etcd_faults:: --skip etcd_tls::
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

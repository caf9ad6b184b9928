#!/usr/bin/env bash
# The whole test suite: setup, one debug build of every binary, unit and end-to-end tests,
# then formatting and lints. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --workspace --bins
cargo test --locked --workspace
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

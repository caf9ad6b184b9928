#!/usr/bin/env bash
# The long run of the property tests of every parser that takes outside input (keys, URIs,
# --env/--volume specs, API bodies, the watch query, the token format): CASES generated cases
# per property (default 100000), release build. The test suite runs the same properties with
# 256 cases each.
#   bench/fuzz.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${1:-100000}"
time cargo test --release --locked -p secrets-core --test props
time cargo test --release --locked -p secrets-server --test props_api

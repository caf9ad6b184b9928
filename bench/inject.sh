#!/usr/bin/env bash
# secret-inject: wall time of `secret-inject` with 10 mappings exec'ing `true`, against a plain
# `true`, in the same run, secretd on loopback. Goal (issue 4): at most 3 ms added to the median.
# Usage: bench/inject.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
cargo build --release --locked --bin secretd --bin neuro --bin secret-inject --bin runtimes >&2
source bench/common.sh
start_secretd 18483
envs=()
for i in $(seq 0 9); do
  NEURO_TOKEN=$token $R/neuro secret add "k$i" "value-$i-$(head -c 24 /dev/urandom | base64)"
  envs+=(--env "V$i=secret:k$i")
done
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F); $runs runs each, interleaved"
NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- \
  $R/secret-inject --url http://127.0.0.1:18483 "${envs[@]}" -- /bin/true

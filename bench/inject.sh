#!/usr/bin/env bash
# secret-inject: wall time of `secret-inject` with 10 mappings exec'ing `true`, against a plain
# `true`, in the same run, secretd on loopback. Goal (issue 4): at most 3 ms added to the median.
# Usage: bench/inject.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
cargo build --release --locked --bin secretd --bin neuro --bin secret-inject --bin runtimes >&2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
R="$PWD/target/release"
$R/secretd --data-dir "$work/data" --listen 127.0.0.1:18483 > "$work/secretd.out" 2> "$work/secretd.err" &
pids+=($!)
for _ in $(seq 50); do [[ -s "$work/secretd.out" ]] && break; sleep 0.1; done
export XDG_CONFIG_HOME="$work/config"
$R/neuro login --url http://127.0.0.1:18483 --token "$(cat "$work/data/admin.token")" 2>/dev/null
token=$($R/neuro admin user add bench)
envs=()
for i in $(seq 0 9); do
  NEURO_TOKEN=$token $R/neuro secret add "k$i" "value-$i-$(head -c 24 /dev/urandom | base64)"
  envs+=(--env "V$i=secret:k$i")
done
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F); $runs runs each, interleaved"
NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- \
  $R/secret-inject --url http://127.0.0.1:18483 "${envs[@]}" -- /bin/true

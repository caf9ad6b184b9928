#!/usr/bin/env bash
# secret-inject: wall time of `secret-inject` with 10 mappings exec'ing /bin/true, against a
# plain /bin/true, in the same run (interleaved), secretd on loopback; then with no mapping
# (start-up alone). Goal (issue 13): the added median at most 1.0x the plain exec's median.
# Prints the binary's size and the machine's load, and repeats the comparison ROUNDS times.
# With BASE_INJECT=PATH (another build of secret-inject, e.g. main's), each round measures it
# too, against the same /bin/true baseline.
# Each binary measured is first installed with `--install` (as a pod's init container does):
# a file the linker just wrote sits in the page cache differently from a copied one (here,
# ~15 more page faults and ~0.05 ms a start), which would skew a comparison.
# Usage: [BASE_INJECT=PATH] bench/inject.sh [RUNS [ROUNDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
rounds=${2:-3}
cargo build --release --locked --bin secretd --bin neuro --bin secret-inject --bin runtimes >&2
source bench/common.sh
start_secretd 18483
envs=()
for i in $(seq 0 9); do
  NEURO_TOKEN=$token $R/neuro secret add "k$i" "value-$i-$(head -c 24 /dev/urandom | base64)"
  envs+=(--env "V$i=secret:k$i")
done
"$R/secret-inject" --install "$work/secret-inject"
inject=$work/secret-inject
if [[ -n "${BASE_INJECT:-}" ]]; then
  "$BASE_INJECT" --install "$work/base-inject"
  BASE_INJECT=$work/base-inject
fi
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F); $runs runs each, interleaved; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "secret-inject: $(stat -c %s "$inject") bytes"
for r in $(seq "$rounds"); do
  echo "round $r, 10 mappings:"
  NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- \
    "$inject" --url http://127.0.0.1:18483 "${envs[@]}" -- /bin/true
  if [[ -n "${BASE_INJECT:-}" ]]; then
    NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- \
      "$BASE_INJECT" --url http://127.0.0.1:18483 "${envs[@]}" -- /bin/true
  fi
done
echo "no mapping (start-up alone):"
NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- "$inject" --url http://127.0.0.1:18483 -- /bin/true
if [[ -n "${BASE_INJECT:-}" ]]; then
  NEURO_TOKEN=$token $R/runtimes "$runs" /bin/true -- "$BASE_INJECT" --url http://127.0.0.1:18483 -- /bin/true
fi
# The floor of any exec wrapper: a static-PIE C program that only execs the job (no request,
# no argument parsing), against the same /bin/true.
if command -v cc > /dev/null; then
  printf '#include <unistd.h>\nint main(int c, char **v) { execv(v[1], v + 1); return 127; }\n' > "$work/exec.c"
  cc -O2 -static-pie -o "$work/exec-only" "$work/exec.c"
  echo "floor (a static C wrapper that only execs):"
  $R/runtimes "$runs" /bin/true -- "$work/exec-only" /bin/true
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

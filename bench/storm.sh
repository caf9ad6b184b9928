#!/usr/bin/env bash
# Start storm: COUNT secret-inject processes started at once (at most CONCURRENCY at a time),
# each its own job (its own job token) resolving 10 mappings against one secretd and exec'ing
# /bin/true; against COUNT plain /bin/true starts, same run, alternated REPEATS times. Reports
# total time, p50/p99/max per start and secretd's CPU time (user+system) during each storm.
# Every start must exit 0 and every audit line of a storm must say "ok", or the script fails.
# With BASE_INJECT=PATH (another build of secret-inject), each repeat storms with it too.
# Usage: [BASE_INJECT=PATH] bench/storm.sh [COUNT [CONCURRENCY [REPEATS]]]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-500}
conc=${2:-64}
repeats=${3:-3}
cargo build --release --locked --bin secretd --bin neuro --bin secret-inject --bin storm >&2
source bench/common.sh
port=18484
start_secretd "$port"
secretd_pid=${pids[0]}
envs=()
spec='{"secret_env":{'
for i in $(seq 0 9); do
  NEURO_TOKEN=$token $R/neuro secret add "k$i" "value-$i-$(head -c 24 /dev/urandom | base64)"
  envs+=(--env "V$i=secret:k$i")
  spec+="\"V$i\":\"secret:k$i\""; [[ $i -lt 9 ]] && spec+=','
done
spec+='}}'
# One job per start, as a platform does: the job's token reads exactly its 10 URIs.
(umask 077; : > "$work/tokens")
NEURO_TOKEN=$token SPEC=$spec python3 - "http://127.0.0.1:$port" "$count" "$work/tokens" <<'PY'
import json, os, sys, urllib.request
url, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for _ in range(n):
        req = urllib.request.Request(url + "/api/v1/jobs", data=os.environ["SPEC"].encode(),
            headers={"Authorization": "Bearer " + os.environ["NEURO_TOKEN"],
                     "Content-Type": "application/json"})
        f.write(json.load(urllib.request.urlopen(req))["token"] + "\n")
PY
audit="$work/data/audit.log"
tck=$(getconf CLK_TCK)
cpu_ms() { awk -v t="$tck" '{print ($14 + $15) * 1000 / t}' "/proc/$secretd_pid/stat"; }
storm() { # LABEL CMD... -> one report line; fails on any failed start or audited failure
  local label=$1; shift
  local lines0 cpu0 out cpu1
  lines0=$(wc -l < "$audit")
  cpu0=$(cpu_ms)
  out=$($R/storm "$count" "$conc" --tokens "$work/tokens" -- "$@")
  cpu1=$(cpu_ms)
  local new bad
  new=$(tail -n +"$((lines0 + 1))" "$audit" | grep -c . || true)
  bad=$(tail -n +"$((lines0 + 1))" "$audit" | grep -vc '"outcome":"ok"' || true)
  if [[ $bad -ne 0 ]]; then
    echo "storm: $bad audit line(s) of $label are not ok:" >&2
    tail -n +"$((lines0 + 1))" "$audit" | grep -v '"outcome":"ok"' | head -5 >&2
    exit 1
  fi
  read -r total p50 p99 max <<<"$out"
  printf '%-14s %d starts, %d at a time: total %8.1f ms | per start p50 %7.3f ms p99 %7.3f ms max %7.3f ms | secretd CPU %6.0f ms | audit lines %d\n' \
    "$label" "$count" "$conc" "$total" "$p50" "$p99" "$max" "$(bc -l <<<"$cpu1 - $cpu0")" "$new"
}
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "secret-inject: $(stat -c %s "$R/secret-inject") bytes"
for _ in $(seq "$repeats"); do
  storm "/bin/true" /bin/true
  storm "secret-inject" $R/secret-inject --url "http://127.0.0.1:$port" "${envs[@]}" -- /bin/true
  if [[ -n "${BASE_INJECT:-}" ]]; then
    storm "base inject" "$BASE_INJECT" --url "http://127.0.0.1:$port" "${envs[@]}" -- /bin/true
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

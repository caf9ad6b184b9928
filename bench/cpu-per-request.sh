#!/usr/bin/env bash
# secretd's CPU time per request, this build against another (BASE, e.g. the last release's),
# for authorized 4 KiB reads (wrk, 32 connections) and 64-byte writes (16 connections, each
# write fsyncs), in alternating rounds of 5 s: the CPU a request costs the service, which
# other load on the machine disturbs much less than requests per second (this machine's
# hypervisor offers no instruction counter). Prints new/base per round.
#
# Needs: scripts/setup.sh --bench (wrk). Usage: bench/cpu-per-request.sh BASE_SECRETD [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench/cpu-per-request.sh BASE_SECRETD [ROUNDS]}
rounds=${2:-3}
cargo build --release --locked --bin secretd --bin neuro >&2
source bench/common.sh
start() { # BIN PORT DIR
  "$1" --data-dir "$3" --listen 127.0.0.1:$2 > "$3.out" 2> "$3.err" &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$3.out" ]] && break; sleep 0.1; done
  XDG_CONFIG_HOME="$3.cfg" "$R/neuro" login --url http://127.0.0.1:$2 --token "$(cat "$3/admin.token")" > /dev/null
  XDG_CONFIG_HOME="$3.cfg" "$R/neuro" admin user add bench > "$3.token"
}
start "$R/secretd" 18490 "$work/new"; pn=${pids[0]}; tn=$(cat "$work/new.token")
start "$OLD" 18491 "$work/old"; po=${pids[1]}; to=$(cat "$work/old.token")
head -c 4096 /dev/urandom > "$work/blob"
NEURO_URL=http://127.0.0.1:18490 NEURO_TOKEN=$tn "$R/neuro" secret add blob "@$work/blob"
NEURO_URL=http://127.0.0.1:18491 NEURO_TOKEN=$to "$R/neuro" secret add blob "@$work/blob"
value=$(head -c 48 /dev/urandom | base64 -w0)
printf 'wrk.method="POST"\nwrk.body=%s\nwrk.headers["Content-Type"]="application/json"\n' "'{\"key\":\"w\",\"value\":\"$value\"}'" > "$work/post.lua"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
measure() { # PID PORT TOKEN KIND
  local before after out n
  before=$(cpu $1)
  if [[ $4 == read ]]; then
    out=$(wrk -t2 -c32 -d5s -H "Authorization: Bearer $3" http://127.0.0.1:$2/api/v1/secrets/bench/blob)
  else
    out=$(wrk -t2 -c16 -d5s -s "$work/post.lua" -H "Authorization: Bearer $3" http://127.0.0.1:$2/api/v1/secrets)
  fi
  after=$(cpu $1)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  python3 -c "print(f'{($after-$before)*1e6/100/$n:.1f}')"
  [[ -n "$bad" ]] && echo "non-2xx: $bad" >&2 || true
}
echo "machine: $(nproc) cores; $(date -u +'%F %T'); load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  for kind in read write; do
    n=$(measure $pn 18490 "$tn" $kind); o=$(measure $po 18491 "$to" $kind)
    echo "round $r $kind: CPU per request new ${n} us, base ${o} us, new/base x$(python3 -c "print(f'{$n/$o:.2f}')")"
  done
done

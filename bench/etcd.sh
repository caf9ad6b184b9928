#!/usr/bin/env bash
# secretd on a 3-member etcd cluster against secretd on its embedded store, in one run on this
# machine (issue 11): authorized 4 KiB reads/s through one replica (wrk -t2 -c64; goal at
# least 0.8x the embedded rate), writes/s on both (16 writers), cross-replica propagation of
# a write to the other replica's watch (goal p99 under 100 ms), and the longest time without
# an acknowledged write when the etcd leader is killed.
#
# Needs: scripts/setup.sh --bench (wrk), etcd-server, etcd-client. Usage: bench/etcd.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}

cargo build --release --locked --bin secretd --bin neuro --bin replicas >&2
source bench/common.sh

# Three etcd members on loopback.
eps=127.0.0.1:18520,127.0.0.1:18521,127.0.0.1:18522
initial=m0=http://127.0.0.1:18530,m1=http://127.0.0.1:18531,m2=http://127.0.0.1:18532
declare -A member_pid
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:1852$i" --advertise-client-urls "http://127.0.0.1:1852$i" \
    --listen-peer-urls "http://127.0.0.1:1853$i" --initial-advertise-peer-urls "http://127.0.0.1:1853$i" \
    --initial-cluster "$initial" --initial-cluster-state new --logger zap --log-level error \
    > "$work/etcd$i.log" 2>&1 &
  pids+=($!)
  member_pid[$i]=$!
done
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

leader() { # the index of the leader member
  ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(s["Endpoint"][-1])'
}

# The embedded baseline.
start_secretd 18500
embedded_token=$token
head -c 4096 /dev/urandom > "$work/blob"
NEURO_TOKEN=$embedded_token "$R/neuro" --url http://127.0.0.1:18500 secret add blob "@$work/blob"

# Two replicas on etcd; B has A's master key.
replica() { # NAME PORT [ARGS...]
  local name=$1 port=$2
  shift 2
  "$R/secretd" --data-dir "$work/$name" --listen "127.0.0.1:$port" --store "etcd://$eps/bench" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do [[ -s "$work/$name.out" ]] && break; sleep 0.1; done
}
replica a 18501
replica b 18502 --master-key "$work/a/master.key"
etcd_token=$(NEURO_TOKEN=$(cat "$work/a/admin.token") "$R/neuro" --url http://127.0.0.1:18501 admin user add bench)
NEURO_TOKEN=$etcd_token "$R/neuro" --url http://127.0.0.1:18502 secret add blob "@$work/blob"

curl -fsS -o /dev/null -H "Authorization: Bearer $embedded_token" http://127.0.0.1:18500/api/v1/secrets/bench/blob
curl -fsS -o /dev/null -H "Authorization: Bearer $etcd_token" http://127.0.0.1:18501/api/v1/secrets/bench/blob
read -r e_rps e_p99 < <(wrk_run 2 64 "$secs" http://127.0.0.1:18500/api/v1/secrets/bench/blob "$embedded_token")
read -r d_rps d_p99 < <(wrk_run 2 64 "$secs" http://127.0.0.1:18501/api/v1/secrets/bench/blob "$etcd_token")

wsecs=$(( secs < 5 ? secs : 5 ))
e_writes=$(NEURO_TOKEN=$embedded_token "$R/replicas" writes http://127.0.0.1:18500 "$wsecs" 16)
d_writes=$(NEURO_TOKEN=$etcd_token "$R/replicas" writes http://127.0.0.1:18501 "$wsecs" 16)
propagation=$(NEURO_TOKEN=$etcd_token "$R/replicas" propagation http://127.0.0.1:18501 http://127.0.0.1:18502 300)

# Kill the leader in the middle of a stream of writes through A (a write every 10 ms).
NEURO_TOKEN=$etcd_token "$R/replicas" gap http://127.0.0.1:18501 10 > "$work/gap" &
gap_pid=$!
sleep 3
l=$(leader)
kill -9 "${member_pid[$l]}"
wait "$gap_pid"

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F); etcd $(etcd --version | awk 'NR==1 {print $3}')"
printf 'embedded: 4 KiB reads %8.0f req/s  p99 %6.2f ms;  %s\n' "$e_rps" "$e_p99" "$e_writes"
printf 'etcd (3 members, via replica A): 4 KiB reads %8.0f req/s  p99 %6.2f ms;  %s\n' "$d_rps" "$d_p99" "$d_writes"
awk -v d="$d_rps" -v e="$e_rps" 'BEGIN { r = d / e; printf "reads etcd/embedded: %.2f (goal >= 0.80: %s)\n", r, (r >= 0.8 ? "met" : "NOT met") }'
echo "$propagation"
echo "leader m$l killed after 3 s: $(cat "$work/gap")"

#!/usr/bin/env bash
# secretfs: warm open+read+close of a 4 KiB secret against the same bytes on tmpfs, in the
# same mount namespace and run, 1 and 2 threads, for each cache mode; daemon round trips per
# open from the status area's counters; the first read after start; RSS with 100 secrets.
# Needs root and /dev/fuse. Usage: bench/secretfs.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
cargo build --release --locked --bin secretd --bin neuro --bin secretfs --bin openread >&2
source bench/common.sh
start_secretd 18482
(umask 077; echo "$token" > "$work/token")
head -c 4096 /dev/urandom > "$work/value"
vols=()
for i in $(seq 0 99); do
  NEURO_TOKEN=$token $R/neuro secret add "s$i" "@$work/value"
  vols+=(--volume "secret:s$i:$work/files/s$i")
done

sync_ops() { # status JSON -> lookups+getattrs+opens+reads+others (every synchronous request)
  python3 -c 'import json,sys; o=json.load(sys.stdin)["ops"]; print(o["lookup"]+o["getattr"]+o["open"]+o["read"]+o["other"])'
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%F)"
for mode in strict audited kernel; do
  rm -rf "$work/files" "$work/root" "$work/ready"; mkdir -p "$work/files"
  t0=$(date +%s%N)
  unshare -m --propagation private $R/secretfs --url http://127.0.0.1:18482 --token-file "$work/token" \
    --mount-root "$work/root" --ready-file "$work/ready" --audit-log /dev/null --cache "$mode" "${vols[@]}" \
    2> "$work/secretfs.err" &
  fs=$!
  pids+=("$fs")
  for _ in $(seq 500); do [[ -e "$work/ready" ]] && break; sleep 0.01; done
  [[ -e "$work/ready" ]] || { cat "$work/secretfs.err"; exit 1; }
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  ns() { nsenter -t "$fs" -m -- "$@"; }
  # first read after start (cold: nothing has touched s0 yet), timed inside one process
  first=$(( $(ns $R/openread "$work/files/s0" 1 1) / 1000 ))
  ns mkdir -p "$work/tmpfs"
  ns mount -t tmpfs tmpfs "$work/tmpfs"
  ns cp "$work/value" "$work/tmpfs/value"
  before=$(ns cat "$work/root/.status" | sync_ops)
  f1=$(ns $R/openread "$work/files/s1" "$n" 1)
  after=$(ns cat "$work/root/.status" | sync_ops)
  t1=$(ns $R/openread "$work/tmpfs/value" "$n" 1)
  f2=$(ns $R/openread "$work/files/s1" "$n" 2)
  t2=$(ns $R/openread "$work/tmpfs/value" "$n" 2)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$fs/status")
  # the status reads themselves: 1 lookup/getattr/open/read... between the two samples
  per_open=$(python3 -c "print(f'{($after - $before) / ($n + $n // 10):.2f}')")
  printf '%-8s 1 thread: %7.2f us vs tmpfs %5.2f us (x%.2f) | 2 threads: %7.2f us vs %5.2f us (x%.2f) | sync round trips per open: %s | first read: %s us | ready after %s ms | RSS %s KiB, 100 secrets\n' \
    "$mode" "$(bc -l <<<"$f1/1000")" "$(bc -l <<<"$t1/1000")" "$(bc -l <<<"$f1/$t1")" \
    "$(bc -l <<<"$f2/1000")" "$(bc -l <<<"$t2/1000")" "$(bc -l <<<"$f2/$t2")" "$per_open" "$first" "$ready_ms" "$rss"
  kill -TERM "$fs"; wait "$fs" || true
done

#!/usr/bin/env bash
# A bounded load test of one secretd (release): 200 concurrent clients mixing reads, writes,
# resolves, shares and listings for 20 s (bench/src/bin/load.rs), then every acknowledged
# write read back. Samples secretd's RSS every second. Fails on any 5xx, transport error or
# lost write. Usage: bench/load.sh [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
clients=${2:-200}
cargo build --release --locked --bin secretd --bin neuro --bin load >&2
source bench/common.sh
start_secretd 18485
spid=${pids[0]}
( while kill -0 "$spid" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$spid/status" 2>/dev/null || true; sleep 1
  done ) > "$work/rss" &
pids+=($!)
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%F)"
status=0
"$R/load" http://127.0.0.1:18485 "$(cat "$work/data/admin.token")" "$secs" "$clients" || status=$?
rss=$(tr '\n' ' ' < "$work/rss")
echo "secretd RSS (KiB, one sample a second): $rss"
awk 'NR==1{first=$1} {if($1>max)max=$1} END{printf "RSS first %d KiB, peak %d KiB, last %d KiB\n", first, max, $1}' "$work/rss"
echo "secretd: $(grep -c . "$work/data/audit.log") audit lines; store file $(du -k "$work/data/secrets.redb" | cut -f1) KiB"
exit $status

#!/usr/bin/env bash
# secretfs: warm open+read+close of a 4 KiB secret against the same bytes on tmpfs, in the
# same mount namespace and run, 1 and 2 threads, for each cache mode, in ROUNDS alternating
# rounds (the median ratio and the range over rounds: one sample each was what made two runs
# of a day read 1.38x and 1.53x); the same file opened inside the mount root, without the bind
# mount; daemon round trips and daemon thread wake-ups (context switches) per open; the first
# read after start; RSS with 100 secrets; the machine's load.
# Needs root and /dev/fuse. Usage: bench/secretfs.sh [ITERATIONS [ROUNDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
rounds=${2:-5}
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

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%F); $n iterations, $rounds rounds; load: $(cut -d' ' -f1-3 /proc/loadavg)"
wakeups() { # PID -> context switches of all its threads
  cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'
}
stats() { # ratios... -> "median min max"
  python3 -c 'import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f"{statistics.median(v):.2f} {v[0]:.2f} {v[-1]:.2f}")' "$@"
}
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
  # s1 is mapping 1: its name in the mount root is "1"
  [[ "$(ns cmp "$work/root/1" "$work/value" && echo same)" == same ]]
  r1=(); r2=(); rd=(); f1s=(); t1s=(); f2s=(); t2s=(); per_open=""; wake=""
  for round in $(seq "$rounds"); do
    before=$(ns cat "$work/root/.status" | sync_ops)
    w0=$(wakeups "$fs")
    f1=$(ns $R/openread "$work/files/s1" "$n" 1)
    w1=$(wakeups "$fs")
    after=$(ns cat "$work/root/.status" | sync_ops)
    t1=$(ns $R/openread "$work/tmpfs/value" "$n" 1)
    d1=$(ns $R/openread "$work/root/1" "$n" 1)
    f2=$(ns $R/openread "$work/files/s1" "$n" 2)
    t2=$(ns $R/openread "$work/tmpfs/value" "$n" 2)
    r1+=("$(bc -l <<<"$f1/$t1")"); r2+=("$(bc -l <<<"$f2/$t2")"); rd+=("$(bc -l <<<"$d1/$t1")")
    f1s+=("$f1"); t1s+=("$t1"); f2s+=("$f2"); t2s+=("$t2")
    # the status reads themselves: 1 lookup/getattr/open/read... between the two samples;
    # the daemon's context switches include the status read's (a few)
    if [[ $round == 1 ]]; then
      per_open=$(python3 -c "print(f'{($after - $before) / ($n + $n // 10):.2f}')")
      wake=$(python3 -c "print(f'{($w1 - $w0) / ($n + $n // 10):.3f}')")
    fi
  done
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$fs/status")
  read -r m1 lo1 hi1 <<<"$(stats "${r1[@]}")"
  read -r m2 lo2 hi2 <<<"$(stats "${r2[@]}")"
  read -r md lod hid <<<"$(stats "${rd[@]}")"
  us() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float,sys.argv[1:]))/1000:.2f}")' "$@"; }
  printf '%-8s 1 thread: %6s us vs tmpfs %5s us (x%s, rounds x%s-x%s) | 2 threads: %6s us vs %5s us (x%s, x%s-x%s) | no bind mount: x%s (x%s-x%s) | sync round trips per open: %s | daemon wake-ups per open: %s | first read: %s us | ready after %s ms | RSS %s KiB, 100 secrets\n' \
    "$mode" "$(us "${f1s[@]}")" "$(us "${t1s[@]}")" "$m1" "$lo1" "$hi1" \
    "$(us "${f2s[@]}")" "$(us "${t2s[@]}")" "$m2" "$lo2" "$hi2" "$md" "$lod" "$hid" \
    "$per_open" "$wake" "$first" "$ready_ms" "$rss"
  kill -TERM "$fs"; wait "$fs" || true
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

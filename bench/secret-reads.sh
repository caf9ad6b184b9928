#!/usr/bin/env bash
# Authorized secret reads per second (GET /api/v1/secrets/{owner}/{key}, keep-alive,
# 64 connections, audit on) against nginx serving a 4 KiB static file, in the same run on this
# machine, in ROUNDS alternating rounds (nginx, then secretd); prints each round's ratios and
# the median. Goal (issue 13): at least 0.8x nginx's rate, p99 at most 1.5x nginx's p99.
#
# With BASE_SECRETD=PATH (another build of secretd, e.g. the last release's), each round also
# measures it on its own data directory, reads and then writes (POST of a 64-byte value, which
# fsyncs), and prints new/base: "as fast as before" checked in the same run.
#
# Needs: scripts/setup.sh --bench (nginx, wrk).
# Usage: [BASE_SECRETD=PATH] bench/secret-reads.sh [SECONDS [ROUNDS]]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
threads=2
conns=64

cargo build --release --locked --bin secretd --bin neuro >&2
source bench/common.sh

# nginx: the baseline, a 4 KiB file over keep-alive HTTP/1.1.
mkdir -p "$work/www" "$work/nginx"
head -c 4096 /dev/urandom > "$work/www/secret"
cat > "$work/nginx/nginx.conf" <<CONF
user root;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18481;
    root $work/www;
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
pids+=($!)

# secretd on its embedded store, with one 4 KiB secret.
start_secretd 18480
for _ in $(seq 50); do [[ -s "$work/nginx/nginx.pid" ]] && break; sleep 0.1; done
NEURO_TOKEN=$token "$R/neuro" secret add blob "@$work/www/secret"

run() { wrk_run "$threads" "$conns" "$secs" "$@"; }

# The base build, if any: its own data directory, user and 4 KiB secret.
if [[ -n "${BASE_SECRETD:-}" ]]; then
  "$BASE_SECRETD" --data-dir "$work/base" --listen 127.0.0.1:18482 > "$work/base.out" 2> "$work/base.err" &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$work/base.out" ]] && break; sleep 0.1; done
  base_token=$(XDG_CONFIG_HOME="$work/base-config" bash -c "
    '$R/neuro' login --url http://127.0.0.1:18482 --token \"\$(cat '$work/base/admin.token')\" 2>/dev/null
    '$R/neuro' admin user add bench")
  NEURO_URL=http://127.0.0.1:18482 NEURO_TOKEN=$base_token "$R/neuro" secret add blob "@$work/www/secret"
  curl -fsS -o /dev/null -H "Authorization: Bearer $base_token" http://127.0.0.1:18482/api/v1/secrets/bench/blob
  # Writes: the same 64-byte value again and again (each one fsyncs).
  value=$(head -c 48 /dev/urandom | base64 -w0)
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key":"w","value":"$value"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  writes() { # PORT TOKEN -> "rps p99_ms"
    local out rps p99
    out=$(wrk -t2 -c16 -d"${secs}s" --latency -s "$work/post.lua" -H "Authorization: Bearer $2" "http://127.0.0.1:$1/api/v1/secrets")
    echo "$out" >&2
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
    echo "$rps $p99"
  }
fi

# Both wrk runs hit a warm server; the secretd run checks that answers are 200s.
curl -fsS -o /dev/null -H "Authorization: Bearer $token" http://127.0.0.1:18480/api/v1/secrets/bench/blob
curl -fsS -o /dev/null http://127.0.0.1:18481/secret
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F); load: $(cut -d' ' -f1-3 /proc/loadavg)"
results=()
for r in $(seq "$rounds"); do
  read -r n_rps n_p99 < <(run http://127.0.0.1:18481/secret)
  read -r s_rps s_p99 < <(run http://127.0.0.1:18480/api/v1/secrets/bench/blob "$token")
  printf 'round %d: nginx %8.0f req/s p99 %5.2f ms | secretd %8.0f req/s p99 %5.2f ms | rate x%.2f p99 x%.2f\n' \
    "$r" "$n_rps" "$n_p99" "$s_rps" "$s_p99" "$(bc -l <<<"$s_rps/$n_rps")" "$(bc -l <<<"$s_p99/$n_p99")"
  results+=("$(bc -l <<<"$s_rps/$n_rps") $(bc -l <<<"$s_p99/$n_p99")")
  if [[ -n "${BASE_SECRETD:-}" ]]; then
    read -r b_rps b_p99 < <(run http://127.0.0.1:18482/api/v1/secrets/bench/blob "$base_token")
    read -r w_rps w_p99 < <(writes 18480 "$token")
    read -r bw_rps bw_p99 < <(writes 18482 "$base_token")
    printf '  base secretd reads %8.0f req/s p99 %5.2f ms: new/base rate x%.2f p99 x%.2f\n' \
      "$b_rps" "$b_p99" "$(bc -l <<<"$s_rps/$b_rps")" "$(bc -l <<<"$s_p99/$b_p99")"
    printf '  writes: new %6.0f req/s p99 %6.2f ms | base %6.0f req/s p99 %6.2f ms: new/base rate x%.2f p99 x%.2f\n' \
      "$w_rps" "$w_p99" "$bw_rps" "$bw_p99" "$(bc -l <<<"$w_rps/$bw_rps")" "$(bc -l <<<"$w_p99/$bw_p99")"
  fi
done
audit_lines=$(wc -l < "$work/data/audit.log")
echo "audit lines written: $audit_lines; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
rate = statistics.median(r for r, _ in rows)
p99 = statistics.median(p for _, p in rows)
lo, hi = min(r for r, _ in rows), max(r for r, _ in rows)
verdict = lambda ok: "met" if ok else "NOT met"
print(f"median rate x{rate:.2f} (rounds x{lo:.2f}-x{hi:.2f}; goal >= 0.8: {verdict(rate >= 0.8)}); "
      f"median p99 x{p99:.2f} of nginx (goal <= 1.5: {verdict(p99 <= 1.5)})")'

#!/usr/bin/env bash
# Authorized secret reads per second (GET /api/v1/secrets/{owner}/{key}, keep-alive,
# 64 connections, audit on) against nginx serving a 4 KiB static file, in the same run on this
# machine, in ROUNDS alternating rounds (nginx, then secretd); prints each round's ratios and
# the median. Goal (issue 13): at least 0.8x nginx's rate, p99 at most 1.5x nginx's p99.
#
# Needs: scripts/setup.sh --bench (nginx, wrk). Usage: bench/secret-reads.sh [SECONDS [ROUNDS]]
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

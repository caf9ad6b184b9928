#!/usr/bin/env bash
# Authorized secret reads per second (GET /api/v1/secrets/{owner}/{key}, keep-alive,
# 64 connections) against nginx serving a 4 KiB static file, in the same run on this machine.
# Goal (issue 2): at least 50% of nginx's rate, p99 under 5 ms.
#
# Needs: scripts/setup.sh --bench (nginx, wrk). Usage: bench/secret-reads.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
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
read -r n_rps n_p99 < <(run http://127.0.0.1:18481/secret)
read -r s_rps s_p99 < <(run http://127.0.0.1:18480/api/v1/secrets/bench/blob "$token")
audit_lines=$(wc -l < "$work/data/audit.log")

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"
printf 'nginx   4 KiB static file : %10.0f req/s  p99 %6.2f ms\n' "$n_rps" "$n_p99"
printf 'secretd 4 KiB secret read : %10.0f req/s  p99 %6.2f ms  (%s audit lines)\n' "$s_rps" "$s_p99" "$audit_lines"
awk -v s="$s_rps" -v n="$n_rps" -v p="$s_p99" 'BEGIN {
  r = s / n;
  printf "ratio secretd/nginx: %.2f (goal >= 0.50: %s); p99 goal < 5 ms: %s\n", r, (r >= 0.5 ? "met" : "NOT met"), (p < 5 ? "met" : "NOT met")
}'

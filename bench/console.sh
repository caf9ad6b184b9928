#!/usr/bin/env bash
# The console's Secrets tab with 1,000 secrets (issue 12): the server's time for the page
# (curl, median of 20 over keep-alive-free requests) and the time until the table is visible
# in Chromium (tests/console/bench.js, median of 10 navigations).
# Goal: under 200 ms and under 1 s on this machine.
#
# Needs: scripts/setup.sh (chromium, node, playwright-core), curl. Usage: bench/console.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port=18491

cargo build --release --locked --bin secretd --bin neuro >&2
source bench/common.sh
start_secretd "$port"
url="http://127.0.0.1:$port"

# 1,000 secrets of 64 bytes each, through the API.
value=$(head -c 48 /dev/urandom | base64 -w0)
for i in $(seq -w 1 1000); do
  printf '{"key":"bench-secret-%s","value":"%s"}' "$i" "$value"
done | URL="$url" TOKEN="$token" python3 -c '
import os, sys, urllib.request
url, token = os.environ["URL"], os.environ["TOKEN"]
raw = sys.stdin.read().replace("}{", "}\n{").splitlines()
for body in raw:
    req = urllib.request.Request(url + "/api/v1/secrets", data=body.encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
'

# A session cookie through the log-in form (the token goes in the body, from a file).
printf 'token=%s' "$token" > "$work/login.form"
cookie=$(curl -s -o /dev/null -D - -H "Origin: $url" --data-binary "@$work/login.form" \
  -H 'Content-Type: application/x-www-form-urlencoded' "$url/login" |
  sed -n 's/^set-cookie: \(neuro_session=[^;]*\).*/\1/ip')
printf 'Cookie: %s\n' "$cookie" > "$work/cookie.hdr"
rows=$(curl -s -H "@$work/cookie.hdr" "$url/secrets" | grep -o '<tr><th scope="row">' | wc -l)
echo "secrets page: $rows rows, $(curl -s -H "@$work/cookie.hdr" "$url/secrets" | wc -c) bytes"
times=()
for _ in $(seq 20); do
  times+=("$(curl -s -o /dev/null -H "@$work/cookie.hdr" -w '%{time_total}' "$url/secrets")")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1*1000} END {printf "server: GET /secrets median %.1f ms, min %.1f ms, max %.1f ms (20 requests)\n", a[int((NR+1)/2)], a[1], a[NR]}'

USER_TOKEN="$token" CONSOLE_URL="$url" RUNS=10 node tests/console/bench.js

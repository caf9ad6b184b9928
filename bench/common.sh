# Sourced by the bench scripts: a work directory cleaned up on exit, background processes
# stopped on exit, and `start_secretd PORT`, which starts a release secretd on its own data
# directory and sets $token to a new user's token. Callers build the binaries first.
R="${R:-$PWD/target/x86_64-unknown-linux-gnu/release}"  # see .cargo/config.toml; R=DIR runs another build
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_secretd() {
  local port=$1
  # shellcheck disable=SC2086 # SECRETD_ARGS: extra flags, split at spaces
  "$R/secretd" --data-dir "$work/data" --listen "127.0.0.1:$port" ${SECRETD_ARGS:-} > "$work/secretd.out" 2> "$work/secretd.err" &
  pids+=($!)
  for _ in $(seq 50); do [[ -s "$work/secretd.out" ]] && break; sleep 0.1; done
  export XDG_CONFIG_HOME="$work/config"
  "$R/neuro" login --url "http://127.0.0.1:$port" --token "$(cat "$work/data/admin.token")" 2>/dev/null
  token=$("$R/neuro" admin user add bench)
}

wrk_run() { # THREADS CONNS SECONDS URL [TOKEN] -> "rps p99_ms"; wrk's report on stderr
  local args=(-t"$1" -c"$2" -d"${3}s" --latency)
  [[ -n "${5:-}" ]] && args+=(-H "Authorization: Bearer $5")
  local out
  out=$(wrk "${args[@]}" "$4")
  echo "$out" >&2
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
  echo "$rps $p99"
}

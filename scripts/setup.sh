#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and (with --bench) the benchmarks need.
# Idempotent: packages already installed are not fetched again.
set -euo pipefail

packages=(ca-certificates pkg-config util-linux)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(nginx-light wrk bc python3)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing (the machine's Rust toolchain)"; exit 1; }

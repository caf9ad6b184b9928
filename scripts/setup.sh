#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and (with --bench) the benchmarks need.
# Idempotent: packages already installed are not fetched again.
#   util-linux           unshare, nsenter, mount (secretfs and neuro run tests)
#   binutils             strip, readelf (container/build.sh)
#   podman runc          the container engine of the pod test; its configuration is
#                        container/podman/containers.conf (runc, cgroupfs, explicit ulimits)
#   catatonit            the pause process of podman's pods
#   busybox-static       the shell of the pod test's job image (nothing can be pulled)
#   openssl              makes the certificate of the README's HTTPS recipe in the TLS test
#   chromium nodejs npm  the web console's browser tests (tests/console, playwright-core from
#                        npm, installed below with `npm ci` from its package-lock.json)
#   etcd-server etcd-client  real etcd members for the etcd backend's tests (etcdctl looks in)
#   protobuf-compiler    protoc, which the etcd-client crate's build script needs
set -euo pipefail

packages=(ca-certificates pkg-config util-linux binutils podman runc catatonit busybox-static openssl
  chromium nodejs etcd-server etcd-client protobuf-compiler)
# Debian's npm is a separate package; a nodejs that bundles npm (NodeSource's) conflicts with it.
command -v npm >/dev/null || packages+=(npm)
if [[ "${1:-}" == "--bench" ]]; then
  packages+=(nginx-light wrk bc python3 linux-perf strace ltrace)
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
# The console tests' one npm package, at the version package-lock.json pins.
console_dir="$(dirname "$0")/../tests/console"
if [[ ! -f "$console_dir/node_modules/playwright-core/package.json" ]]; then
  echo "setup: installing playwright-core in tests/console"
  (cd "$console_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

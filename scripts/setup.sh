#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and (with --bench) the benchmarks need;
# with --build only what building the binaries needs (the README's first command).
# Idempotent: packages already installed are not fetched again.
#   ca-certificates pkg-config  HTTPS to the registries; pkg-config for -sys crates that ask it
#   gcc libc6-dev        the linker and C library of every crate that builds C (ring, mimalloc) and
#                        of the static (crt-static) binaries
#   protobuf-compiler    protoc, which the etcd-client crate's build script runs
#   libprotobuf-dev      the well-known .proto files (google/protobuf/*.proto) that protoc needs
#                        for etcd's API; Debian's protobuf-compiler only recommends it, and
#                        recommends are not installed here, so it is named on its own
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
set -euo pipefail

mode="${1:-}"
case "$mode" in
  "" | --build | --bench) ;;
  *) echo "usage: scripts/setup.sh [--build|--bench]" >&2; exit 2 ;;
esac
packages=(ca-certificates gcc libc6-dev pkg-config protobuf-compiler libprotobuf-dev)
if [[ "$mode" != "--build" ]]; then
  packages+=(util-linux binutils podman runc catatonit busybox-static openssl chromium nodejs
    etcd-server etcd-client)
  # Debian's npm is a separate package; a nodejs that bundles npm (NodeSource's) conflicts with it.
  command -v npm >/dev/null || packages+=(npm)
fi
if [[ "$mode" == "--bench" ]]; then
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
[[ "$mode" == "--build" ]] && exit 0
# The console tests' one npm package, at the version package-lock.json pins.
console_dir="$(dirname "$0")/../tests/console"
if [[ ! -f "$console_dir/node_modules/playwright-core/package.json" ]]; then
  echo "setup: installing playwright-core in tests/console"
  (cd "$console_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

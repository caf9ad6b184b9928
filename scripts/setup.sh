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
set -euo pipefail

# etcd-server and etcd-client: the etcd backend's tests; protobuf-compiler: the etcd-client
# crate's build script needs protoc.
packages=(ca-certificates pkg-config util-linux binutils podman runc catatonit busybox-static openssl
  etcd-server etcd-client protobuf-compiler)
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

#!/usr/bin/env bash
# Builds the two small images of the job side with podman, FROM scratch (nothing is pulled):
#   localhost/neuro-secretfs:TAG       the FUSE sidecar
#   localhost/neuro-secret-inject:TAG  the entrypoint wrapper, copied into pods by an init container
# from static binaries (the workspace links everything with crt-static, see .cargo/config.toml).
#
# Usage: container/build.sh [--profile release|dev] [--tag TAG] [--bin-dir DIR]
#   --profile  cargo profile to build (default release)
#   --tag      image tag (default: the workspace version, which `neuro job manifest` expects)
#   --bin-dir  use the secretfs and secret-inject binaries in DIR instead of building
# Push them to your registry with `podman push`; see container/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
bin_dir=""
while (($#)); do
  case "$1" in
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a value}; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/container/podman/containers.conf}
command -v podman >/dev/null || { echo "build.sh: podman is missing (scripts/setup.sh installs it)" >&2; exit 1; }

if [[ -z "$bin_dir" ]]; then
  cargo build --locked --manifest-path "$root/Cargo.toml" --profile "$profile" \
    -p secrets-fs -p secrets-injector --bins
  [[ "$profile" == dev ]] && out=debug || out=$profile
  bin_dir=${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/$out
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in secretfs secret-inject; do
  [[ -x "$bin_dir/$b" ]] || { echo "build.sh: no binary '$bin_dir/$b'" >&2; exit 1; }
  # A FROM-scratch image has no dynamic loader: refuse a binary that needs one.
  if readelf -l "$bin_dir/$b" | grep -q 'program interpreter'; then
    echo "build.sh: '$bin_dir/$b' is dynamically linked; build with .cargo/config.toml (crt-static)" >&2
    exit 1
  fi
  strip -o "$ctx/$b" "$bin_dir/$b"
done
for b in secretfs secret-inject; do
  # The label makes each tag its own image (a cached build of the same binaries would
  # otherwise share one image id, and removing one tag with `rmi -f` removes the others').
  podman build --quiet --file "$root/container/$b.Containerfile" \
    --label "neuro.build-tag=$tag" --tag "localhost/neuro-$b:$tag" "$ctx" >/dev/null
  echo "localhost/neuro-$b:$tag ($(du -h "$ctx/$b" | cut -f1))"
done

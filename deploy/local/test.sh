#!/usr/bin/env bash
# The project's test command (README "Quick start", step 2; CI runs it through .ci/run).
# Installs what the tests need (idempotent, cached under ~/.cache/redis-sync), then:
# format check, clippy -D warnings, buf lint (and buf breaking against main), the
# deployment manifest checks, and every test of the workspace against real Redis servers.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${REDIS_SYNC_CACHE:-$HOME/.cache/redis-sync}
step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
deploy/local/install-tools.sh
deploy/local/install-redis-versions.sh
export PATH="$cache/venv/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "buf lint"
buf lint
# The contract may grow but not break: compare with the previous commit's protos.
if git cat-file -e HEAD~1:proto 2>/dev/null; then
  step "buf breaking against the previous commit"
  buf breaking --against ".git#ref=HEAD~1"
fi

if [ -x deploy/check-manifests.sh ]; then
  step "deployment manifests"
  deploy/check-manifests.sh
fi

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked --no-fail-fast
fi

#!/usr/bin/env bash
# The project's test command (README "Quick start", step 2; CI runs it through .ci/run).
# Installs what the tests need (idempotent, cached under ~/.cache/redis-sync), then:
# format check, clippy -D warnings, buf lint (and buf breaking against main), the
# deployment manifest checks, every test of the workspace against real Redis servers, and
# a short run of the parser fuzz targets.
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

# A short coverage-guided run of the parser fuzz targets (RESP, replica handshake, RDB,
# DUMP) on every CI build, so a parser change that panics on hostile bytes fails here and
# not weeks later in a long fuzzing session. No cargo-fuzz install: see the notes at the
# top of fuzz.sh (~1-2 min cold build plus 15 s per target). Its own target directory
# (fuzz/target/ci) keeps the instrumented build apart from the workspace's.
step "fuzzing the parsers (${FUZZ_SECONDS:-15} s per target)"
deploy/local/fuzz.sh --ci "${FUZZ_SECONDS:-15}"

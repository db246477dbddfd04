#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted input: the RESP decoder and
# the replica handshake (shared/resp), the RDB parser and DUMP payloads (shared/rdb).
#
#   deploy/local/fuzz.sh [SECONDS_PER_TARGET]        (default 60)
#   deploy/local/fuzz.sh --ci [SECONDS_PER_TARGET]   (default 15; what deploy/local/test.sh runs)
#
# Installs cargo-fuzz if missing, writes the seed corpora, builds the targets of fuzz/
# (its own workspace, not a member of the root one), runs each for SECONDS_PER_TARGET,
# and exits 1 if any target found a crash, timeout or out-of-memory input, printing the
# input's path (under fuzz/artifacts/<target>/), its bytes in hex and the panic message.
#
# --ci is the short run for every CI build: no cargo-fuzz (its cold install alone costs
# 3 min). The targets are built with plain `cargo build --release` and the RUSTFLAGS
# cargo-fuzz 0.13 passes for `--sanitizer none` (sancov instrumentation, `--cfg fuzzing`,
# debug assertions, one codegen unit; its src/project.rs `cargo()`), which stable rustc
# takes without RUSTC_BOOTSTRAP, and each libFuzzer binary is run directly. The sanitizer
# defaults to none there: the build is half as long as with ASan (1 min instead of 2 cold
# on the shared 2-core machine) and it runs ~6x more inputs per second, at the price of
# the per-allocation limit described below; FUZZ_SANITIZER=address --ci builds with ASan.
# Reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <path>` from the repo root
# (or, after a --ci run, `fuzz/target/ci/x86_64-unknown-linux-gnu/release/<target> <path>`),
# shrink it with `RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> <path>`.
#
# Environment: FUZZ_TARGETS (space separated, default all four), FUZZ_SANITIZER (address
# or none; default address, falling back to none if the ASan build fails; none with --ci),
# FUZZ_MALLOC_LIMIT_MB (largest single allocation allowed, default 64: inputs are a few KiB,
# so a bigger one means a length from the input was trusted), CARGO_TARGET_DIR (default
# fuzz/target, fuzz/target/ci with --ci, git-ignored; so are fuzz/corpus and fuzz/artifacts).
#
# What works on this project's machines (stable Rust 1.95 only; no nightly can be installed):
# - `cargo install cargo-fuzz --locked` from crates.io (0.13.2): 3 min cold on the shared
#   2-core machine; installed once into ~/.cargo/bin, skipped when `cargo fuzz` exists.
# - cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sancov options) to rustc:
#   RUSTC_BOOTSTRAP=1 makes the stable rustc accept them. The stable toolchain ships the
#   ASan runtime (librustc-stable_rt.asan.a), so the default AddressSanitizer build links
#   and runs. `--sanitizer none` works too (still coverage-guided, about 5x more exec/s on
#   resp_handshake), but then -malloc_limit_mb is not enforced per allocation (only the RSS
#   limit is), so a Vec::with_capacity(untrusted) would go unnoticed: ASan stays the default.
# - libfuzzer-sys builds libFuzzer from C++ source with the machine's g++; no clang needed.
# - A cold build of the four targets takes 3-5 min wall on the shared machine (about 2 min
#   of CPU); a rebuild after a change in the parsers takes seconds to a minute.
# - Cold total with cargo-fuzz: ~3 min install + ~3-5 min build + 4 x SECONDS_PER_TARGET.
# - Cold total of --ci: ~1 min build + 4 x (SECONDS_PER_TARGET + 1 s) + a few seconds of
#   seeds; measured on the shared 2-core machine from a fresh clone and target directory,
#   `time deploy/local/fuzz.sh --ci 15`: 2 min 4 s (built in 56 s).
# Everything runs under `nice -n 19`: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
ci=false
if [ "${1:-}" = --ci ]; then
  ci=true
  shift
fi
if $ci; then secs=${1:-15}; else secs=${1:-60}; fi
case $secs in '' | *[!0-9]*) echo "usage: $0 [--ci] [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

targets=${FUZZ_TARGETS:-resp_decoder resp_handshake rdb_parser dump_payload}
if $ci; then sanitizer=${FUZZ_SANITIZER:-none}; else sanitizer=${FUZZ_SANITIZER:-address}; fi
malloc_limit=${FUZZ_MALLOC_LIMIT_MB:-64}
# --ci builds with other flags than cargo-fuzz: its own directory keeps either build from
# overwriting the other.
if $ci; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target/ci}
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}
fi
export RUSTC_BOOTSTRAP=1
triple=x86_64-unknown-linux-gnu
nice=(nice -n 19)
step() { printf '\n==> %s\n' "$*"; }

if ! $ci && ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  started=$(date +%s)
  "${nice[@]}" cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION:-0.13.2}" --locked
  echo "cargo-fuzz installed in $(( $(date +%s) - started )) s"
fi
$ci || cargo fuzz --version

# What `cargo fuzz build --sanitizer "$1"` runs (cargo-fuzz 0.13, src/project.rs), without
# cargo-fuzz. --target keeps these flags off build scripts, as cargo-fuzz does.
plain_build() {
  local flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  )
  [ "$1" = none ] || flags+=("-Zsanitizer=$1")
  flags+=(
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cdebug-assertions
    -Ccodegen-units=1
  )
  RUSTFLAGS="${flags[*]} ${RUSTFLAGS:-}" "${nice[@]}" cargo build --manifest-path fuzz/Cargo.toml \
    --target "$triple" --release --locked --bins
}
build() {
  if $ci; then plain_build "$1"; else "${nice[@]}" cargo fuzz build --sanitizer "$1"; fi
}

# ---------------------------------------------------------------------------------------
step "seed corpora"
corpus=$root/fuzz/corpus
mkdir -p "$corpus"/{resp_decoder,resp_handshake,rdb_parser,dump_payload}

# resp_decoder: [split byte][limits byte: even = defaults, odd = tiny limits] stream...
seed() { printf "$2" > "$corpus/$1/$3"; }
seed resp_decoder '\x80\x00*3\r\n$3\r\nSET\r\n$3\r\nfoo\r\n$3\r\nbar\r\n' seed-set
seed resp_decoder '\x40\x00\n*1\r\n$4\r\nPING\r\n\n\n*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n' seed-keepalive
seed resp_decoder '\x20\x00+OK\r\n-ERR no\r\n:123\r\n:-5\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n' seed-replies
seed resp_decoder '\xc0\x00*2\r\n*1\r\n:1\r\n*2\r\n+a\r\n$1\r\nb\r\n' seed-nested
seed resp_decoder '\x10\x0b*2\r\n$3\r\nGET\r\n$20\r\n01234567890123456789\r\n' seed-limits
seed resp_decoder '\xff\x00SELECT 0\r\nPING\n  \t\r\n' seed-inline
seed resp_decoder '\x90\x00*1\r\n$5\r\nMULTI\r\n*3\r\n$4\r\nINCR\r\n$1\r\nk\r\n*1\r\n$4\r\nEXEC\r\n' seed-multi

# resp_handshake: [split byte][mark byte: even = 40 mark bytes follow, odd = a 1..8 byte
# pattern follows] stream...
id=8f0b7c5d0d1c6f3a1e2b4c5d6e7f8091a2b3c4d5
mark=0123456789abcdef0123456789abcdef01234567
seed resp_handshake "\x80\x00$mark\n\n+FULLRESYNC $id 1234567\r\n" seed-fullresync
seed resp_handshake "\x40\x00$mark+CONTINUE $id\r\n*1\r\n\$4\r\nPING\r\n" seed-continue
seed resp_handshake "\x20\x00$mark+CONTINUE\r\n" seed-continue-bare
seed resp_handshake "\x30\x00$mark-NOMASTERLINK Can't SYNC while not connected\r\n" seed-error
seed resp_handshake "\x60\x00$mark\n\$EOF:$mark\r\nREDIS0011\xfa\x09redis-ver${mark}*1\r\n" seed-diskless
seed resp_handshake "\xa0\x00$mark\r\n\$1234\r\nREDIS0011\xff" seed-disk
seed resp_handshake "\x80\x03abababababababababababababababababababababababababababababababababababababababababab" seed-periodic
seed resp_handshake "\x7f\x0baabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaabaa" seed-periodic3

# rdb_parser: [options byte][piece-size byte] RDB... from the RDB fixtures up to 4 KiB
# (options byte: bit 1 turns the checksum check off, bits 3+ pick the tiny threshold).
fixtures=$root/../shared/fixtures/rdb
[ -d "$fixtures" ] || fixtures=$root/shared/rdb/tests/data
prefixes=('\x30\x07' '\x4a\x33' '\x05\x0a' '\x1e\x91' '\x38\x00' '\x12\x5c')
n=0
for f in "$fixtures"/*.rdb; do
  [ "$(stat -c %s "$f")" -le 4096 ] || continue
  { printf "${prefixes[n % ${#prefixes[@]}]}"; cat "$f"; } > "$corpus/rdb_parser/seed-$(basename "$f" .rdb)"
  n=$((n + 1))
done
echo "rdb_parser: $n RDB fixtures from $fixtures"

# ---------------------------------------------------------------------------------------
step "building the fuzz targets (sanitizer: $sanitizer)"
if ! command -v c++ >/dev/null 2>&1; then
  echo "libfuzzer-sys builds libFuzzer from C++ source: install a C++ compiler (apt-get install g++)" >&2
  exit 1
fi
started=$(date +%s)
if ! build "$sanitizer"; then
  if [ "$sanitizer" = address ] && [ -z "${FUZZ_SANITIZER:-}" ]; then
    echo "the AddressSanitizer build failed; building with --sanitizer none" >&2
    sanitizer=none
    build "$sanitizer"
  else
    exit 1
  fi
fi
echo "built in $(( $(date +%s) - started )) s"
bin=$CARGO_TARGET_DIR/$triple/release
# What `cargo fuzz run` sets for ASan builds (src/project.rs), so that running the binaries
# directly behaves the same.
[ "$sanitizer" = none ] || export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0

# dump_payload: the dump_body of every key of the RDB seeds, raw and framed, written by
# the rdb_parser binary itself (it exports them when REDIS_SYNC_FUZZ_EXPORT_DUMPS is set).
REDIS_SYNC_FUZZ_EXPORT_DUMPS=$corpus/dump_payload "${nice[@]}" "$bin/rdb_parser" \
  "$corpus"/rdb_parser/seed-* > "$CARGO_TARGET_DIR/export-dumps.log" 2>&1 || {
  echo "the RDB seeds themselves fail rdb_parser (see below); fuzzing goes on" >&2
  tail -n 30 "$CARGO_TARGET_DIR/export-dumps.log" >&2
}
echo "dump_payload: $(ls "$corpus/dump_payload" | wc -l) seed files"

# ---------------------------------------------------------------------------------------
logs=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$logs"
failed=()
summary=()
for t in $targets; do
  step "fuzzing $t for $secs s"
  artifacts=$root/fuzz/artifacts/$t
  mkdir -p "$artifacts"
  before=$(ls "$artifacts")
  log=$logs/$t.log
  status=0
  # The binary as `cargo fuzz run` would start it (it is built already), with the same
  # artifact directory.
  "${nice[@]}" "$bin/$t" -artifact_prefix="$artifacts/" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" \
    -print_final_stats=1 "$corpus/$t" > "$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  summary+=("$(printf '%-15s %8s runs  %6s exec/s  %4s s  %s  corpus %s files' \
    "$t" "${runs:-?}" "${rate:-?}" "${took:-?}" "${cov:-cov: ?}" "$(ls "$corpus/$t" | wc -l)")")
  new=$(comm -13 <(echo "$before") <(ls "$artifacts") || true)
  if [ "$status" -ne 0 ] || [ -n "$new" ]; then
    failed+=("$t")
    echo "!! $t failed (exit $status); log: $log" >&2
    grep -m 1 -A 4 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)|==ERROR" "$log" >&2 || tail -n 40 "$log" >&2
    for a in $new; do
      echo "!! crashing input: $artifacts/$a" >&2
      od -An -tx1 -v "$artifacts/$a" | head -n 16 >&2
    done
  else
    echo "$t: no crash"
  fi
done

step "summary ($secs s per target, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: crashes in ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "no crashes"

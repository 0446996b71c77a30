#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for a bounded time each.
#
#   scripts/fuzz.sh [seconds-per-target]        default 60
#
#   decode  arbitrary bytes -> Decoder::decode: no panic; accepted events obey SPEC §1,
#           re-encode to themselves; tighter limits never accept more; the nesting
#           pre-check agrees with serde_json
#   engine  arbitrary event sequences, configs and watermark moves through the decoder and
#           the engine: no panic; every input processed, a duplicate or dead-lettered;
#           shares sum to the gross; no over-reversal; a snapshot restored midway gives
#           the same records
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz
# into target/tools when missing. Builds go to target/fuzz. The corpus grows in
# fuzz/corpus/<target>/ (seeded from fixtures/ for decode). A crash fails the run (exit
# 1) after the remaining targets ran; its input stays in fuzz/artifacts/<target>/:
#
#   cargo +nightly fuzz run -a --fuzz-dir fuzz --target-dir target/fuzz <target> <artifact>
#
# then fix it and add a regression test named after it to tests/it/hostile.rs.
set -euo pipefail

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2
  exit 2
  ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tools="$root/target/tools"
export PATH="$tools/bin:$PATH"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz into target/tools" >&2
  cargo install cargo-fuzz --locked --root "$tools"
fi

fuzz=(cargo +nightly fuzz)
# -a: debug assertions and overflow checks on, so an integer overflow is a crash too.
opts=(--fuzz-dir fuzz --target-dir target/fuzz -a)

# Seed the decoder's corpus with every fixture line (one file per line, named by hash).
mkdir -p fuzz/corpus/decode
if [ -z "$(ls -A fuzz/corpus/decode)" ]; then
  cat fixtures/sample.jsonl fixtures/scenarios/*/input*.jsonl 2>/dev/null | while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '%s' "$line" >"fuzz/corpus/decode/seed-$(printf '%s' "$line" | cksum | cut -d' ' -f1)"
  done
fi

"${fuzz[@]}" build "${opts[@]}"

failed=()
for target in $("${fuzz[@]}" list --fuzz-dir fuzz); do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  echo "== fuzz $target for ${secs}s" >&2
  if ! "${fuzz[@]}" run "${opts[@]}" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=16384 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crash in: ${failed[*]}; inputs kept in:" >&2
  for target in "${failed[@]}"; do ls -d "fuzz/artifacts/$target"/* >&2 || true; done
  exit 1
fi
echo "fuzz.sh: every target ran ${secs}s without a crash" >&2

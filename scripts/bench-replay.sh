#!/usr/bin/env bash
# Single-core speed of replay and the engine (issue 10), as one table.
#
#   scripts/bench-replay.sh [FILE]
#
#   replay     `attrib replay --quiet --out /dev/null FILE` pinned to core 0 (taskset -c 0),
#              events/s from its summary, median of 3. FILE defaults to
#              `attrib gen --events 1000000 --seed 7 --duplicates 0.01 --invalid 0.001`,
#              generated once into $CARGO_TARGET_DIR/bench-replay/.
#   engine     examples/engine_rate.rs `rate`: the same workload decoded up front, through
#              a last-touch engine alone, pinned, median of 3.
#   memory     examples/mem_probe.rs at 10,000,000 live touches: RSS growth per touch.
#   scale      examples/engine_rate.rs `scale 1000000 50000000`: ns per event of the next
#              1M events with 1M and with 50M live touches loaded (~4 GiB, minutes).
#   callgrind  with CALLGRIND=1: instructions per event of replay over the first 100,000
#              lines (valgrind; deterministic, unlike the wall clock).
#
# SKIP_BUILD=1 uses the binaries already built; SKIP_SCALE=1 leaves out the 50M run. On a
# shared machine, run it under `flock /tmp/bench.lock` so timings do not overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin attrib --example mem_probe --example engine_rate >&2
fi
bin="$target/release/attrib"
ex="$target/release/examples"
file="${1:-}"
if [ -z "$file" ]; then
  mkdir -p "$target/bench-replay"
  file="$target/bench-replay/gen1m.jsonl"
  [ -s "$file" ] || "$bin" gen --events 1000000 --seed 7 --duplicates 0.01 --invalid 0.001 --out "$file"
fi

median() { sort -n | sed -n 2p; }

replay_rates=()
for _ in 1 2 3; do
  replay_rates+=("$(taskset -c 0 "$bin" replay --quiet --out /dev/null "$file" 2>&1 | sed -n 's/.*= \([0-9]*\) events\/s.*/\1/p')")
done
replay=$(printf '%s\n' "${replay_rates[@]}" | median)

engine=$(taskset -c 0 "$ex/engine_rate" rate 1000000 | tail -1 | awk -F'|' '{gsub(/ /, "", $4); print $4}')
mem=$("$ex/mem_probe" 10000000 2>/dev/null | tail -1 | awk -F'|' '{gsub(/ /, "", $7); print $7}')

if [ -z "${SKIP_SCALE:-}" ]; then
  scale_table=$(taskset -c 0 "$ex/engine_rate" scale 1000000 50000000)
  ns1=$(echo "$scale_table" | awk -F'|' '$2 ~ /^ *1000000 *$/ {gsub(/ /, "", $4); print $4}')
  ns50=$(echo "$scale_table" | awk -F'|' '$2 ~ /^ *50000000 *$/ {gsub(/ /, "", $4); print $4}')
  ratio=$(echo "$scale_table" | awk -F'|' '$2 ~ /^ *50000000 *$/ {gsub(/ /, "", $5); print $5}')
else
  ns1="-" ns50="-" ratio="skipped"
fi

if [ -n "${CALLGRIND:-}" ]; then
  mkdir -p "$target/bench-replay"
  head -100000 "$file" >"$target/bench-replay/100k.jsonl"
  total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" replay --quiet --out /dev/null \
    "$target/bench-replay/100k.jsonl" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  cg=$((total / 100000))
else
  cg="(CALLGRIND=1)"
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); commit $(git rev-parse --short HEAD)"
echo "input: $file ($(wc -l <"$file") lines)"
echo
echo "| measure | value | target |"
echo "|---|---:|---:|"
echo "| replay, pinned to one core (median of ${replay_rates[*]}) | $replay events/s | >= 1,000,000 |"
echo "| engine alone, decoded events (median of 3) | $engine events/s | >= 3,000,000 |"
echo "| memory at 10M live touches | $mem B/touch | <= 64 |"
echo "| engine ns/event, 1M vs 50M live touches | $ns1 vs $ns50 ns ($ratio) | < 2x |"
echo "| replay instructions/event (callgrind, 100k lines) | $cg | - |"

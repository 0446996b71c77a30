#!/usr/bin/env bash
# Cost of shadow models (SPEC 8.3), in instructions counted by callgrind (repeatable on a
# shared machine, unlike wall time). Prints a table.
#
#   scripts/bench-shadow.sh [BIN] [BASE_BIN]
#
# BIN: the attrib binary to measure (default target/release/attrib).
# BASE_BIN: an older binary to compare the plain replay with (optional): with no shadow
#   models, nothing may cost more than before.
# WORKLOAD: the JSONL input (default: `attrib gen --events 200000` into a temp dir).
# Holds `flock /tmp/bench.lock` for the whole run when flock is there, so benchmarks on
# a shared machine don't overlap.
set -euo pipefail
if [ -z "${BENCH_LOCK_HELD:-}" ] && command -v flock >/dev/null; then
  BENCH_LOCK_HELD=1 exec flock /tmp/bench.lock "$0" "$@"
fi
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/attrib}
BASE=${2:-}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
WORKLOAD=${WORKLOAD:-$DIR/gen200k.jsonl}
[ -f "$WORKLOAD" ] || "$BIN" gen --events 200000 --seed 42 --refunds 0.1 --out "$WORKLOAD"

cat > "$DIR/plain.toml" <<'TOML'
[attribution]
model = "position_based"
[commission]
lock_period = "1d"
TOML
cp "$DIR/plain.toml" "$DIR/shadow4.toml"
sed -i 's/^model = "position_based"$/&\nshadow_models = ["last_touch", "first_touch", "linear", "time_decay"]/' "$DIR/shadow4.toml"

# instructions BIN CONFIG [extra replay args...]
instructions() {
  local bin=$1 config=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file=/dev/null \
    "$bin" replay --quiet --config "$config" --out /dev/null "$@" "$WORKLOAD" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-44s %16s %8s\n' "case ($(wc -l < "$WORKLOAD") lines)" "instructions" "ratio"
plain=$(instructions "$BIN" "$DIR/plain.toml")
if [ -n "$BASE" ]; then
  base=$(instructions "$BASE" "$DIR/plain.toml")
  printf '%-44s %16s %8s\n' "base binary, no shadow models" "$base" "1.000"
  printf '%-44s %16s %8.3f\n' "this binary, no shadow models" "$plain" "$(awk "BEGIN { print $plain / $base }")"
else
  printf '%-44s %16s %8s\n' "no shadow models" "$plain" "1.000"
fi
counted=$(instructions "$BIN" "$DIR/shadow4.toml")
printf '%-44s %16s %8.3f\n' "4 shadow models, counted, not written" "$counted" "$(awk "BEGIN { print $counted / $plain }")"
written=$(instructions "$BIN" "$DIR/shadow4.toml" --shadow-out /dev/null)
printf '%-44s %16s %8.3f\n' "4 shadow models, --shadow-out" "$written" "$(awk "BEGIN { print $written / $plain }")"

#!/usr/bin/env bash
# sha256 of replay outputs on the reference workloads: run it before and after a change
# that must keep output byte-identical, and diff the two sums files.
#
#   scripts/output-sums.sh [BIN] [OUTDIR]     (defaults: target/release/attrib, target/sums)
#
# Workloads (made once with `attrib gen` into $WORKLOADS, default target/workloads):
#   gen1m   --events 1000000 --seed 7 --duplicates 0.01 --invalid 0.001
#   gen300k --events 300000 --seed 3 --duplicates 0.02 --invalid 0.002 --refunds 0.2 --users 5000
#           (hot shoppers past max_touches_per_user)
#   genref  --events 300000 --seed 5 --duplicates 0.01 --invalid 0.001 --refunds 0.3 --rate 0.3 --users 20000
# Runs: gen1m default config (records + dead letters); gen300k under each of the five
# models; genref under an edge config (position_based, short and per-surface windows,
# self-attribution, lateness 10m, refund window 3d, rate 777, a category rule, a lock
# period, four shadow models), also with --jobs 2, which must equal --jobs 1.
# Writes OUTDIR/sums and prints it.
set -euo pipefail
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/release/attrib}")
OUT=$(mkdir -p "${2:-target/sums}" && realpath "${2:-target/sums}")
WL=$(mkdir -p "${WORKLOADS:-target/workloads}" && realpath "${WORKLOADS:-target/workloads}")
gen() { [ -s "$WL/$1.jsonl" ] || "$BIN" gen "${@:2}" --out "$WL/$1.jsonl"; }
gen gen1m --events 1000000 --seed 7 --duplicates 0.01 --invalid 0.001
gen gen300k --events 300000 --seed 3 --duplicates 0.02 --invalid 0.002 --refunds 0.2 --users 5000
gen genref --events 300000 --seed 5 --duplicates 0.01 --invalid 0.001 --refunds 0.3 --rate 0.3 --users 20000
for m in last_touch first_touch linear position_based time_decay; do
  printf '[attribution]\nmodel = "%s"\n' "$m" > "$OUT/$m.toml"
done
cat > "$OUT/edge.toml" <<'TOML'
[attribution]
model = "position_based"
click_window = "2h"
view_window = "30m"
allow_self_attribution = true
shadow_models = ["last_touch", "first_touch", "linear", "time_decay"]
[attribution.surface.live]
click_window = "1h"
[time]
max_out_of_orderness = "1s"
allowed_lateness = "10m"
refund_window = "3d"
[commission]
default_rate_bps = 777
lock_period = "1d"
[[commission.rules]]
id = "r1"
category = "beauty"
rate_bps = 1234
TOML
# Inputs by file name from their directory: dead letters name their source file.
cd "$WL"
r() { "$BIN" replay --quiet "$@" 2>/dev/null; }
r --out "$OUT/gen1m.out" --dlq "$OUT/gen1m.dlq" gen1m.jsonl
for m in last_touch first_touch linear position_based time_decay; do
  r --config "$OUT/$m.toml" --out "$OUT/gen300k.$m.out" --dlq "$OUT/gen300k.$m.dlq" gen300k.jsonl
done
r --config "$OUT/edge.toml" --out "$OUT/genref.edge.out" --shadow-out "$OUT/genref.edge.shadow" --dlq "$OUT/genref.edge.dlq" genref.jsonl
r --config "$OUT/edge.toml" --jobs 2 --out "$OUT/j2.out" --shadow-out "$OUT/j2.shadow" genref.jsonl
cmp -s "$OUT/genref.edge.out" "$OUT/j2.out" && cmp -s "$OUT/genref.edge.shadow" "$OUT/j2.shadow" ||
  { echo "--jobs 2 differs from --jobs 1 on genref/edge" >&2; exit 1; }
(cd "$OUT" && sha256sum gen1m.out gen1m.dlq gen300k.*.out gen300k.*.dlq genref.edge.out genref.edge.shadow genref.edge.dlq > sums)
cat "$OUT/sums"

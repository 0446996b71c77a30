#!/usr/bin/env bash
# usage: scripts/bench_jobs.sh BIN FILE [JOBS...]  -- replay FILE with each --jobs value,
# 3 runs each, and print the median events/s (as reported in the replay summary) and the
# speed-up over the first JOBS value. Run it under `flock /tmp/bench.lock` on a shared box.
set -euo pipefail
BIN=$1; FILE=$2; shift 2
JOBS=("${@:-1 2}"); [ $# -eq 0 ] && JOBS=(1 2)
printf '%-6s %14s %14s %14s %14s %8s\n' jobs run1 run2 run3 median speedup
base=
for j in "${JOBS[@]}"; do
  rates=()
  for _ in 1 2 3; do
    r=$("$BIN" replay --quiet --jobs "$j" --out /dev/null "$FILE" 2>&1 | sed -n 's/.* = \([0-9]*\) events\/s/\1/p')
    rates+=("$r")
  done
  med=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)
  [ -z "$base" ] && base=$med
  printf '%-6s %14s %14s %14s %14s %7.2fx\n' "$j" "${rates[@]}" "$med" "$(echo "$med / $base" | bc -l)"
done

#!/usr/bin/env bash
# The Kafka macro benchmark (issue 4): the worker end to end against a real broker.
#
# usage: scripts/bench-kafka.sh [events]          (default 2000000)
#        scripts/bench-kafka.sh --secure [events] (what TLS + SASL cost; see below)
#
# On fresh topics (4 partitions each) it produces one seeded `attrib gen` workload
# (--duplicates 0.01 --refunds 0.05) with `attrib produce --flush-marker`, then measures
# on those same input topics:
#   (a) examples/kafka_count: a plain consumer that only counts the messages (the ceiling);
#   (b) `attrib run --stop-at-end`, exactly-once (its own group, transactional id and
#       output, dead-letter and state topics): events/s from its `caught up` log line;
#   (c) the same with kafka.exactly_once = false;
#   (r) (b) with kafka.repartition = true: the same inputs re-keyed through the worker's
#       re-key stage and internal topic first (SPEC 8.6), so (r) against (b) is what
#       repartitioning costs (skip with BENCH_REPARTITION=0);
# then the latency runs: a worker on empty fresh topics, `attrib produce --rate R` with
# R = half of (b)'s rate for BENCH_LATENCY_SECS of events, SIGTERM, and the worker's
# `processing latency` log line; exactly-once on, then off.
#
# --secure (a broker from `scripts/kafka.sh start --secure`): instead of (a)-(c) and the
# latency runs, the same producer and worker over plaintext and over the SASL_SSL
# listener (SCRAM-SHA-512 over TLS, ACLs on, user attrib): `attrib produce` into fresh
# inputs each way, and (b) `attrib run --stop-at-end` exactly-once on the plaintext-loaded
# inputs each way. Takes the listener, CA and password from $KAFKA_HOME_DIR/secure.
#
# Prints a table (also in target/bench/<run>/result.md) with the machine and the exact
# commands; raw logs in target/bench/<run>/. Deletes the topics and consumer groups it
# created and stops every process it started, also on failure or Ctrl-C. Never stops
# the broker; without one it says how to start it and exits 2.
#
# Environment (all optional):
#   BENCH_BROKERS       bootstrap servers                   (default 127.0.0.1:9092)
#   BENCH_SEED          seed of the throughput workload     (default 7; latency: seed + 1)
#   BENCH_LATENCY_SECS  seconds of events per latency run   (default 60)
#   BENCH_LATENCY_RATE  events/s of the latency runs        (default: half of (b))
#   BENCH_ALO_LATENCY   0: skip the latency run without transactions (default 1)
#   BENCH_LATENCY_FLUSH 1: end each latency load with flush markers (default 0). The
#                       markers move the watermark past the last ~max_out_of_orderness
#                       of held purchases at once, so the last commit times that burst
#                       (a fifth of a 30 s run's records), not the steady half load the
#                       latency target is about; runs before 2026-12-03 were made with it
#   BENCH_IDLE_WAIT     seconds a latency worker waits before the load (default 35: the
#                       always-empty refunds topic must count as idle first, see latency_run)
#   BENCH_TIMEOUT       seconds any one worker run may take (default 1800)
#   BENCH_KEEP_TOPICS   1: keep the topics and groups (default 0)
#   BENCH_REPARTITION   0: skip the repartitioning run (r) (default 1)
# Other ATTRIB__* variables reach the workers unchanged, e.g.
# ATTRIB__KAFKA__SNAPSHOT_INTERVAL=1h scripts/bench-kafka.sh.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
KAFKA_SH="$SCRIPT_DIR/kafka.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
ATTRIB="$TARGET_DIR/release/attrib"
KAFKA_COUNT="$TARGET_DIR/release/examples/kafka_count"

SECURE=no
if [[ ${1:-} == --secure ]]; then
    SECURE=yes
    shift
fi
EVENTS=${1:-2000000}
KAFKA_HOME_DIR=${KAFKA_HOME_DIR:-$REPO_ROOT/target/kafka}
SECURE_DIR="$KAFKA_HOME_DIR/secure"
BROKERS=${BENCH_BROKERS:-127.0.0.1:9092}
SEED=${BENCH_SEED:-7}
LATENCY_SECS=${BENCH_LATENCY_SECS:-60}
LATENCY_RATE=${BENCH_LATENCY_RATE:-}
ALO_LATENCY=${BENCH_ALO_LATENCY:-1}
LATENCY_FLUSH=${BENCH_LATENCY_FLUSH:-0}
LAT_FLUSH_ARGS=()
[[ $LATENCY_FLUSH == 1 ]] && LAT_FLUSH_ARGS=(--flush-marker)
IDLE_WAIT=${BENCH_IDLE_WAIT:-35}
RUN_TIMEOUT=${BENCH_TIMEOUT:-1800}
KEEP_TOPICS=${BENCH_KEEP_TOPICS:-0}
REPARTITION=${BENCH_REPARTITION:-1}
PARTITIONS=4

RUN_ID="bench-$(date -u +%Y%m%d%H%M%S)-$$"
BENCH_DIR="$TARGET_DIR/bench"
OUT="$BENCH_DIR/$RUN_ID"
COMMANDS="$OUT/commands.sh"

say() { echo "bench-kafka: $(date -u +%H:%M:%S) $*" >&2; }
die() { echo "bench-kafka: error: $*" >&2; exit 1; }

[[ $EVENTS =~ ^[1-9][0-9]*$ ]] || die "events must be a positive integer, got '$EVENTS'"
[[ $LATENCY_SECS =~ ^[1-9][0-9]*$ ]] || die "BENCH_LATENCY_SECS must be a positive integer"
[[ -z $LATENCY_RATE || $LATENCY_RATE =~ ^[1-9][0-9]*$ ]] || die "BENCH_LATENCY_RATE must be a positive integer"
[[ $IDLE_WAIT =~ ^[0-9]+$ ]] || die "BENCH_IDLE_WAIT must be a number of seconds"
[[ $RUN_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMEOUT must be a positive number of seconds"

# ---------------------------------------------------------------------------
# Processes and topics we own, cleaned up on any exit.

PIDS=()
TOPICS_CREATED=no
GROUPS_USED=()

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        local k=0
        while kill -0 "$pid" 2>/dev/null && (( k < 100 )); do sleep 0.1; k=$((k + 1)); done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ $TOPICS_CREATED == yes && $KEEP_TOPICS != 1 ]]; then
        say "deleting topics ${RUN_ID}-* and the consumer groups"
        kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKERS" \
            --delete --topic "${RUN_ID}-.*" >>"$OUT/cleanup.log" 2>&1 ||
            say "deleting the topics failed (see $OUT/cleanup.log)"
        if (( ${#GROUPS_USED[@]} > 0 )); then
            local args=() g
            for g in "${GROUPS_USED[@]}"; do args+=(--group "$g"); done
            kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
                --bootstrap-server "$BROKERS" --delete "${args[@]}" >>"$OUT/cleanup.log" 2>&1 || true
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

kafka_tool() {
    "$KAFKA_SH" run-class "$@" 2> >(grep -v 'limitations in metric names' >&2)
}

# Appends a command line to commands.sh, as it can be pasted into a shell.
note_command() {
    printf '%q ' "$@" >>"$COMMANDS"
    printf '\n' >>"$COMMANDS"
}

# ---------------------------------------------------------------------------
# The broker must already run.

broker_answers() {
    local hostport=${BROKERS%%,*} host port
    host=${hostport%:*}
    port=${hostport##*:}
    timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" >/dev/null 2>&1
}

if ! broker_answers; then
    cat >&2 <<EOF
bench-kafka: no Kafka broker answers at $BROKERS.
Start one with:

    scripts/kafka.sh start

(or point BENCH_BROKERS at a running broker), then run this again.
EOF
    exit 2
fi

mkdir -p "$OUT"
: >"$COMMANDS"
say "run $RUN_ID, $EVENTS events, logs in $OUT"

# ---------------------------------------------------------------------------
# Build and workload.

say "building (release): attrib and examples/kafka_count"
(cd "$REPO_ROOT" && cargo build --release --bin attrib --example kafka_count) >"$OUT/build.log" 2>&1 ||
    { tail -n 40 "$OUT/build.log" >&2; die "cargo build failed (output above, all of it in $OUT/build.log)"; }

"$ATTRIB" run --help 2>/dev/null | grep -q -- '--stop-at-end' ||
    die "$ATTRIB run has no --stop-at-end (needed for (b) and (c)); is the tree up to date?"

WORKLOAD="$BENCH_DIR/workload-$EVENTS-seed$SEED.jsonl"
gen_args=(gen --events "$EVENTS" --seed "$SEED" --duplicates 0.01 --refunds 0.05 --out "$WORKLOAD")
note_command "$ATTRIB" "${gen_args[@]}"
say "generating $WORKLOAD"
"$ATTRIB" "${gen_args[@]}"

# ---------------------------------------------------------------------------
# Topics: one set of inputs for (a)-(c), outputs per run, fresh inputs per latency run.

topic() { echo "$RUN_ID-$1"; }

INPUT_KINDS=(views clicks purchases refunds)
inputs_of() { # inputs_of SET -> comma-separated input topics of that set
    local set=$1 out=() k
    for k in "${INPUT_KINDS[@]}"; do out+=("$(topic "$set-$k")"); done
    (IFS=,; echo "${out[*]}")
}

latency_runs=(eo)
[[ $ALO_LATENCY == 1 ]] && latency_runs+=(alo)

to_create=()
for k in "${INPUT_KINDS[@]}"; do to_create+=("$(topic "in-$k")"); done
if [[ $SECURE == yes ]]; then
    [[ -s $SECURE_DIR/bootstrap ]] ||
        die "no secure listener ($SECURE_DIR/bootstrap missing): start the broker with scripts/kafka.sh start --secure"
    SECURE_BROKERS=$(cat "$SECURE_DIR/bootstrap")
    for k in "${INPUT_KINDS[@]}"; do to_create+=("$(topic "sin-$k")"); done
    for r in eo sec; do to_create+=("$(topic "$r-commissions")" "$(topic "$r-dlq")"); done
else
    for r in eo alo rp; do to_create+=("$(topic "$r-commissions")" "$(topic "$r-dlq")"); done
    for r in "${latency_runs[@]}"; do
        for k in "${INPUT_KINDS[@]}"; do to_create+=("$(topic "lat$r-$k")"); done
        to_create+=("$(topic "lat$r-commissions")" "$(topic "lat$r-dlq")")
    done
fi

say "creating ${#to_create[@]} topics ($PARTITIONS partitions each; state topics: by the workers)"
TOPICS_CREATED=yes
# shellcheck disable=SC2016  # "$t" is for the reader's shell
printf 'for t in %s; do\n    %q run-class org.apache.kafka.tools.TopicCommand --bootstrap-server %q --create --topic "$t" --partitions %s --replication-factor 1\ndone\n' \
    "${to_create[*]}" "$KAFKA_SH" "$BROKERS" "$PARTITIONS" >>"$COMMANDS"
# One JVM per topic; four at a time on a small machine.
printf '%s\n' "${to_create[@]}" |
    xargs -P 4 -I '{}' "$KAFKA_SH" run-class org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BROKERS" --create --topic '{}' --partitions "$PARTITIONS" \
        --replication-factor 1 >"$OUT/topics.log" 2>&1 ||
    { grep -v 'limitations in metric names' "$OUT/topics.log" | tail -n 20 >&2; die "creating topics failed"; }

# The worker's environment, as tests/broker/ worker_env sets it: SET names the run.
worker_env() { # worker_env SET INPUT_SET
    local set=$1 inputs
    inputs=$(inputs_of "$2")
    WENV=(
        "ATTRIB__KAFKA__BROKERS=$BROKERS"
        "ATTRIB__KAFKA__GROUP_ID=$(topic "$set-group")"
        "ATTRIB__KAFKA__INPUT_TOPICS=[$inputs]"
        "ATTRIB__KAFKA__OUTPUT_TOPIC=$(topic "$set-commissions")"
        "ATTRIB__KAFKA__DLQ_TOPIC=$(topic "$set-dlq")"
        "ATTRIB__KAFKA__STATE_TOPIC=$(topic "$set-state")"
        "ATTRIB__KAFKA__TRANSACTIONAL_ID=$(topic "$set-worker")"
        "RUST_LOG=info"
        "NO_COLOR=1"
    )
    GROUPS_USED+=("$(topic "$set-group")")
}

# Only the keys produce reads (brokers and input topics).
producer_env() { # producer_env INPUT_SET
    PENV=("ATTRIB__KAFKA__BROKERS=$BROKERS" "ATTRIB__KAFKA__INPUT_TOPICS=[$(inputs_of "$1")]")
}

# Reads `key=value` from a tracing text line (ANSI colours stripped).
field() { # field NAME LINE
    awk -v k="$1=" '{
        gsub(/\x1b\[[0-9;]*m/, "")
        for (i = 1; i <= NF; i++) if (index($i, k) == 1) { v = substr($i, length(k) + 1); gsub(/"/, "", v); print v; exit }
    }' <<<"$2"
}

last_line() { # last_line PATTERN FILE
    sed 's/\x1b\[[0-9;]*m//g' "$2" | grep -F -- "$1" | tail -n 1 || true
}

# Messages of the group's input partitions past its committed offsets (a partition
# without a committed offset counts whole); "n/a" when the group cannot be described.
group_lag() { # group_lag GROUP
    local out
    out=$(kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server "$BROKERS" \
        --describe --group "$1" 2>/dev/null) || { echo n/a; return; }
    awk '$3 ~ /^[0-9]+$/ { rows++; lag += ($4 ~ /^[0-9]+$/) ? $6 : $5 } END { print rows ? lag : "n/a" }' <<<"$out"
}

# Waits until a process exits; kills it after `secs`. Returns its exit status.
wait_pid() { # wait_pid PID SECS WHAT
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS >= deadline )); then
            say "$3 still running after $2 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    local rc=0
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# A reaped pid may be reused: never signal it again.
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

wait_log() { # wait_log PATTERN FILE SECS PID -> 0 when the pattern appeared
    local deadline=$((SECONDS + $3))
    while (( SECONDS < deadline )); do
        grep -qF -- "$1" "$2" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------
# Load the inputs once.

producer_env in
note_command env "${PENV[@]}" "$ATTRIB" produce --flush-marker "$WORKLOAD"
say "producing the workload into $(inputs_of in)"
env "${PENV[@]}" "$ATTRIB" produce --flush-marker "$WORKLOAD" 2>"$OUT/produce.log" ||
    { cat "$OUT/produce.log" >&2; die "attrib produce failed"; }
PRODUCE_LINE=$(grep '^produced ' "$OUT/produce.log" || true)
say "${PRODUCE_LINE:-produced}"

MACHINE_LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)


# ---------------------------------------------------------------------------
# (a) the ceiling.

if [[ $SECURE == no ]]; then
    count_args=(--brokers "$BROKERS" --topics "$(inputs_of in)")
    note_command "$KAFKA_COUNT" "${count_args[@]}"
    say "(a) kafka_count over the inputs"
    "$KAFKA_COUNT" "${count_args[@]}" >"$OUT/a-kafka_count.log" 2>&1 ||
        { cat "$OUT/a-kafka_count.log" >&2; die "kafka_count failed"; }
    A_LINE=$(grep '^kafka_count:' "$OUT/a-kafka_count.log")
    say "$A_LINE"
    A_MSGS=$(awk '{print $2}' <<<"$A_LINE")
    A_SECS=$(awk '{for (i = 1; i <= NF; i++) if ($i == "in") print $(i + 1)}' <<<"$A_LINE")
    A_RATE=$(awk '{for (i = 1; i <= NF; i++) if ($i == "=") print $(i + 1)}' <<<"$A_LINE")
fi

# ---------------------------------------------------------------------------
# (b), (c): the worker catching up on the same inputs.

# Sets RUN_EVENTS RUN_SECS RUN_RATE RUN_WALL RUN_RECORDS. EXTRA_WENV: more worker settings.
EXTRA_WENV=()
catch_up() { # catch_up SET EXACTLY_ONCE [secure]
    local set=$1 eo=$2 log="$OUT/$1-worker.log"
    worker_env "$set" in
    WENV+=("ATTRIB__KAFKA__EXACTLY_ONCE=$eo")
    [[ ${3:-} == secure ]] && WENV+=("${SECURE_ENV[@]}")
    WENV+=("${EXTRA_WENV[@]}")
    note_command env "${WENV[@]}" "$ATTRIB" run --stop-at-end
    local started=$EPOCHREALTIME secret=()
    [[ ${3:-} == secure ]] && secret=("ATTRIB__KAFKA__CLIENT__SASL_PASSWORD=$SECURE_PASSWORD")
    env "${WENV[@]}" "${secret[@]}" "$ATTRIB" run --stop-at-end >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_pid "$pid" "$RUN_TIMEOUT" "attrib run ($set)" ||
        { tail -n 30 "$log" >&2; die "attrib run --stop-at-end ($set) failed; log: $log"; }
    RUN_WALL=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    local line
    line=$(last_line "caught up" "$log")
    [[ -n $line ]] || { tail -n 30 "$log" >&2; die "no 'caught up' line in $log"; }
    RUN_EVENTS=$(field events "$line")
    RUN_SECS=$(field secs "$line")
    RUN_RATE=$(field events_per_sec "$line")
    RUN_RECORDS=$(field records "$(last_line "stopped" "$log")")
}

# ---------------------------------------------------------------------------
# --secure: plaintext vs SASL_SSL, producer and worker.

if [[ $SECURE == yes ]]; then
    # The password reaches attrib through the environment only; commands.sh shows where
    # it comes from, never the value.
    SECURE_PASSWORD=$(cat "$SECURE_DIR/attrib.password")
    # shellcheck disable=SC2016  # for the reader's shell
    printf '# the SASL_SSL commands below also get ATTRIB__KAFKA__CLIENT__SASL_PASSWORD="$(cat %q)"\n' \
        "$SECURE_DIR/attrib.password" >>"$COMMANDS"
    SECURE_ENV=(
        "ATTRIB__KAFKA__BROKERS=$SECURE_BROKERS"
        "ATTRIB__KAFKA__CLIENT__SECURITY_PROTOCOL=SASL_SSL"
        "ATTRIB__KAFKA__CLIENT__SASL_MECHANISM=SCRAM-SHA-512"
        "ATTRIB__KAFKA__CLIENT__SASL_USERNAME=attrib"
        "ATTRIB__KAFKA__CLIENT__SSL_CA_LOCATION=$SECURE_DIR/ca.pem"
    )
    in_topics=() sin_topics=()
    for k in "${INPUT_KINDS[@]}"; do in_topics+=("$(topic "in-$k")"); sin_topics+=("$(topic "sin-$k")"); done
    grant=("$KAFKA_SH" grant-worker attrib "$(topic sec-group)" "$(topic sec-worker)" "$(topic sec-state)"
           "$(topic sec-commissions)" "$(topic sec-dlq)" "${in_topics[@]}")
    note_command "${grant[@]}"
    note_command "$KAFKA_SH" grant-producer attrib "${sin_topics[@]}"
    say "granting the attrib user the worker's ACLs and Write on $(inputs_of sin)"
    { "${grant[@]}" && "$KAFKA_SH" grant-producer attrib "${sin_topics[@]}"; } >"$OUT/acls.log" 2>&1 ||
        { cat "$OUT/acls.log" >&2; die "adding ACLs failed (is the broker started with --secure?)"; }

    producer_env sin
    PENV+=("${SECURE_ENV[@]}")
    note_command env "${PENV[@]}" "$ATTRIB" produce --flush-marker "$WORKLOAD"
    say "producing the workload over SASL_SSL into $(inputs_of sin)"
    env "${PENV[@]}" "ATTRIB__KAFKA__CLIENT__SASL_PASSWORD=$SECURE_PASSWORD" \
        "$ATTRIB" produce --flush-marker "$WORKLOAD" 2>"$OUT/produce-secure.log" ||
        { cat "$OUT/produce-secure.log" >&2; die "attrib produce over SASL_SSL failed"; }
    SPRODUCE_LINE=$(grep '^produced ' "$OUT/produce-secure.log" || true)
    say "${SPRODUCE_LINE:-produced}"

    say "(b) attrib run --stop-at-end, exactly-once, plaintext"
    catch_up eo true
    B_EVENTS=$RUN_EVENTS B_SECS=$RUN_SECS B_RATE=$RUN_RATE B_WALL=$RUN_WALL
    say "(b) $B_EVENTS events in $B_SECS s = $B_RATE events/s (process $B_WALL s)"
    say "(s) attrib run --stop-at-end, exactly-once, SASL_SSL"
    catch_up sec true secure
    S_EVENTS=$RUN_EVENTS S_SECS=$RUN_SECS S_RATE=$RUN_RATE S_WALL=$RUN_WALL
    say "(s) $S_EVENTS events in $S_SECS s = $S_RATE events/s (process $S_WALL s)"
    MACHINE_LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
    rate_of() { awk '{for (i = 1; i <= NF; i++) if ($i == "=") print $(i + 1)}' <<<"$1"; }
    secs_of() { awk '{for (i = 1; i <= NF; i++) if ($i == "in") print $(i + 1)}' <<<"$1"; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
    {
        echo "## Kafka TLS + SASL cost: $RUN_ID"
        echo
        echo "$EVENTS generated events (seed $SEED, --duplicates 0.01 --refunds 0.05), 4 input topics x"
        echo "$PARTITIONS partitions. Plaintext: $BROKERS; secure: $SECURE_BROKERS (SASL_SSL, SCRAM-SHA-512, TLS, ACLs)."
        echo
        echo "| run | plaintext s | plaintext events/s | SASL_SSL s | SASL_SSL events/s | SASL_SSL / plaintext |"
        echo "|---|---:|---:|---:|---:|---:|"
        echo "| attrib produce --flush-marker (unpaced) | $(secs_of "$PRODUCE_LINE") | $(rate_of "$PRODUCE_LINE") | $(secs_of "$SPRODUCE_LINE") | $(rate_of "$SPRODUCE_LINE") | $(ratio "$(rate_of "$SPRODUCE_LINE")" "$(rate_of "$PRODUCE_LINE")") |"
        echo "| attrib run --stop-at-end, exactly-once (\`caught up\` line) | $B_SECS | $B_RATE | $S_SECS | $S_RATE | $(ratio "$S_RATE" "$B_RATE") |"
        echo
        echo "Whole worker process (start, join, restore, catch-up, final commit, exit): plaintext $B_WALL s, SASL_SSL $S_WALL s."
        echo "Machine: $(nproc) cores; load average $MACHINE_LOAD_START at the start, $MACHINE_LOAD_END at the end."
        echo "Commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO_ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')."
        echo
        echo "Commands (in order):"
        echo
        echo '```sh'
        sed "s#$REPO_ROOT/##g" "$COMMANDS"
        echo '```'
    } >"$OUT/result.md"
    cat "$OUT/result.md"
    say "done; logs and result.md in $OUT"
    exit 0
fi


say "(b) attrib run --stop-at-end, exactly-once"
catch_up eo true
B_EVENTS=$RUN_EVENTS B_SECS=$RUN_SECS B_RATE=$RUN_RATE B_WALL=$RUN_WALL B_RECORDS=$RUN_RECORDS
say "(b) $B_EVENTS events in $B_SECS s = $B_RATE events/s (process $B_WALL s, records $B_RECORDS)"

say "(c) attrib run --stop-at-end, exactly-once off"
catch_up alo false
C_EVENTS=$RUN_EVENTS C_SECS=$RUN_SECS C_RATE=$RUN_RATE C_WALL=$RUN_WALL C_RECORDS=$RUN_RECORDS
say "(c) $C_EVENTS events in $C_SECS s = $C_RATE events/s (process $C_WALL s, records $C_RECORDS)"

R_EVENTS= R_SECS= R_RATE= R_WALL= R_RECORDS=
if [[ $REPARTITION == 1 ]]; then
    # The re-key stage's consumer group and internal topic (<group>-repartition, under
    # RUN_ID, so the topic cleanup takes it too).
    GROUPS_USED+=("$(topic "rp-group")-repartitioner")
    say "(r) attrib run --stop-at-end, exactly-once, kafka.repartition = true"
    EXTRA_WENV=("ATTRIB__KAFKA__REPARTITION=true")
    catch_up rp true
    EXTRA_WENV=()
    R_EVENTS=$RUN_EVENTS R_SECS=$RUN_SECS R_RATE=$RUN_RATE R_WALL=$RUN_WALL R_RECORDS=$RUN_RECORDS
    say "(r) $R_EVENTS events in $R_SECS s = $R_RATE events/s (process $R_WALL s, records $R_RECORDS)"
    [[ $R_RECORDS == "$B_RECORDS" ]] || say "(r) wrote $R_RECORDS records, (b) $B_RECORDS: they should be equal"
fi

MACHINE_LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------
# Latency: a running worker fed at a steady rate.

if [[ -z $LATENCY_RATE ]]; then
    LATENCY_RATE=$(awk -v r="$B_RATE" 'BEGIN { r = int(r / 2); print (r < 1 ? 1 : r) }')
fi
LAT_EVENTS=$((LATENCY_RATE * LATENCY_SECS))
LAT_WORKLOAD="$BENCH_DIR/latency-$LAT_EVENTS-rate$LATENCY_RATE-seed$((SEED + 1)).jsonl"
# Event time runs at the send rate (gen --rate): one second of event time per second.
lat_gen_args=(gen --events "$LAT_EVENTS" --seed "$((SEED + 1))" --rate "$LATENCY_RATE"
              --duplicates 0.01 --refunds 0.05 --out "$LAT_WORKLOAD")
note_command "$ATTRIB" "${lat_gen_args[@]}"
say "generating the latency workload: $LAT_EVENTS events for $LATENCY_RATE events/s"
"$ATTRIB" "${lat_gen_args[@]}"

declare -A LAT_LINE LAT_PRODUCED LAT_LAG
latency_run() { # latency_run eo|alo
    local r=$1 set="lat$1" eo=true
    [[ $r == alo ]] && eo=false
    local log="$OUT/$set-worker.log"
    worker_env "$set" "$set"
    WENV+=("ATTRIB__KAFKA__EXACTLY_ONCE=$eo")
    note_command env "${WENV[@]}" "$ATTRIB" run
    env "${WENV[@]}" "$ATTRIB" run >"$log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_log "partitions assigned" "$log" 120 "$pid" ||
        { tail -n 30 "$log" >&2; die "the latency worker ($set) got no partitions; log: $log"; }
    # Empty inputs (the refunds topic: refunds come 1 h to 30 days after their purchase,
    # later than this workload's event time) hold the watermark until time.idle_timeout
    # (30 s) says they are idle; wait that out first, so the runs measure the steady state.
    say "latency ($r): worker up; waiting $IDLE_WAIT s for empty inputs to count as idle"
    sleep "$IDLE_WAIT"
    producer_env "$set"
    note_command env "${PENV[@]}" "$ATTRIB" produce --rate "$LATENCY_RATE" "${LAT_FLUSH_ARGS[@]}" "$LAT_WORKLOAD"
    say "latency ($r): producing $LAT_EVENTS events at $LATENCY_RATE events/s"
    env "${PENV[@]}" "$ATTRIB" produce --rate "$LATENCY_RATE" "${LAT_FLUSH_ARGS[@]}" "$LAT_WORKLOAD" \
        2>"$OUT/$set-produce.log" || { cat "$OUT/$set-produce.log" >&2; die "attrib produce --rate failed"; }
    LAT_PRODUCED[$r]=$(grep '^produced ' "$OUT/$set-produce.log" || true)
    say "latency ($r): ${LAT_PRODUCED[$r]}"
    sleep 5 # the last commits (commit_interval 200 ms)
    kill -TERM "$pid"
    wait_pid "$pid" 120 "attrib run ($set)" || say "latency worker ($set) exited non-zero; log: $log"
    LAT_LINE[$r]=$(last_line "processing latency" "$log")
    [[ -n ${LAT_LINE[$r]} ]] || say "no 'processing latency' line in $log"
    LAT_LAG[$r]=$(group_lag "$(topic "$set-group")")
    [[ ${LAT_LAG[$r]} == 0 ]] || say "latency ($r): input not committed after SIGTERM: ${LAT_LAG[$r]}"
}

for r in "${latency_runs[@]}"; do
    latency_run "$r"
done

# ---------------------------------------------------------------------------
# The table.

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ms() { awk -v u="$1" 'BEGIN { if (u == "") print "n/a"; else printf "%.1f", u / 1000 }'; }
fmt_int() { awk -v n="$1" 'BEGIN { if (n == "") { print "n/a"; exit } s = sprintf("%.0f", n); o = "";
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }

{
    echo "## Kafka macro benchmark: $RUN_ID"
    echo
    echo "$EVENTS generated events (seed $SEED, --duplicates 0.01 --refunds 0.05), produced once with"
    echo "--flush-marker into 4 input topics x $PARTITIONS partitions: $A_MSGS messages."
    echo "${PRODUCE_LINE:+Producer (attrib produce, unpaced): $PRODUCE_LINE.}"
    echo
    echo "| run | messages | seconds | events/s | vs (a) |"
    echo "|---|---:|---:|---:|---:|"
    echo "| (a) kafka_count (plain consumer, counts only) | $(fmt_int "$A_MSGS") | $A_SECS | $(fmt_int "$A_RATE") | 1.00 |"
    echo "| (b) attrib run --stop-at-end, exactly-once | $(fmt_int "$B_EVENTS") | $B_SECS | $(fmt_int "$B_RATE") | $(ratio "$B_RATE" "$A_RATE") |"
    echo "| (c) attrib run --stop-at-end, exactly_once = false | $(fmt_int "$C_EVENTS") | $C_SECS | $(fmt_int "$C_RATE") | $(ratio "$C_RATE" "$A_RATE") |"
    if [[ -n $R_RATE ]]; then
        echo "| (r) (b) with kafka.repartition = true | $(fmt_int "$R_EVENTS") | $R_SECS | $(fmt_int "$R_RATE") | $(ratio "$R_RATE" "$A_RATE") |"
    fi
    echo
    echo "(b) and (c): from the worker's \`caught up\` line; whole process (start, join, restore,"
    echo "catch-up, final commit, exit): (b) $B_WALL s, (c) $C_WALL s. Records written: (b) $B_RECORDS, (c) $C_RECORDS."
    if [[ -n $R_RATE ]]; then
        echo "(r): process $R_WALL s, records $R_RECORDS; repartitioning runs at $(ratio "$R_RATE" "$B_RATE") of (b)'s rate"
        echo "(its \`caught up\` line comes once the joiner has heard every source partition idle at its end)."
    fi
    echo
    echo "Latency ($LATENCY_SECS s of events at $(fmt_int "$LATENCY_RATE") events/s = half of (b); worker running"
    if [[ $LATENCY_FLUSH == 1 ]]; then
        echo "on empty fresh topics, then \`attrib produce --rate --flush-marker\`, then SIGTERM; the markers"
        echo "release the last held purchases at once, and their burst is timed too). Message received to its"
    else
        echo "on empty fresh topics, then \`attrib produce --rate\` without flush markers, then SIGTERM: the"
        echo "steady load only; purchases still held by the watermark at the end are not timed). Message received to its"
    fi
    echo "records committed, in ms:"
    echo
    echo "| run | records timed | p50 | p99 | p99.9 | max | input left after SIGTERM | producer |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    for r in "${latency_runs[@]}"; do
        line=${LAT_LINE[$r]:-}
        name="exactly-once"
        [[ $r == alo ]] && name="exactly_once = false"
        echo "| $name | $(fmt_int "$(field count "$line")") | $(ms "$(field p50_us "$line")") | $(ms "$(field p99_us "$line")") | $(ms "$(field p999_us "$line")") | $(ms "$(field max_us "$line")") | ${LAT_LAG[$r]:-n/a} | ${LAT_PRODUCED[$r]#produced } |"
    done
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'),"
    echo "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r);"
    echo "load average (1/5/15 min) $MACHINE_LOAD_START before (a), $MACHINE_LOAD_END after (c)."
    echo "Commit $(cd "$REPO_ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO_ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes'); broker $BROKERS ($KAFKA_SH)."
    echo
    echo "Commands (in order):"
    echo
    echo '```sh'
    sed "s#$REPO_ROOT/##g" "$COMMANDS"
    echo '```'
} >"$OUT/result.md"

cat "$OUT/result.md"
say "done; logs and result.md in $OUT"

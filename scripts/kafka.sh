#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller)
# for developing and testing attrib, with no Docker and no Kafka download
# besides Maven Central. See docs/kafka.md.
#
# usage: scripts/kafka.sh start [--secure]  # --secure: also a SASL_SSL listener, ACLs on
#        scripts/kafka.sh stop [--clean]
#        scripts/kafka.sh status
#        scripts/kafka.sh topics ARGS...       # org.apache.kafka.tools.TopicCommand
#        scripts/kafka.sh run-class CLASS ARGS...  # any class on the Kafka classpath
#        scripts/kafka.sh grant-worker USER GROUP TXN_PREFIX STATE OUTPUT DLQ INPUT...
#        scripts/kafka.sh grant-producer USER TOPIC...   # Write (attrib produce, loaders)
#
# Environment (all optional):
#   KAFKA_HOME_DIR         where everything lives      (default <repo>/target/kafka)
#   KAFKA_LIBS_DIR         the broker's jars           (default $KAFKA_HOME_DIR/libs)
#   KAFKA_PORT             client listener port        (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port       (default 9093)
#   KAFKA_PARTITIONS       partitions of each topic    (default 4)
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap                 (default "-Xms256m -Xmx1g")
#   KAFKA_EXTRA_PROPERTIES extra server.properties lines, appended (they win)
#   KAFKA_SECURE_PORT      SASL_SSL listener port (start --secure) (default 9094)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"
BROKER_LOG4J="$SCRIPT_DIR/kafka/log4j2-broker.properties"
TOOLS_LOG4J="$SCRIPT_DIR/kafka/log4j2-tools.properties"

KAFKA_HOME_DIR=${KAFKA_HOME_DIR:-$REPO_ROOT/target/kafka}
KAFKA_LIBS_DIR=${KAFKA_LIBS_DIR:-$KAFKA_HOME_DIR/libs}
# Absolute paths: the broker runs in $KAFKA_HOME_DIR, and its command line
# (which names server.properties) is how later calls recognise it.
[[ $KAFKA_HOME_DIR == /* ]] || KAFKA_HOME_DIR=$PWD/$KAFKA_HOME_DIR
[[ $KAFKA_LIBS_DIR == /* ]] || KAFKA_LIBS_DIR=$PWD/$KAFKA_LIBS_DIR
KAFKA_PORT_SET=${KAFKA_PORT:+yes}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_PARTITIONS=${KAFKA_PARTITIONS:-4}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
KAFKA_EXTRA_PROPERTIES=${KAFKA_EXTRA_PROPERTIES:-}
KAFKA_SECURE_PORT=${KAFKA_SECURE_PORT:-9094}
SECURE=no

HOST=127.0.0.1
# Keep in sync with docker-compose.yml and docs/kafka.md.
TOPICS=(views clicks purchases refunds commissions attrib.dlq)

DATA_DIR="$KAFKA_HOME_DIR/data"
PID_FILE="$KAFKA_HOME_DIR/kafka.pid"
LOG_FILE="$KAFKA_HOME_DIR/kafka.log"
OUT_FILE="$KAFKA_HOME_DIR/kafka.out"
SERVER_PROPS="$KAFKA_HOME_DIR/server.properties"
ADMIN_PROPS="$KAFKA_HOME_DIR/admin.properties"
# Patient admin client settings for the user and ACL commands (a loaded machine).
TOOLS_PROPS="$KAFKA_HOME_DIR/tools.properties"
BOOTSTRAP_FILE="$KAFKA_HOME_DIR/kafka.bootstrap"
# start --secure: the throwaway CA, the broker's keystore, the SCRAM users' passwords
# and the SASL_SSL listener's host:port (see write_secure_files).
SECURE_DIR="$KAFKA_HOME_DIR/secure"
MODE_FILE="$KAFKA_HOME_DIR/kafka.mode"
LIBS_STAMP="$KAFKA_LIBS_DIR/.fetched"

# Short-lived tool JVMs start faster with these.
TOOLS_JVM_OPTS=(-Xshare:auto -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
                "-Dlog4j2.configurationFile=$TOOLS_LOG4J")

say() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '6,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

is_port_number() { [[ $1 =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )); }

check_settings() {
    is_port_number "$KAFKA_PORT" || die "KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
    is_port_number "$KAFKA_CONTROLLER_PORT" ||
        die "KAFKA_CONTROLLER_PORT must be a port number, got '$KAFKA_CONTROLLER_PORT'"
    [[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] ||
        die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both $KAFKA_PORT)"
    if [[ $SECURE == yes ]]; then
        is_port_number "$KAFKA_SECURE_PORT" ||
            die "KAFKA_SECURE_PORT must be a port number, got '$KAFKA_SECURE_PORT'"
        [[ $KAFKA_SECURE_PORT != "$KAFKA_PORT" && $KAFKA_SECURE_PORT != "$KAFKA_CONTROLLER_PORT" ]] ||
            die "KAFKA_SECURE_PORT ($KAFKA_SECURE_PORT) must differ from KAFKA_PORT and KAFKA_CONTROLLER_PORT"
    fi
    [[ $KAFKA_PARTITIONS =~ ^[1-9][0-9]*$ ]] ||
        die "KAFKA_PARTITIONS must be a positive integer, got '$KAFKA_PARTITIONS'"
    [[ $KAFKA_START_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
        die "KAFKA_START_TIMEOUT must be a positive number of seconds, got '$KAFKA_START_TIMEOUT'"
    [[ $KAFKA_STOP_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
        die "KAFKA_STOP_TIMEOUT must be a positive number of seconds, got '$KAFKA_STOP_TIMEOUT'"
}

need_java() {
    command -v java >/dev/null 2>&1 ||
        die "java not found on PATH; Kafka 4.x needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)"
    local line major
    line=$(java -version 2>&1 | head -n 1)
    major=$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"$line")
    # "1.8.0_x" style versions mean Java 8 or older.
    if [[ $major == 1\ * ]]; then major=${major#1 }; else major=${major%% *}; fi
    [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the Java version from: $line"
    (( major >= 17 )) || die "Kafka 4.x needs Java 17 or newer; 'java' is: $line"
}

need_mvn() {
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found on PATH; it is needed once to fetch the Kafka jars from Maven Central (Debian: apt-get install maven)"
}

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

libs_ready() { [[ -f $LIBS_STAMP && $(cat "$LIBS_STAMP") == "$(pom_hash)" ]]; }

# Copy the broker, tools and logging jars with all runtime dependencies into
# $KAFKA_LIBS_DIR, once (again only when scripts/kafka/pom.xml changes).
fetch_libs() {
    libs_ready && return 0
    need_mvn
    say "fetching Apache Kafka jars with Maven into $KAFKA_LIBS_DIR (first time only) ..."
    local tmp="$KAFKA_LIBS_DIR.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$KAFKA_LIBS_DIR")"
    local mvn_log="$KAFKA_HOME_DIR/mvn.log"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
        "-DoutputDirectory=$tmp" >"$mvn_log" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" | tail -n 40 >&2
        rm -rf "$tmp"
        die "Maven could not fetch the Kafka jars (output above, all of it in $mvn_log); check access to Maven Central and $POM"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "Maven ran but $tmp has no kafka_2.13 jar"; }
    pom_hash >"$tmp/.fetched"
    rm -rf "$KAFKA_LIBS_DIR"
    mv "$tmp" "$KAFKA_LIBS_DIR"
    say "fetched $(find "$KAFKA_LIBS_DIR" -name '*.jar' | wc -l) jars"
}

ensure_libs() {
    need_java
    if ! libs_ready; then
        mkdir -p "$KAFKA_HOME_DIR"
        with_lock fetch_libs
    fi
}

# Run "$@" holding an exclusive lock on $KAFKA_HOME_DIR, so that concurrent
# start/stop calls (parallel tests) queue instead of racing.
with_lock() {
    mkdir -p "$KAFKA_HOME_DIR"
    if command -v flock >/dev/null 2>&1; then
        (
            exec 9>"$KAFKA_HOME_DIR/.lock"
            flock -w 900 9 || die "timed out waiting for the lock on $KAFKA_HOME_DIR/.lock"
            "$@"
        )
    else
        "$@"
    fi
}

java_tool() {
    # Usage: java_tool CLASS ARGS...
    java "${TOOLS_JVM_OPTS[@]}" -cp "$KAFKA_LIBS_DIR/*" "$@"
}

port_open() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1" >/dev/null 2>&1
}

# Pid of our broker, if it runs: the pid file names a live java process whose
# command line is kafka.Kafka with this home's server.properties.
running_pid() {
    [[ -f $PID_FILE ]] || return 1
    local pid
    pid=$(tr -dc '0-9' <"$PID_FILE")
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        local cmd
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
        [[ $cmd == *kafka.Kafka*"$SERVER_PROPS"* ]] || return 1
    fi
    echo "$pid"
}

# host:port of the running broker (recorded at start), else from KAFKA_PORT.
bootstrap() {
    if [[ -z $KAFKA_PORT_SET && -f $BOOTSTRAP_FILE ]] && running_pid >/dev/null; then
        cat "$BOOTSTRAP_FILE"
    else
        echo "$HOST:$KAFKA_PORT"
    fi
}

log_tail() {
    local f
    for f in "$LOG_FILE" "$OUT_FILE"; do
        if [[ -s $f ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

# Did the broker log that it started, after byte offset $1 of the log?
server_started_logged() {
    [[ -f $LOG_FILE ]] || return 1
    local size
    size=$(stat -c %s "$LOG_FILE")
    if (( size >= $1 )); then
        tail -c +"$(($1 + 1))" "$LOG_FILE" | grep -q 'Kafka Server started'
    else
        grep -q 'Kafka Server started' "$LOG_FILE" # rolled over since
    fi
}

write_tools_props() {
    cat >"$TOOLS_PROPS" <<EOF
# Admin client settings for the user and ACL commands of scripts/kafka.sh.
request.timeout.ms=30000
default.api.timeout.ms=120000
EOF
}

write_config() {
    local listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
    local advertised="PLAINTEXT://$HOST:$KAFKA_PORT"
    local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [[ $SECURE == yes ]]; then
        listeners+=",SASL_SSL://$HOST:$KAFKA_SECURE_PORT"
        advertised+=",SASL_SSL://$HOST:$KAFKA_SECURE_PORT"
        protocols+=",SASL_SSL:SASL_SSL"
    fi
    cat >"$SERVER_PROPS" <<EOF
# Written by scripts/kafka.sh on every start; edits are lost.
# Single-node KRaft: this process is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA_DIR

# One node: every internal topic has one replica, so transactions and
# consumer groups work.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=$KAFKA_PARTITIONS
# Fewer internal partitions than the default 50 each: a faster first consumer
# group / transaction and a faster restart. (Only read when they are created.)
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10

# Tests and attrib expect explicit topics and a quick first rebalance.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# Sessions down to 1 s (default minimum 6 s): the broker suite shows a restore longer
# than max.poll.interval.ms does not evict a worker, and librdkafka wants that interval
# at least the session timeout. A minimum only: workers default to 10 s.
group.min.session.timeout.ms=1000

# Messages up to 16 MiB (attrib must dead-letter 10 MB payloads, not choke).
message.max.bytes=16777216
replica.fetch.max.bytes=16777216

# The default (15 min); attrib's transaction.timeout.ms must not exceed it.
transaction.max.timeout.ms=900000

log.retention.hours=168
log.segment.bytes=268435456
EOF
    if [[ $SECURE == yes ]]; then
        cat >>"$SERVER_PROPS" <<EOF

# start --secure: a SASL_SSL listener (SCRAM-SHA-512 over TLS with the throwaway CA
# of $SECURE_DIR) and ACLs. The plaintext and controller listeners authenticate
# nobody (principal ANONYMOUS), so ANONYMOUS stays a super user: the tools of this
# script and the plaintext test suite keep working. Development only.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$SECURE_DIR/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$(cat "$SECURE_DIR/keystore.password")
listener.name.sasl_ssl.ssl.key.password=$(cat "$SECURE_DIR/keystore.password")
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS
EOF
    fi
    if [[ -n $KAFKA_EXTRA_PROPERTIES ]]; then
        printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$SERVER_PROPS"
    fi
    write_tools_props
    cat >"$ADMIN_PROPS" <<EOF
# Admin client settings for the readiness checks of scripts/kafka.sh.
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

format_storage() {
    if [[ -f $DATA_DIR/meta.properties ]]; then
        return 0
    fi
    # A cluster id as kafka.tools.StorageTool random-uuid makes one (16 random
    # bytes, URL-safe base64 without padding, not starting with '-'), minus a JVM.
    local cluster_id=-
    while [[ $cluster_id == -* ]]; do
        cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    say "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
    mkdir -p "$DATA_DIR"
    local out
    if ! out=$(java_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPS" 2>&1); then
        echo "$out" >&2
        die "formatting $DATA_DIR failed (output above)"
    fi
}

# Lists topics; succeeds only when the broker answers.
list_topics() {
    timeout 60 java "${TOOLS_JVM_OPTS[@]}" -cp "$KAFKA_LIBS_DIR/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$HOST:$KAFKA_PORT" --command-config "$ADMIN_PROPS" --list 2>/dev/null
}

create_topics() {
    local existing topic
    existing=$(list_topics) || die "the broker stopped answering while creating topics"
    # One JVM per topic (TopicCommand creates one at a time), run side by side.
    local -a pids=() names=()
    for topic in "${TOPICS[@]}"; do
        if grep -qxF -- "$topic" <<<"$existing"; then
            continue
        fi
        (
            java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
                --command-config "$ADMIN_PROPS" --create --if-not-exists --topic "$topic" \
                --partitions "$KAFKA_PARTITIONS" --replication-factor 1 2>&1 |
                { grep -v 'limitations in metric names' || true; } >&2
        ) &
        pids+=("$!")
        names+=("$topic")
    done
    local i failed=()
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${names[$i]}")
    done
    (( ${#failed[@]} == 0 )) || die "creating topic(s) ${failed[*]} failed (output above)"
}

# start --secure: a throwaway CA and a broker certificate for 127.0.0.1 / localhost
# (made once, kept in $SECURE_DIR), and random passwords for the keystore and the two
# SCRAM users: `attrib` (granted what a worker with the default config needs) and
# `norights` (granted nothing). Files are readable by their owner only.
write_secure_files() {
    command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH; start --secure needs it (Debian: apt-get install openssl)"
    mkdir -p "$SECURE_DIR"
    chmod 700 "$SECURE_DIR"
    local f
    for f in keystore attrib norights; do
        [[ -s $SECURE_DIR/$f.password ]] || (umask 077; openssl rand -hex 16 >"$SECURE_DIR/$f.password")
    done
    if [[ ! -s $SECURE_DIR/broker.p12 || ! -s $SECURE_DIR/ca.pem ]]; then
        say "generating a throwaway CA and broker certificate in $SECURE_DIR"
        local log="$SECURE_DIR/openssl.log"
        (
            cd "$SECURE_DIR"
            umask 077
            set -e
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
                -subj "/CN=attrib throwaway dev CA" \
                -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
            openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >broker.ext
            openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
                -days 3650 -extfile broker.ext -out broker.pem
            openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
                -out broker.p12 -passout "file:keystore.password"
            rm -f broker.csr broker.ext
            chmod 644 ca.pem
        ) >"$log" 2>&1 || { cat "$log" >&2; die "generating the certificates failed (output above)"; }
    fi
}

# Sets the SCRAM-SHA-512 credentials of both users (over the plaintext listener, as the
# super user); idempotent.
create_users() {
    local user pids=() failed=no
    for user in attrib norights; do
        java_tool org.apache.kafka.tools.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
            --command-config "$TOOLS_PROPS" --alter --entity-type users --entity-name "$user" \
            --add-config "SCRAM-SHA-512=[iterations=8192,password=$(cat "$SECURE_DIR/$user.password")]" \
            >/dev/null 2>"$SECURE_DIR/users.$user.log" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=yes; done
    [[ $failed == no ]] || { cat "$SECURE_DIR"/users.*.log >&2; die "creating the SCRAM users failed (output above)"; }
}

# Adds ACLs (AclCommand --add ARGS...); quiet unless it fails.
acl() {
    [[ -f $TOOLS_PROPS ]] || write_tools_props
    local out
    if ! out=$(java_tool org.apache.kafka.tools.AclCommand --bootstrap-server "$(bootstrap)" \
        --command-config "$TOOLS_PROPS" --add "$@" 2>&1); then
        echo "$out" >&2
        return 1
    fi
}

# The ACLs of one worker (docs/kafka.md, "ACLs a worker needs"), over the plaintext
# listener as the super user. Usage: grant_worker USER GROUP TXN_PREFIX STATE OUTPUT DLQ INPUT...
grant_worker() {
    (( $# >= 7 )) || die "usage: scripts/kafka.sh grant-worker USER GROUP TXN_PREFIX STATE OUTPUT DLQ INPUT..."
    local user=$1 group=$2 txn=$3 state=$4 output=$5 dlq=$6
    shift 6
    local p="User:$user" in_args=() t
    for t in "$@"; do in_args+=(--topic "$t"); done
    local -a pids=()
    # Read the inputs and the state topic, in the worker's group and its restore group.
    acl --allow-principal "$p" --operation Read --operation Describe "${in_args[@]}" --topic "$state" \
        --group "$group" --group "$group-restore" &
    pids+=("$!")
    # Write records, dead letters and state.
    acl --allow-principal "$p" --operation Write --operation Describe \
        --topic "$output" --topic "$dlq" --topic "$state" &
    pids+=("$!")
    # Create the state topic when it is missing.
    acl --allow-principal "$p" --operation Create --topic "$state" &
    pids+=("$!")
    # Transactions: every transactional id starting with the prefix.
    acl --allow-principal "$p" --operation Write --operation Describe \
        --resource-pattern-type prefixed --transactional-id "$txn" &
    pids+=("$!")
    local pid failed=no
    for pid in "${pids[@]}"; do wait "$pid" || failed=yes; done
    [[ $failed == no ]] || die "adding the ACLs of $p failed (output above)"
}

# What start --secure adds once the broker answers: users, the default worker's ACLs.
secure_setup() {
    say "creating SCRAM-SHA-512 users attrib and norights; ACLs for attrib (default topics, group attrib)"
    create_users
    # The default transactional id is <group_id>-<hostname>: prefix "attrib-".
    grant_worker attrib attrib attrib- attrib.state commissions attrib.dlq views clicks purchases refunds
    echo "$HOST:$KAFKA_SECURE_PORT" >"$SECURE_DIR/bootstrap"
    local deadline=$((SECONDS + 30))
    until port_open "$KAFKA_SECURE_PORT"; do
        (( SECONDS < deadline )) || die "the SASL_SSL listener $HOST:$KAFKA_SECURE_PORT does not accept connections"
        sleep 0.5
    done
    say "SASL_SSL listener at $HOST:$KAFKA_SECURE_PORT: CA $SECURE_DIR/ca.pem, users attrib and norights (passwords in $SECURE_DIR/<user>.password)"
}

stop_pid() {
    local pid=$1 waited=0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= KAFKA_STOP_TIMEOUT * 10 )); then
            say "broker (pid $pid) still running ${KAFKA_STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            local k=0
            while kill -0 "$pid" 2>/dev/null && (( k < 100 )); do sleep 0.1; k=$((k + 1)); done
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        die "broker (pid $pid) did not exit even after SIGKILL"
    fi
}

do_start() {
    local pid
    if pid=$(running_pid); then
        local mode
        mode=$(cat "$MODE_FILE" 2>/dev/null || echo plain)
        [[ $mode == "$( [[ $SECURE == yes ]] && echo secure || echo plain)" ]] ||
            die "already running (pid $pid) in $mode mode; stop it first to switch"
        say "already running (pid $pid) at $(cat "$BOOTSTRAP_FILE" 2>/dev/null || echo "$HOST:$KAFKA_PORT")"
        return 0
    fi
    rm -f "$PID_FILE" "$BOOTSTRAP_FILE" "$MODE_FILE" "$SECURE_DIR/bootstrap"

    local port ports=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT")
    [[ $SECURE == yes ]] && ports+=("$KAFKA_SECURE_PORT")
    for port in "${ports[@]}"; do
        if port_open "$port"; then
            die "port $HOST:$port is already in use by another process (not the broker of $KAFKA_HOME_DIR); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
        fi
    done

    fetch_libs
    [[ $SECURE == yes ]] && write_secure_files
    write_config
    format_storage

    local started=$SECONDS
    say "starting Kafka broker at $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT), log $LOG_FILE"
    : >"$OUT_FILE"
    local log_offset=0
    [[ -f $LOG_FILE ]] && log_offset=$(stat -c %s "$LOG_FILE")
    # setsid: the broker outlives the shell that started it (and its Ctrl-C).
    # 9>&-: it must not hold the start/stop lock.
    # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of JVM options
    (
        cd "$KAFKA_HOME_DIR"
        exec setsid java $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true \
            "-Dlog4j2.configurationFile=$BROKER_LOG4J" "-Dkafka.logs.dir=$KAFKA_HOME_DIR" \
            -cp "$KAFKA_LIBS_DIR/*" kafka.Kafka "$SERVER_PROPS"
    ) >>"$OUT_FILE" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$HOST:$KAFKA_PORT" >"$BOOTSTRAP_FILE"

    # Ready = the broker logged "Kafka Server started" and answers a topic
    # listing. (Every 15 s the listing is tried anyway, in case the log moved.)
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) next_try=$((SECONDS + 15))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
            log_tail
            die "the Kafka broker exited during startup (log above)"
        fi
        if server_started_logged "$log_offset" || (( SECONDS >= next_try )); then
            if port_open "$KAFKA_PORT" && list_topics >/dev/null; then
                break
            fi
            next_try=$((SECONDS + 15))
        fi
        if (( SECONDS >= deadline )); then
            log_tail
            say "stopping the broker that did not come up (pid $pid)"
            stop_pid "$pid" || true
            rm -f "$PID_FILE" "$BOOTSTRAP_FILE"
            die "the Kafka broker did not answer on $HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s (log above)"
        fi
        sleep 0.5
    done
    say "broker answers after $((SECONDS - started))s; ensuring topics: ${TOPICS[*]} ($KAFKA_PARTITIONS partitions)"
    create_topics
    if [[ $SECURE == yes ]]; then
        secure_setup
        echo secure >"$MODE_FILE"
    else
        echo plain >"$MODE_FILE"
    fi
    say "Kafka running (pid $pid) at $HOST:$KAFKA_PORT"
}

do_stop() {
    local clean=$1 pid
    if pid=$(running_pid); then
        say "stopping Kafka broker (pid $pid)"
        stop_pid "$pid"
        say "stopped"
    else
        say "not running"
    fi
    rm -f "$PID_FILE" "$BOOTSTRAP_FILE" "$MODE_FILE" "$SECURE_DIR/bootstrap"
    if [[ $clean == yes ]]; then
        say "removing $DATA_DIR"
        rm -rf "$DATA_DIR"
    fi
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    start)
        case ${1:-} in
            "") ;;
            --secure) SECURE=yes; shift ;;
            *) die "usage: scripts/kafka.sh start [--secure]" ;;
        esac
        [[ $# -eq 0 ]] || die "usage: scripts/kafka.sh start [--secure]"
        check_settings
        need_java
        with_lock do_start
        ;;
    stop)
        clean=no
        case ${1:-} in
            "") ;;
            --clean) clean=yes ;;
            *) die "usage: scripts/kafka.sh stop [--clean]" ;;
        esac
        with_lock do_stop "$clean"
        ;;
    status)
        if pid=$(running_pid); then
            secure=""
            [[ -s $SECURE_DIR/bootstrap ]] && secure=", SASL_SSL $(cat "$SECURE_DIR/bootstrap")"
            if port_open "$(bootstrap | cut -d: -f2)"; then
                echo "running (pid $pid), bootstrap $(bootstrap)$secure"
            else
                echo "running (pid $pid, not accepting connections yet), bootstrap $(bootstrap)"
            fi
            exit 0
        fi
        echo "stopped, bootstrap $(bootstrap)"
        exit 3
        ;;
    topics)
        ensure_libs
        args=("$@")
        has_bootstrap=no
        for a in "$@"; do
            [[ $a == --bootstrap-server || $a == --bootstrap-server=* ]] && has_bootstrap=yes
        done
        [[ $has_bootstrap == yes ]] || args=(--bootstrap-server "$(bootstrap)" "${args[@]}")
        exec java "${TOOLS_JVM_OPTS[@]}" -cp "$KAFKA_LIBS_DIR/*" org.apache.kafka.tools.TopicCommand "${args[@]}"
        ;;
    grant-producer)
        (( $# >= 2 )) || die "usage: scripts/kafka.sh grant-producer USER TOPIC..."
        ensure_libs
        [[ $(cat "$MODE_FILE" 2>/dev/null) == secure ]] || die "the broker runs without ACLs; start it with --secure"
        user=$1
        shift
        topic_args=()
        for t in "$@"; do topic_args+=(--topic "$t"); done
        acl --allow-principal "User:$user" --operation Write --operation Describe "${topic_args[@]}"
        ;;
    grant-worker)
        ensure_libs
        running_pid >/dev/null || die "no broker runs (scripts/kafka.sh start --secure)"
        [[ $(cat "$MODE_FILE" 2>/dev/null) == secure ]] || die "the broker runs without ACLs; start it with --secure"
        grant_worker "$@"
        ;;
    run-class)
        [[ $# -gt 0 ]] || die "usage: scripts/kafka.sh run-class CLASS [ARGS...]"
        ensure_libs
        exec java "${TOOLS_JVM_OPTS[@]}" -cp "$KAFKA_LIBS_DIR/*" "$@"
        ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac

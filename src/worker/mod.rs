//! The streaming worker (`attrib run`): a thin, careful shell around the engine.
//!
//! - **Consumer group** over the input topics with the `range` assignor, so partition `p`
//!   of every input topic lands on the same worker (inputs are co-partitioned by
//!   `user_id`). Each partition number is a [`task::Task`] with its own engine and
//!   watermark; an input partition silent for `idle_timeout` stops holding it back.
//! - **Exactly once**: records, dead letters, shadow records, the state topic's order log
//!   (and every `snapshot_interval` an incremental checkpoint) and the input offsets are
//!   written in one Kafka transaction every `commit_interval`. Consumers of the output
//!   read `read_committed`.
//! - **State after a restart or a rebalance** is rebuilt from the compacted state topic:
//!   the latest checkpoint (one record per shopper), then the logged steps replayed over
//!   the inputs up to the committed offsets (see [`state`]). The engine is deterministic
//!   and config changes are logged steps, so the rebuilt state is exactly the state at
//!   the last commit, under the config in force then (SPEC 8.1). A worker started with a
//!   changed config logs every key that differs and applies the new one from there on.
//! - **Routing** (SPEC 8.6): every event must sit on the partition its `user_id` maps to
//!   under `kafka.partitioner`; others are dead-lettered as `misrouted`.
//! - Any transaction failure that is not fatal aborts, throws away all in-memory state
//!   and rebuilds it from Kafka; a fatal one (fenced producer) exits non-zero.
//! - `kafka.exactly_once = false` drops the transactions: records are flushed, then the
//!   offsets (with the same snapshot metadata) are committed by the consumer. A crash
//!   then repeats the records since the last commit (at least once); the state still
//!   rebuilds the same way.
//! - **Back-pressure**: above `limits.max_live_touches` or `limits.max_pending_purchases`
//!   a group reads only the input furthest behind in event time, so the watermark
//!   advances and evicts before anything else is added (see [`Core::align`]).
//! - **Latency**: the time from receiving the message that makes a record final to the
//!   commit of the transaction holding it (`processing latency`); the watermark's own
//!   hold (a purchase waits until the watermark passes it) is measured apart.
//!
//! Modules, one concern each: [`client`] (librdkafka settings, client contexts, topics,
//! the transactional id), [`rebalance`] (hand-over and restore), [`flow`] (alignment,
//! back-pressure and idleness), [`output`] (records and dead letters to the producer),
//! [`txn`] (transactions and commits), [`state`] (the state topic's layout), [`task`]
//! (one partition group's pipeline), [`preflight`] (start-up checks); this file holds
//! the poll loop that drives them.

mod client;
mod flow;
mod output;
pub mod preflight;
pub mod produce;
mod rebalance;
pub mod restate;
pub mod state;
pub mod task;
mod txn;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, info, warn};

pub use self::client::client_config;
use self::client::{claim_transactional_id, prepare_topics, ConsumerCtx, ProducerCtx, RestoreCtx};
pub(crate) use self::client::{send_waiting, with_user_settings};
use self::output::{LiveOut, SampledLog};
use self::rebalance::rewind;
use self::task::Task;
use crate::config::Config;
use crate::engine::Stats;
use crate::metrics::{Health, Metrics};
use crate::model::Millis;
use crate::pipeline::Processing;

/// How `attrib run` was started, besides the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop (commit, leave the group, return) once every assigned input partition has
    /// reached the end offset it had when this worker got it: a catch-up run.
    pub stop_at_end: bool,
}

/// Shared observability handles.
#[derive(Clone)]
pub struct Observe {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {context}: {source}")]
    Kafka { context: &'static str, source: KafkaError },
    #[error("restore: {0}")]
    Restore(String),
    #[error("setup: {0}")]
    Setup(String),
    /// The state was written by an older release in a layout this one does not read.
    #[error("state: {0}")]
    OldState(String),
    /// A restore was stopped (shutdown or revocation).
    #[error("cancelled")]
    Cancelled,
}

impl WorkerError {
    /// Wraps a Kafka error with what was being done.
    pub fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> WorkerError {
        move |source| WorkerError::Kafka { context, source }
    }

    /// The producer was fenced or hit another error no retry can fix.
    pub fn is_fatal(&self) -> bool {
        match self {
            WorkerError::Kafka { source, .. } => is_fatal(source),
            _ => true,
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        ),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Everything the poll loop and the rebalance callbacks share.
struct Core {
    config: Config,
    inputs: Vec<String>,
    producer: BaseProducer<ProducerCtx>,
    restore_consumer: BaseConsumer<RestoreCtx>,
    tasks: HashMap<i32, Task>,
    /// Last message time per (group, input), for idleness.
    last_seen: HashMap<(i32, u8), Instant>,
    /// Assigned partition groups not yet restored.
    unrestored: BTreeSet<i32>,
    /// Messages of input partitions that ran ahead of their group's watermark, held in
    /// arrival order until the others catch up, with their total size.
    held: HashMap<(i32, u8), VecDeque<OwnedMessage>>,
    held_bytes: HashMap<(i32, u8), usize>,
    /// How far ahead of its group's watermark an input may be read right now
    /// (`kafka.read_ahead`, or `max_out_of_orderness` under back-pressure).
    read_ahead_now: Millis,
    /// Input partitions paused in the consumer because they hold too much.
    paused: BTreeSet<(i32, u8)>,
    /// A transaction is open (exactly once) or something is waiting to be committed.
    in_txn: bool,
    /// An abort did not finish (timed out): it is retried before the next transaction.
    abort_pending: bool,
    last_commit: Instant,
    /// The config this worker runs with (applied to restored groups, SPEC 8.1).
    processing: Processing,
    /// Partition count of the inputs (for the routing check).
    partitions: i32,
    records: u64,
    fatal: Option<WorkerError>,
    /// Time origin for message receive stamps (nanoseconds since `epoch`).
    epoch: Instant,
    /// Receive stamps of the messages that made the records of the open transaction.
    open_stamps: Vec<u64>,
    /// Processing latency in µs (receive → commit), and the watermark hold in µs
    /// (purchase received → its records emitted).
    latency: Histogram<u64>,
    hold: Histogram<u64>,
    observe: Observe,
    /// Engine counters as last exported to the metrics, per group.
    exported: HashMap<i32, Stats>,
    /// (group, input) → (low, high) offsets seen when the group was restored
    /// (`--stop-at-end` only).
    ends: HashMap<(i32, u8), (i64, i64)>,
    stop_at_end: bool,
    /// Live messages handled (and their bytes), when the first one came, and when the
    /// worker caught up (`--stop-at-end`).
    handled: u64,
    bytes_in: u64,
    first_message: Option<Instant>,
    caught_up_logged: bool,
    /// Back-pressure is on (state over `limits.max_live_touches` or
    /// `limits.max_pending_purchases`).
    pressed: bool,
    dead_letters: SampledLog,
    /// Where the poll loop's wall time goes: commits, and waiting for messages.
    commit_time: Duration,
    commits: u64,
    wait_time: Duration,
}

impl Core {
    fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A message from the consumer: processed now, or held if its input partition runs
    /// ahead of its group's watermark (or already holds earlier messages).
    fn handle(&mut self, consumer: &BaseConsumer<ConsumerCtx>, msg: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let Some(input) = self.inputs.iter().position(|t| t == msg.topic()) else { return Ok(()) };
        let p = msg.partition();
        if !self.tasks.contains_key(&p) {
            self.unrestored.insert(p);
            self.restore_pending(consumer)?;
        }
        let key = (p, input as u8);
        let task = self.tasks.get(&p).expect("restored above");
        if task.state.positions[input].is_some_and(|pos| msg.offset() < pos) {
            return Ok(()); // already in the state (a re-delivery after a seek)
        }
        if self.held.get(&key).is_some_and(|q| !q.is_empty()) || self.ahead(key) {
            *self.held_bytes.entry(key).or_default() += msg.payload_len();
            self.held.entry(key).or_default().push_back(msg.detach());
            self.last_seen.insert(key, Instant::now());
            return Ok(());
        }
        self.process(input, p, msg.topic(), msg.offset(), msg.payload().unwrap_or_default())
    }

    /// Hands one input message to its partition group's task.
    fn process(&mut self, input: usize, p: i32, topic: &str, offset: i64, payload: &[u8]) -> Result<(), WorkerError> {
        self.ensure_txn()?;
        let received = self.stamp();
        let Core { tasks, producer, config, last_seen, records, open_stamps, hold, dead_letters, .. } = self;
        let task = tasks.get_mut(&p).expect("processed groups are restored");
        if task.state.positions[input].is_some_and(|pos| offset < pos) {
            return Ok(()); // already in the state (a re-delivery after a seek)
        }
        self.handled += 1;
        self.bytes_in += payload.len() as u64;
        self.first_message.get_or_insert_with(Instant::now);
        let mut out = LiveOut::new(producer, config, received, open_stamps, hold, dead_letters);
        // Whole seconds: consecutive messages share a log step.
        let now = now_ms() / 1000 * 1000;
        task.on_message(input, topic, offset, payload, now, received, &mut out);
        *records += out.records;
        last_seen.insert((p, input as u8), Instant::now());
        Ok(())
    }
}

/// Runs the worker until `shutdown` is set (then commits, leaves the group and returns).
pub fn run(config: Config, shutdown: Arc<AtomicBool>, options: RunOptions) -> Result<(), WorkerError> {
    // Start-time checks (issue 15, src/worker/preflight.rs): brokers, credentials, topics, group.
    preflight::check_worker(&config)?;
    let observe = Observe {
        metrics: Arc::new(Metrics::new()),
        health: Arc::new(Health::new(config.session_timeout.max(Duration::from_secs(30)))),
    };
    let _server = match config.metrics_listen {
        Some(addr) => {
            let server = crate::metrics::serve(addr, observe.metrics.clone(), observe.health.clone())
                .map_err(|e| WorkerError::Setup(format!("metrics.listen {addr}: {e}")))?;
            info!(addr = %server.addr(), "serving /metrics, /healthz and /readyz");
            Some(server)
        }
        None => None,
    };
    if !config.engine.shadow_models.is_empty() && config.kafka.shadow_topic.is_empty() {
        return Err(WorkerError::Setup(
            "attribution.shadow_models is set but kafka.shadow_topic is empty: shadow records need their own topic \
             (kafka.shadow_topic)"
                .into(),
        ));
    }
    let mut config = config;
    // Held for the life of the process: the kernel releases it when the process dies.
    let _slot_lock = if config.kafka.exactly_once && config.transactional_id_auto {
        let (id, lock) = claim_transactional_id(&config.kafka.transactional_id)?;
        config.kafka.transactional_id = id;
        Some(lock)
    } else {
        None
    };
    let partitions = prepare_topics(&config)?;
    info!(
        brokers = %config.kafka.brokers,
        group = %config.kafka.group_id,
        inputs = ?config.kafka.input_topics,
        partitions,
        kafka = ?config.kafka,
        "starting worker"
    );
    let epoch = Instant::now();
    let mut pc = client_config(&config);
    // State records (one shopper's touches and orders) can outgrow the 1 MB default.
    pc.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", STATE_MESSAGE_BYTES.to_string());
    if config.kafka.exactly_once {
        pc.set("transactional.id", &config.kafka.transactional_id)
            .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string());
    } else {
        warn!("kafka.exactly_once = false: no transactions; a crash may repeat records (at least once)");
    }
    let producer: BaseProducer<ProducerCtx> = with_user_settings(pc, &config)
        .create_with_context(ProducerCtx {
            failures: Mutex::default(),
            epoch,
            latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")),
            metrics: observe.metrics.clone(),
        })
        .map_err(WorkerError::kafka("creating the producer"))?;
    if config.kafka.exactly_once {
        producer
            .init_transactions(config.transaction_timeout)
            .map_err(WorkerError::kafka("initialising transactions"))?;
    }
    observe.health.set_producer_ready(true);

    let mut rc = client_config(&config);
    rc.set("group.id", format!("{}-restore", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let restore_consumer: BaseConsumer<RestoreCtx> = with_user_settings(rc, &config)
        .create_with_context(RestoreCtx)
        .map_err(WorkerError::kafka("creating the restore consumer"))?;

    let core = Arc::new(parking_lot::Mutex::new(Core {
        inputs: config.kafka.input_topics.clone(),
        config: config.clone(),
        producer,
        restore_consumer,
        tasks: HashMap::new(),
        last_seen: HashMap::new(),
        unrestored: BTreeSet::new(),
        held: HashMap::new(),
        held_bytes: HashMap::new(),
        read_ahead_now: config.read_ahead,
        paused: BTreeSet::new(),
        in_txn: false,
        abort_pending: false,
        last_commit: Instant::now(),
        processing: Processing::from_config(&config),
        partitions,
        records: 0,
        fatal: None,
        epoch,
        open_stamps: Vec::new(),
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        hold: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
        observe: observe.clone(),
        exported: HashMap::new(),
        ends: HashMap::new(),
        stop_at_end: options.stop_at_end,
        handled: 0,
        bytes_in: 0,
        first_message: None,
        caught_up_logged: false,
        pressed: false,
        dead_letters: SampledLog { last: None, suppressed: 0 },
        commit_time: Duration::ZERO,
        commits: 0,
        wait_time: Duration::ZERO,
    }));

    let mut cc = client_config(&config);
    cc.set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string());
    if config.metrics_listen.is_some() {
        cc.set("statistics.interval.ms", "5000"); // consumer lag for the metrics
    }
    let consumer: BaseConsumer<ConsumerCtx> = with_user_settings(cc, &config)
        .create_with_context(ConsumerCtx { core: core.clone() })
        .map_err(WorkerError::kafka("creating the consumer"))?;
    let topics: Vec<&str> = config.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(WorkerError::kafka("subscribing"))?;

    let result = poll_loop(&consumer, &core, &config, &shutdown);
    if result.is_ok() {
        // A graceful shutdown is bounded by kafka.shutdown_timeout: past it the process
        // exits without committing, and the next owner redoes the uncommitted part.
        let limit = config.shutdown_timeout;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            error!(
                shutdown_timeout_ms = limit.as_millis() as u64,
                "graceful shutdown took longer than kafka.shutdown_timeout: exiting without committing"
            );
            std::process::exit(3);
        });
    }
    let mut c = core.lock();
    match &result {
        Ok(()) => {
            info!("shutting down: committing");
            if let Err(e) = c.commit(&consumer, true) {
                warn!(error = %e, "final commit failed; the next owner redoes the uncommitted part");
                c.abort();
            }
        }
        Err(e) => {
            error!(error = %e, "worker failed");
            if c.in_txn && !e.is_fatal() {
                c.abort();
            }
        }
    }
    for (p, task) in &c.tasks {
        let s = &task.state;
        let inputs: Vec<String> = (0..c.inputs.len())
            .map(|i| {
                let idle = if s.pipeline.watermarks().is_idle(i) { " idle" } else { "" };
                format!("{}@{:?} max_ts={}{idle}", c.inputs[i], s.positions[i], s.pipeline.watermarks().max_ts(i))
            })
            .collect();
        info!(
            group = p,
            watermark = ?s.pipeline.watermarks().current(),
            pending = s.pipeline.engine().pending(),
            touches = s.pipeline.engine().live_touches(),
            inputs = ?inputs,
            "partition group at shutdown"
        );
    }
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    if !c.config.kafka.exactly_once {
        let _ = c.producer.flush(c.config.transaction_timeout);
        let delivered = c.producer.context().latency.lock().expect("not poisoned").clone();
        c.latency = delivered;
    }
    info!(
        count = c.latency.len(),
        p50_us = pct(&c.latency, 0.5),
        p99_us = pct(&c.latency, 0.99),
        p999_us = pct(&c.latency, 0.999),
        max_us = c.latency.max(),
        "processing latency (message received to its records committed, or delivered without transactions)"
    );
    info!(
        count = c.hold.len(),
        p50_us = pct(&c.hold, 0.5),
        p99_us = pct(&c.hold, 0.99),
        max_us = c.hold.max(),
        "watermark hold (purchase or refund received to its records emitted)"
    );
    info!(
        commits = c.commits,
        commit_secs = c.commit_time.as_secs_f64(),
        poll_wait_secs = c.wait_time.as_secs_f64(),
        "time spent committing and waiting for messages"
    );
    c.tasks.clear();
    drop(c);
    consumer.unsubscribe();
    info!(records = core.lock().records, "stopped");
    result
}

/// Largest state-topic record: a shopper with thousands of touches and orders credited
/// to many of them (a linear shadow model, say) writes one large record. The state topic
/// is created with this `max.message.bytes`; create it yourself with at least as much.
const STATE_MESSAGE_BYTES: usize = 64 << 20;

/// Bytes of held messages at which an input partition is paused in the consumer (it
/// resumes below half of this).
const HOLD_BYTES: usize = 16 << 20;

/// Most messages handled between two looks at the clock, the idle check and the commit.
const MAX_BATCH: usize = 10_000;

fn poll_loop(
    consumer: &BaseConsumer<ConsumerCtx>,
    core: &Arc<parking_lot::Mutex<Core>>,
    config: &Config,
    shutdown: &AtomicBool,
) -> Result<(), WorkerError> {
    while !shutdown.load(Ordering::Relaxed) {
        // Never hold the lock in poll(): rebalance callbacks take it.
        let waited = Instant::now();
        let mut polled = consumer.poll(Duration::from_millis(50));
        let waited = waited.elapsed();
        let mut c = core.lock();
        c.wait_time += waited;
        c.observe.health.progress();
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        if !c.caught_up_logged && c.caught_up() {
            c.caught_up_logged = true;
            let secs = c.first_message.map_or(0.0, |t| t.elapsed().as_secs_f64());
            info!(
                events = c.handled,
                secs = (secs * 1000.0).round() / 1000.0,
                events_per_sec = (c.handled as f64 / secs.max(1e-9)).round() as u64,
                "caught up: every assigned input partition reached its end offset"
            );
        }
        if c.finished() {
            info!("every input idle after catching up: stopping (--stop-at-end)");
            return Ok(());
        }
        let step = (|| -> Result<(), WorkerError> {
            c.restore_pending(consumer)?;
            // Take what is already fetched, up to the commit deadline, before committing.
            // The lock is let go around every poll: a poll may run the rebalance
            // callbacks, which take it.
            let mut taken = 0;
            while let Some(result) = polled {
                match result {
                    Ok(msg) => c.handle(consumer, &msg)?,
                    Err(e) => warn!(error = %e, "consumer error"),
                }
                taken += 1;
                if taken >= MAX_BATCH || c.last_commit.elapsed() >= config.commit_interval || !c.unrestored.is_empty() {
                    break;
                }
                polled = parking_lot::MutexGuard::unlocked(&mut c, || consumer.poll(Duration::ZERO));
            }
            c.check_idle(consumer)?;
            c.align(consumer)?;
            if c.last_commit.elapsed() >= config.commit_interval {
                c.commit(consumer, false)?;
            }
            Ok(())
        })();
        if let Err(e) = step {
            if e.is_fatal() {
                c.observe.health.set_producer_ready(false);
                return Err(e);
            }
            warn!(error = %e, "transaction failed: aborting and rebuilding state from Kafka");
            c.abort();
            c.resume_all(consumer);
            rewind(consumer, &c.inputs)?;
        }
    }
    Ok(())
}

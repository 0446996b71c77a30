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
//! - **Groups on every core** ([`batch`]): fetched messages are taken in batches, decoded
//!   on `kafka.threads` threads, and each group's share runs as a job on one of them; a
//!   batch is a barrier for everything below. Held messages wait in [`held`] queues.
//! - **Pipelined commits** ([`txn`]): a commit fixes what it covers when it starts and
//!   completes once the broker has acknowledged it; processing goes on meanwhile, its
//!   output held for the next transaction. Commits start every `commit_interval` while
//!   catching up, after a tenth of it once caught up.
//! - **State after a restart or a rebalance** is rebuilt from the compacted state topic:
//!   the latest checkpoint (one record per shopper), then the logged steps replayed over
//!   the inputs up to the committed offsets (see [`state`]). The engine is deterministic
//!   and config changes are logged steps, so the rebuilt state is exactly the state at
//!   the last commit, under the config in force then (SPEC 8.1). A worker started with a
//!   changed config logs every key that differs and applies the new one from there on.
//! - **Routing** (SPEC 8.6): every event must sit on the partition its `user_id` maps to
//!   under `kafka.partitioner`; others are dead-lettered as `misrouted`.
//! - **Repartitioning** (`kafka.repartition`, SPEC 8.6): a re-key stage on its own thread
//!   forwards every input to `<group_id>-repartition` by `user_id`, exactly once; this
//!   loop then reads that topic, with one watermark input per source partition fed by the
//!   stage's markers (see [`repartition`]).
//! - **Restores run on a restore thread** ([`restore`]) while the poll loop keeps polling
//!   (the group's input partitions paused). At a rebalance each group's state is kept in
//!   memory after the handing-over commit; a group that comes back unchanged is kept, not
//!   rebuilt.
//! - **Checkpoints are encoded on a checkpoint thread** ([`checkpointer`]): the commit
//!   hands a group due for one over whole, and its messages wait until it is back.
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
//! the transactional id), [`rebalance`] (hand-over and assignment), [`restore`] (the
//! restore thread), [`checkpointer`] (the checkpoint thread), [`batch`] (groups processed
//! in parallel), [`held`] (messages held in memory), [`flow`] (alignment,
//! back-pressure and idleness), [`output`] (records and dead letters to the producer),
//! [`txn`] (transactions and commits), [`state`] (the state topic's layout), [`task`]
//! (one partition group's pipeline), [`preflight`] (start-up checks), [`repartition`]
//! (the re-key stage of `kafka.repartition`) and [`forward`] (its headers and watermark
//! markers); this file holds the poll loop that drives them.

mod batch;
mod checkpointer;
mod client;
mod flow;
pub mod forward;
mod held;
mod output;
pub mod preflight;
pub mod produce;
mod rebalance;
mod repartition;
pub mod restate;
mod restore;
pub mod state;
pub mod task;
mod txn;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, info, warn};

use self::checkpointer::Checkpointer;
pub use self::client::client_config;
use self::client::{claim_transactional_id, prepare_topics, ConsumerCtx, ProducerCtx};
pub(crate) use self::client::{send_waiting, with_user_settings};
use self::forward::Forwarded;
use self::output::{LiveOut, Route, SampledLog};
use self::rebalance::rewind;
use self::restore::{Handover, Restorer};
use self::task::Task;
use crate::config::Config;
use crate::engine::Stats;
use crate::metrics::{Health, Metrics};
use crate::model::Millis;
use crate::pipeline::Processing;

/// The worker's maps, looked up for every message: keyed by partition (and input), so a
/// fast hash (SipHash was 2 % of a catch-up).
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

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

/// The clocks as read for a run of messages.
#[derive(Clone, Copy)]
struct Clock {
    at: Instant,
    /// Nanoseconds since the core's epoch (the receive stamp of a message).
    stamp: u64,
    /// Wall clock, whole seconds, in ms (the order log's step time).
    second_ms: i64,
}

/// Everything the poll loop and the rebalance callbacks share.
struct Core {
    config: Config,
    inputs: Vec<String>,
    /// The transactional producers, used in turn (one without transactions): a
    /// transaction begins on the one after the producer that committed the last, whose
    /// markers the broker may still be writing (see [`client::producer_ids`]).
    producers: Vec<BaseProducer<ProducerCtx>>,
    /// The producer of the open (or committing) transaction.
    active: usize,
    tasks: Map<i32, Task>,
    /// Last message time per (group, input), for idleness.
    last_seen: Map<(i32, u8), Instant>,
    /// Assigned partition groups not yet restored (their input partitions are paused),
    /// and those of them handed to the restore thread.
    unrestored: BTreeSet<i32>,
    dispatched: BTreeSet<i32>,
    restorer: Restorer,
    /// Groups on the checkpoint thread ([`checkpointer`]): their messages are held until
    /// they are back, before the commit in progress completes.
    away: BTreeSet<i32>,
    checkpointer: Checkpointer,
    /// Groups given up at the last revocation, kept in case they come back.
    parked: HashMap<i32, (Task, Handover)>,
    /// Messages of input partitions that ran ahead of their group's watermark (or of a
    /// group being restored or checkpointed), held in arrival order.
    held: Map<(i32, u8), held::Queue>,
    /// Messages taken from the consumer for the next batch ([`batch`]).
    batch: batch::Batch,
    /// How far ahead of its group's watermark an input may be read right now
    /// (`kafka.read_ahead`, or `max_out_of_orderness` under back-pressure).
    read_ahead_now: Millis,
    /// Input partitions paused in the consumer because they hold too much.
    paused: BTreeSet<(i32, u8)>,
    /// A transaction is open (exactly once) or something is waiting to be committed.
    in_txn: bool,
    /// The commit in progress ([`txn`]): processing goes on meanwhile, its output held
    /// in `deferred` for the next transaction, which `worked_while_closing` says it needs.
    closing: Option<txn::Closing>,
    deferred: output::Deferred,
    worked_while_closing: bool,
    /// Without transactions: the delivery-counting slot (0 or 1) of the output being sent.
    epoch_slot: usize,
    /// An abort did not finish (timed out): it is retried before the next transaction.
    abort_pending: bool,
    last_commit: Instant,
    /// The config this worker runs with (applied to restored groups, SPEC 8.1).
    processing: Processing,
    /// Partition count of the inputs (for the routing check).
    partitions: i32,
    /// With `kafka.repartition`: the number of source partitions (watermark inputs of
    /// every group); 0 without.
    sources: u32,
    records: u64,
    fatal: Option<WorkerError>,
    /// Time origin for message receive stamps (nanoseconds since `epoch`).
    epoch: Instant,
    /// The clocks as last read ([`Core::tick`]).
    clock: Clock,
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
    /// From the start of each commit to its end (processing goes on meanwhile), and the
    /// parts of it that block the poll thread: writing the state items, waiting for
    /// delivery (rebalances and shutdown only), and the offsets plus the transaction
    /// commit itself.
    commit_phases: [Duration; 3],
    commits: u64,
    wait_time: Duration,
}

impl Core {
    /// The producer of the open (or committing) transaction.
    fn producer(&self) -> &BaseProducer<ProducerCtx> {
        &self.producers[self.active]
    }

    fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Reads the clocks once for the next messages (up to [`LOOK_EVERY`]): three clock
    /// reads per message were 4 % of a catch-up's profile.
    fn tick(&mut self) {
        let now = Instant::now();
        self.clock = Clock {
            at: now,
            stamp: now.duration_since(self.epoch).as_nanos() as u64,
            second_ms: now_ms() / 1000 * 1000,
        };
    }

    /// The re-key stage's header of a message of the internal topic (`None` otherwise).
    fn forwarded<M: Message>(&self, msg: &M) -> Option<Forwarded> {
        if self.sources == 0 {
            return None;
        }
        let headers = msg.headers()?;
        Forwarded::from_headers(headers.iter().map(|h| (h.key, h.value)))
    }

    /// Runs `f` on group `p`'s task (`None`: not assigned) with the output of what it does
    /// now: to the producer, or held for the next transaction while a commit is in
    /// progress. Counts the records written.
    fn with_task_out<R>(
        &mut self,
        p: i32,
        received: u64,
        f: impl FnOnce(&mut Task, &mut LiveOut<'_>) -> R,
    ) -> Option<R> {
        let (tasks, mut out, records) = self.outlet(received);
        let task = tasks.get_mut(&p)?;
        let result = f(task, &mut out);
        *records += out.records;
        Some(result)
    }

    /// Sends what a group made in a batch ([`batch`]), as [`Core::with_task_out`] would
    /// have.
    fn send_buffered(&mut self, buffered: &output::Buffered) {
        let (_, mut out, records) = self.outlet(0);
        out.send_buffered(buffered);
        *records += out.records;
    }

    /// The groups, and the live output of what is done now (records received at
    /// `received`), with the count of records to add what it wrote to.
    fn outlet(&mut self, received: u64) -> (&mut Map<i32, Task>, LiveOut<'_>, &mut u64) {
        let Core {
            tasks,
            producers,
            active,
            deferred,
            closing,
            epoch_slot,
            config,
            records,
            open_stamps,
            hold,
            dead_letters,
            ..
        } = self;
        let route = Route::new(config.kafka.exactly_once, closing.is_some(), deferred, *epoch_slot);
        let producer = &producers[*active];
        (tasks, LiveOut::new(producer, route, config, received, open_stamps, hold, dead_letters), records)
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
    let layout = prepare_topics(&config)?;
    let partitions = layout.partitions;
    let joined = client::joined_topics(&config);
    let sources = if config.kafka.repartition { layout.inputs.iter().map(|(_, n)| *n as u32).sum() } else { 0 };
    info!(
        brokers = %config.kafka.brokers,
        group = %config.kafka.group_id,
        inputs = ?layout.inputs,
        joined = ?joined,
        partitions,
        kafka = ?config.kafka,
        "starting worker"
    );
    let epoch = Instant::now();
    let mut producers = Vec::new();
    for id in client::producer_ids(&config) {
        let mut pc = client_config(&config);
        // State records (one shopper's touches and orders) can outgrow the 1 MB default.
        pc.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", STATE_MESSAGE_BYTES.to_string());
        if let Some(id) = &id {
            pc.set("transactional.id", id)
                .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string());
        }
        let producer: BaseProducer<ProducerCtx> = with_user_settings(pc, &config)
            .create_with_context(ProducerCtx {
                failures: Mutex::default(),
                epoch,
                latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")),
                metrics: observe.metrics.clone(),
                sent: Default::default(),
                delivered: Default::default(),
            })
            .map_err(WorkerError::kafka("creating the producer"))?;
        if id.is_some() {
            // Fences a predecessor with this id and aborts what it left open.
            producer
                .init_transactions(config.transaction_timeout)
                .map_err(WorkerError::kafka("initialising transactions"))?;
        }
        producers.push(producer);
    }
    if !config.kafka.exactly_once {
        warn!("kafka.exactly_once = false: no transactions; a crash may repeat records (at least once)");
    }
    observe.health.set_producer_ready(true);

    let restorer = Restorer::spawn(&config, Processing::from_config(&config), options.stop_at_end)?;

    let core = Arc::new(parking_lot::Mutex::new(Core {
        inputs: joined.clone(),
        config: config.clone(),
        producers,
        active: 0,
        tasks: Map::default(),
        last_seen: Map::default(),
        unrestored: BTreeSet::new(),
        dispatched: BTreeSet::new(),
        restorer,
        away: BTreeSet::new(),
        checkpointer: Checkpointer::spawn(joined.clone())?,
        parked: HashMap::new(),
        held: Map::default(),
        batch: batch::Batch::new(config.threads),
        read_ahead_now: config.read_ahead,
        paused: BTreeSet::new(),
        in_txn: false,
        closing: None,
        deferred: output::Deferred::default(),
        worked_while_closing: false,
        epoch_slot: 0,
        abort_pending: false,
        last_commit: Instant::now(),
        processing: Processing::from_config(&config),
        partitions,
        sources,
        records: 0,
        fatal: None,
        epoch,
        clock: Clock { at: epoch, stamp: 0, second_ms: now_ms() / 1000 * 1000 },
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
        commit_phases: [Duration::ZERO; 3],
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
    client::fetch_for_throughput(&mut cc);
    if config.metrics_listen.is_some() {
        cc.set("statistics.interval.ms", "5000"); // consumer lag for the metrics
    }
    let consumer: BaseConsumer<ConsumerCtx> = with_user_settings(cc, &config)
        .create_with_context(ConsumerCtx { core: core.clone() })
        .map_err(WorkerError::kafka("creating the consumer"))?;
    let topics: Vec<&str> = joined.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(WorkerError::kafka("subscribing"))?;

    // SPEC 8.6: the re-key stage runs beside the joining stage, with its own consumer
    // group and transactional producer.
    let stage = if config.kafka.repartition {
        Some(repartition::Stage::spawn(&config, &layout, options.stop_at_end)?)
    } else {
        None
    };
    let result = poll_loop(&consumer, &core, &shutdown, stage.as_ref());
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
        let w = s.pipeline.watermarks();
        if c.sources > 0 {
            let idle = (0..w.len()).filter(|&i| w.is_idle(i)).count();
            let slowest = (0..w.len()).filter(|&i| !w.is_idle(i)).map(|i| w.max_ts(i)).min();
            info!(
                group = p,
                watermark = ?w.current(),
                pending = s.pipeline.engine().pending(),
                touches = s.pipeline.engine().live_touches(),
                position = ?s.positions[0],
                sources = w.len(),
                idle_sources = idle,
                slowest_source_max_ts = ?slowest,
                "partition group at shutdown"
            );
            continue;
        }
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
        let _ = c.producer().flush(c.config.transaction_timeout);
        let delivered = c.producer().context().latency.lock().expect("not poisoned").clone();
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
        state_secs = c.commit_phases[0].as_secs_f64(),
        flush_blocked_secs = c.commit_phases[1].as_secs_f64(),
        offsets_and_commit_secs = c.commit_phases[2].as_secs_f64(),
        poll_wait_secs = c.wait_time.as_secs_f64(),
        "time spent committing (start to end, overlapping processing; and the parts that block) and waiting for messages"
    );
    c.tasks.clear();
    drop(c);
    consumer.unsubscribe();
    if let Some(stage) = stage {
        stage.stop();
    }
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

/// Messages taken into a batch before it is processed ([`batch`]), at most.
const BATCH: usize = 4_096;

/// Most messages handled between two idle checks.
const MAX_BATCH: usize = 10_000;

/// Messages handled between two looks at the clock and the commit in progress.
const LOOK_EVERY: usize = 64;

fn poll_loop(
    consumer: &BaseConsumer<ConsumerCtx>,
    core: &Arc<parking_lot::Mutex<Core>>,
    shutdown: &AtomicBool,
    stage: Option<&repartition::Stage>,
) -> Result<(), WorkerError> {
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(e) = stage.and_then(repartition::Stage::failure) {
            return Err(e);
        }
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
            c.tick();
            c.restore_pending()?;
            c.serve_deliveries();
            c.advance_commit(consumer, false)?;
            // Take what is already fetched, up to the commit deadline, before committing.
            // The lock is let go around every poll: a poll may run the rebalance
            // callbacks, which take it.
            let mut taken = 0;
            let mut drained = true; // nothing more fetched: caught up with the inputs
            while let Some(result) = polled.take() {
                match result {
                    Ok(msg) => c.take(&msg),
                    Err(e) => warn!(error = %e, "consumer error"),
                }
                taken += 1;
                if taken % LOOK_EVERY == 0 {
                    c.tick();
                    if c.batch.len() >= BATCH {
                        c.run_batch()?;
                    }
                    // A commit in progress finishes as soon as it is delivered, and the
                    // next may be due.
                    c.advance_commit(consumer, false)?;
                    if taken >= MAX_BATCH || (c.closing.is_none() && c.commit_due(false)) {
                        drained = false;
                        break;
                    }
                }
                polled = parking_lot::MutexGuard::unlocked(&mut c, || consumer.poll(Duration::ZERO));
            }
            c.run_batch()?;
            c.check_idle(consumer)?;
            c.align(consumer)?;
            if c.advance_commit(consumer, false)? && c.commit_due(drained) {
                c.start_commit(false)?;
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
            c.pause_unrestored(consumer);
        }
    }
    Ok(())
}

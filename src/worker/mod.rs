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

pub mod preflight;
pub mod produce;
pub mod restate;
pub mod state;
pub mod task;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use self::state::{checkpoint_items, CommitMeta, StateItem};
use self::task::{Routing, Task};
use crate::codec::encode_record;
use crate::config::Config;
use crate::engine::Stats;
use crate::metrics::{Health, Metrics};
use crate::model::{DeadLetter, Millis, RecordView};
use crate::pipeline::{Processing, Sink};

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

/// Base librdkafka settings shared by every client, then the user's `[kafka.client]`.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    c
}

fn with_user_settings(mut c: ClientConfig, config: &Config) -> ClientConfig {
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Delivery reports: any failure; without transactions also the processing latency (a
/// record is visible once delivered).
struct ProducerCtx {
    failures: Mutex<Vec<String>>,
    /// Time origin of the receive stamps carried by records (see [`RECORD_TAG`]).
    epoch: Instant,
    latency: Mutex<Histogram<u64>>,
    metrics: Arc<Metrics>,
}

/// Delivery opaque bit marking a record that carries the receive stamp (nanoseconds
/// since the epoch) of the message that made it, in the other bits.
const RECORD_TAG: usize = 1 << 63;

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    /// 0: nothing to note; [`RECORD_TAG`] set: a record with its receive stamp (no
    /// transactions only).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        match result {
            Ok(_) if tag & RECORD_TAG != 0 => {
                let took = (self.epoch.elapsed().as_nanos() as u64).saturating_sub((tag & !RECORD_TAG) as u64);
                self.latency.lock().expect("not poisoned").saturating_record(took / 1000);
                self.metrics.observe_latency(Duration::from_nanos(took));
            }
            Ok(_) => {}
            Err((e, _)) => self.failures.lock().expect("not poisoned").push(e.to_string()),
        }
    }
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

/// The restore consumer's context: reaching the end of a partition is how a restore
/// knows it has read everything (`enable.partition.eof`), not an error to log.
struct RestoreCtx;

impl ClientContext for RestoreCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if !state::is_eof(&error) {
            error!(error = %error, reason, "librdkafka error (restore consumer)");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreCtx {}

/// The consumer's context: hands rebalances to the core.
struct ConsumerCtx {
    core: Arc<parking_lot::Mutex<Core>>,
}

impl ClientContext for ConsumerCtx {
    /// librdkafka statistics (every `statistics.interval.ms`): consumer lag of every
    /// assigned partition.
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(core) = self.core.try_lock() else { return };
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // Statistics list every partition of the topic; a revoked one keeps its
                // last offsets and must not bring its series back.
                let assigned = core.tasks.contains_key(p) || core.unrestored.contains(p);
                if let Some(lag) = consumer_lag(part).filter(|_| assigned) {
                    core.observe.metrics.set_consumer_lag(topic, *p, lag);
                }
            }
        }
    }
}

/// Messages between the consumer's position in a partition and its end, from
/// librdkafka statistics; `None` while unknown.
///
/// The position is the offset after the last message handed to the worker (before the
/// first one, the committed offset it starts from); the end is the last stable offset,
/// as the worker reads `read_committed`. librdkafka's own `consumer_lag` counts from the
/// committed offset, which only the consumer's own commits move: with exactly-once the
/// offsets are committed by the producer's transaction, so it would be unknown for a new
/// group and frozen at the restart offset (growing forever) for an old one.
fn consumer_lag(part: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
    let position = [part.app_offset, part.committed_offset].into_iter().find(|&o| o >= 0)?;
    // An end older than the position (statistics gathered at different moments): caught up.
    (end >= 0).then(|| (end - position).max(0))
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = self.core.lock();
            info!(partitions = tpl.count(), "partitions revoked: committing and handing over");
            core.observe.metrics.rebalance("revoke");
            core.observe.health.set_assigned(false);
            if let Err(e) = core.commit(consumer, true) {
                warn!(error = %e, "commit before revocation failed; the next owner redoes the uncommitted part");
                if e.is_fatal() {
                    core.fatal = Some(e);
                } else {
                    core.abort();
                }
            }
            for p in core.tasks.keys() {
                core.observe.metrics.remove_partition(*p);
            }
            core.tasks.clear();
            core.exported.clear();
            core.unrestored.clear();
            core.last_seen.clear();
            core.paused.clear();
            core.held.clear();
            core.held_bytes.clear();
            core.pressed = false;
            core.ends.clear();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut core = self.core.lock();
                let groups: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(groups = ?groups, "partitions assigned");
                core.observe.metrics.rebalance("assign");
                core.observe.health.set_assigned(!groups.is_empty());
                core.unrestored.extend(groups);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => error!(error = %e, "rebalance error"),
        }
    }
}

/// Records and dead letters of live processing go straight to the producer.
struct LiveOut<'a> {
    producer: &'a BaseProducer<ProducerCtx>,
    output_topic: &'a str,
    dlq_topic: &'a str,
    shadow_topic: &'a str,
    buf: Vec<u8>,
    records: u64,
    /// Receive stamp of the message being handled (nanoseconds since the core's epoch).
    received: u64,
    stamps: &'a mut Vec<u64>,
    hold: &'a mut Histogram<u64>,
    dead_letters: &'a mut SampledLog,
    /// No transactions: latency is timed at delivery, not at the commit.
    at_delivery: bool,
}

/// Logs dead letters at a sampled rate: the first one, then at most one line per
/// [`SampledLog::EVERY`] with the number left unlogged since the previous line.
struct SampledLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl SampledLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn dead_letter(&mut self, d: &DeadLetter) {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        let source = serde_json::to_string(&d.source).unwrap_or_default();
        warn!(reason = d.reason.as_str(), error = %d.error, source = %source, unlogged_since_last = self.suppressed, "dead letter");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

impl LiveOut<'_> {
    fn send(&mut self, topic: &str, key: &[u8], payload: Vec<u8>, opaque: usize) {
        let record = BaseRecord::with_opaque_to(topic, opaque).key(key).payload(&payload);
        if let Err(e) = send_waiting(self.producer, record) {
            // Caught again at commit: the transaction then aborts and state is rebuilt.
            self.producer.context().failures.lock().expect("not poisoned").push(e.to_string());
        }
    }
}

impl Sink for LiveOut<'_> {
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        // `tag`: when the purchase or refund was received (0: restored, unknown).
        if tag > 0 && tag <= self.received {
            self.hold.saturating_record((self.received - tag) / 1000);
        }
        // Exactly once: visible at the commit (timed there); otherwise at delivery.
        let opaque = if self.at_delivery { RECORD_TAG | self.received as usize } else { 0 };
        if !self.at_delivery {
            self.stamps.push(self.received);
        }
        self.buf.clear();
        encode_record(record, &mut self.buf);
        self.buf.pop(); // no newline in a Kafka value
        let payload = std::mem::take(&mut self.buf);
        // Shadow records (SPEC 8.3) go to their own topic, in the same transaction.
        let topic = if record.shadow { self.shadow_topic } else { self.output_topic };
        self.send(topic, record.creator_id.as_bytes(), payload, opaque);
        self.records += 1;
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        self.dead_letters.dead_letter(&dead_letter);
        let payload = serde_json::to_vec(&dead_letter).expect("dead letters serialise");
        self.send(self.dlq_topic, b"", payload, 0);
    }
}

impl Core {
    fn ensure_txn(&mut self) -> Result<(), WorkerError> {
        if !self.in_txn {
            if self.config.kafka.exactly_once {
                if self.abort_pending {
                    // A previous abort timed out: librdkafka wants it called again first.
                    self.producer
                        .abort_transaction(self.config.transaction_timeout)
                        .map_err(WorkerError::kafka("finishing an earlier abort"))?;
                    self.abort_pending = false;
                }
                self.producer.begin_transaction().map_err(WorkerError::kafka("beginning a transaction"))?;
            }
            self.in_txn = true;
        }
        Ok(())
    }

    fn stamp(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Rebuilds every assigned partition group that is not yet restored.
    fn restore_pending(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        while let Some(p) = self.unrestored.pop_first() {
            let started = Instant::now();
            let inputs: Vec<(String, i32)> = self.inputs.iter().map(|t| (t.clone(), p)).collect();
            let timeout = self.config.transaction_timeout.max(Duration::from_secs(60));
            let committed = state::committed(consumer, &inputs, &self.config.kafka.group_id, timeout)?;
            let deadline = Instant::now() + Duration::from_secs(300);
            let part = match committed.seq {
                Some(_) => {
                    state::read_partition(&self.restore_consumer, &self.config.kafka.state_topic, p, deadline, &|| {
                        false
                    })?
                }
                None => state::PartitionState::default(),
            };
            let (read_records, read_bytes) = (part.records, part.bytes);
            let routing = Routing { partition: p, partitioner: self.config.partitioner, partitions: self.partitions };
            let (restored, ckpt_seq) = state::rebuild(
                &self.restore_consumer,
                part,
                &inputs,
                &self.inputs,
                &committed,
                &self.processing,
                routing,
                deadline,
                &|| false,
            )?;
            let mut task = Task::new(routing, restored, ckpt_seq);
            // SPEC 8.1: the state was rebuilt under the config in force when it was
            // written; from here on this worker's config applies.
            let changed = task.state.pipeline.processing().differences(&self.processing);
            for (key, was, now) in &changed {
                info!(group = p, key = %key, was = %was, now = %now, "config differs from the one this state was written under: the new value applies from now on");
            }
            if !changed.is_empty() {
                task.set_processing(self.processing.clone());
            }
            task.wake_inputs();
            let engine = task.state.pipeline.engine();
            info!(
                group = p,
                events = engine.stats().events_in,
                touches = engine.live_touches(),
                shoppers = engine.shoppers(),
                seq = task.state.seq,
                checkpoint_seq = ?task.ckpt_seq,
                state_records = read_records,
                state_bytes = read_bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "partition group restored"
            );
            for i in 0..self.inputs.len() {
                self.last_seen.insert((p, i as u8), Instant::now());
                if self.stop_at_end {
                    let ends = consumer
                        .fetch_watermarks(&self.inputs[i], p, Duration::from_secs(30))
                        .map_err(WorkerError::kafka("reading end offsets"))?;
                    self.ends.insert((p, i as u8), ends);
                }
            }
            self.exported.insert(p, task.state.pipeline.engine().stats().clone());
            self.tasks.insert(p, task);
        }
        Ok(())
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

    /// Whether input partition `key` runs more than the allowed read-ahead past its
    /// group's watermark.
    fn ahead(&self, (p, i): (i32, u8)) -> bool {
        let Some(task) = self.tasks.get(&p) else { return false };
        let w = &task.state.pipeline.watermarks();
        w.current().is_some_and(|w0| w.max_ts(usize::from(i)) > w0.saturating_add(self.read_ahead_now))
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
        let mut out = LiveOut {
            producer,
            output_topic: &config.kafka.output_topic,
            dlq_topic: &config.kafka.dlq_topic,
            shadow_topic: &config.kafka.shadow_topic,
            buf: Vec::new(), // most messages (touches) write nothing
            records: 0,
            received,
            stamps: open_stamps,
            hold,
            dead_letters,
            at_delivery: !config.kafka.exactly_once,
        };
        // Whole seconds: consecutive messages share a log step.
        let now = now_ms() / 1000 * 1000;
        task.on_message(input, topic, offset, payload, now, received, &mut out);
        *records += out.records;
        last_seen.insert((p, input as u8), Instant::now());
        Ok(())
    }

    /// Event-time alignment: pauses an input partition whose events run more than
    /// `read_ahead` past its group's watermark, resumes it when the others catch up. A
    /// partition that is slow to deliver (a backlog, a large message) then cannot let the
    /// others race ahead; without this, per-shopper touch caps and state size would depend
    /// on fetch timing. Replay reads files the same way (the one furthest behind first).
    ///
    /// Back-pressure: while this worker holds more than `limits.max_live_touches` touches
    /// or `limits.max_pending_purchases` pending purchases, the allowance shrinks to
    /// `max_out_of_orderness`: only the input(s) furthest behind in event time are read.
    /// They are what holds the watermark back, so reading them advances it, which evicts
    /// touches and settles purchases; nothing is dropped and the group never stops.
    fn align(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        let touches: usize = self.tasks.values().map(|t| t.state.pipeline.engine().live_touches()).sum();
        let pending: usize = self.tasks.values().map(|t| t.state.pipeline.engine().pending()).sum();
        let over_touches = touches > self.config.max_live_touches;
        let over_pending = pending > self.config.max_pending_purchases;
        self.observe.metrics.set_backpressure("live_touches", over_touches);
        self.observe.metrics.set_backpressure("pending_purchases", over_pending);
        let pressed = over_touches || over_pending;
        if pressed != self.pressed {
            if pressed {
                warn!(
                    touches,
                    pending,
                    max_live_touches = self.config.max_live_touches,
                    max_pending_purchases = self.config.max_pending_purchases,
                    "state limit reached: back-pressure, reading only the inputs furthest behind in event time"
                );
            } else {
                info!(touches, pending, "state back under its limits: back-pressure released");
            }
            self.pressed = pressed;
        }
        self.read_ahead_now = if pressed { self.config.engine.max_out_of_orderness } else { self.config.read_ahead };
        // Held messages whose input is no longer ahead go to the engine, in order, until
        // it runs ahead again. Repeat while that lets another input move.
        loop {
            let mut moved = false;
            let keys: Vec<(i32, u8)> = self.held.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
            for key in keys {
                while !self.ahead(key) {
                    let Some(msg) = self.held.get_mut(&key).and_then(VecDeque::pop_front) else { break };
                    *self.held_bytes.entry(key).or_default() -= msg.payload().map_or(0, <[u8]>::len);
                    let payload = msg.payload().unwrap_or_default();
                    self.process(usize::from(key.1), key.0, msg.topic(), msg.offset(), payload)?;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        // The consumer fetches ahead-running partitions until they hold HOLD_BYTES, then
        // pauses them (a pause drops librdkafka's prefetched messages, which are fetched
        // again on resume: holding avoids that churn for short leads).
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (&key, &bytes) in &self.held_bytes {
            if bytes >= HOLD_BYTES && self.paused.insert(key) {
                pause.add_partition(&self.inputs[usize::from(key.1)], key.0);
            }
        }
        let drained: Vec<(i32, u8)> = self
            .paused
            .iter()
            .filter(|k| self.held_bytes.get(k).copied().unwrap_or(0) < HOLD_BYTES / 2)
            .copied()
            .collect();
        for key in drained {
            self.paused.remove(&key);
            resume.add_partition(&self.inputs[usize::from(key.1)], key.0);
        }
        if pause.count() > 0 {
            consumer.pause(&pause).map_err(WorkerError::kafka("pausing partitions ahead in event time"))?;
        }
        if resume.count() > 0 {
            consumer.resume(&resume).map_err(WorkerError::kafka("resuming partitions"))?;
        }
        Ok(())
    }

    /// Marks inputs idle that showed nothing for `idle_timeout` *and* have nothing left
    /// to read: a partition that is merely behind (a backlog after a restart, a slow
    /// fetch) is not idle, or the watermark would overtake its events.
    fn check_idle(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        let idle_timeout = self.config.idle_timeout;
        let candidates: Vec<(i32, u8)> = self
            .last_seen
            .iter()
            .filter(|(_, at)| at.elapsed() >= idle_timeout)
            .map(|(k, _)| *k)
            .filter(|(p, i)| self.tasks.get(p).is_some_and(|t| !t.state.pipeline.watermarks().is_idle(usize::from(*i))))
            .collect();
        let mut due = Vec::new();
        for (p, i) in candidates {
            let topic = &self.inputs[usize::from(i)];
            // The end offset the fetcher saw last (no round trip: this runs every loop
            // for every quiet partition); a broker query only when none is known yet.
            let (low, high) = match cached_watermarks(consumer, topic, p) {
                Some(known) => known,
                None => consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map_err(WorkerError::kafka("reading watermarks for the idle check"))?,
            };
            let held = self.held.get(&(p, i)).is_some_and(|q| !q.is_empty());
            let pending = held
                || match self.tasks.get(&p).and_then(|t| t.state.positions[usize::from(i)]) {
                    Some(pos) => pos < high,
                    None => high > low,
                };
            if pending {
                self.last_seen.insert((p, i), Instant::now());
            } else {
                due.push((p, i));
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        self.ensure_txn()?;
        let received = self.stamp();
        let Core { tasks, producer, config, records, open_stamps, hold, dead_letters, .. } = self;
        for (p, i) in due {
            let mut out = LiveOut {
                producer,
                output_topic: &config.kafka.output_topic,
                dlq_topic: &config.kafka.dlq_topic,
                shadow_topic: &config.kafka.shadow_topic,
                buf: Vec::new(),
                records: 0,
                received,
                stamps: open_stamps,
                hold,
                dead_letters,
                at_delivery: !config.kafka.exactly_once,
            };
            if let Some(task) = tasks.get_mut(&p) {
                task.set_idle(usize::from(i), &mut out);
            }
            *records += out.records;
        }
        Ok(())
    }

    /// Writes the order log (and due snapshots) and commits records + offsets atomically.
    fn commit(&mut self, consumer: &BaseConsumer<ConsumerCtx>, force_snapshot: bool) -> Result<(), WorkerError> {
        self.export_state();
        if !self.in_txn {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        let state_topic = self.config.kafka.state_topic.clone();
        let mut checkpointed = Vec::new();
        for (p, task) in &mut self.tasks {
            let mut items = Vec::new();
            if !task.log.is_empty() {
                task.state.seq += 1;
                items.push(StateItem::log(task.state.seq, std::mem::take(&mut task.log)));
            }
            // A group's first commit writes a checkpoint (a restore needs one); then one
            // every snapshot_interval, holding only the shoppers changed since the last.
            let due = force_snapshot || task.last_checkpoint.elapsed() >= self.config.snapshot_interval;
            let behind = task.ckpt_seq != Some(task.state.seq);
            if task.state.seq > 0 && behind && (due || task.ckpt_seq.is_none()) {
                items.extend(checkpoint_items(&mut task.state, &self.inputs, task.ckpt_seq.unwrap_or(0)));
                checkpointed.push((*p, task.state.seq));
            }
            for item in &items {
                send_state(&self.producer, &state_topic, *p, &item.key, item.value.as_deref())?;
            }
        }
        let timeout = self.config.transaction_timeout;
        self.producer.flush(timeout).map_err(WorkerError::kafka("flushing the transaction"))?;
        let failures = std::mem::take(&mut *self.producer.context().failures.lock().expect("not poisoned"));
        if let Some(first) = failures.first() {
            return Err(WorkerError::Setup(format!("{} message(s) not delivered: {first}", failures.len())));
        }
        let mut tpl = TopicPartitionList::new();
        for (p, task) in &self.tasks {
            if task.state.seq == 0 {
                continue; // nothing processed yet
            }
            let meta = CommitMeta::encode(task.state.seq);
            for (i, topic) in self.inputs.iter().enumerate() {
                if let Some(pos) = task.state.positions[i] {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(pos)).map_err(WorkerError::kafka("offsets"))?;
                    if let Some(mut e) = tpl.find_partition(topic, *p) {
                        e.set_metadata(meta.clone());
                    }
                }
            }
        }
        if self.config.kafka.exactly_once {
            let cgm =
                consumer.group_metadata().ok_or_else(|| WorkerError::Setup("no consumer group metadata".into()))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &cgm, timeout)
                .map_err(WorkerError::kafka("sending offsets to the transaction"))?;
            self.producer.commit_transaction(timeout).map_err(WorkerError::kafka("committing the transaction"))?;
        } else if tpl.count() > 0 {
            // Everything above is delivered (flushed, no failures): now the offsets.
            consumer.commit(&tpl, CommitMode::Sync).map_err(WorkerError::kafka("committing offsets"))?;
        }
        self.in_txn = false;
        self.last_commit = Instant::now();
        self.observe.metrics.transaction_committed(started.elapsed());
        self.commit_time += started.elapsed();
        self.commits += 1;
        let now = self.stamp();
        for stamp in self.open_stamps.drain(..) {
            let took = now.saturating_sub(stamp);
            self.latency.saturating_record(took / 1000);
            self.observe.metrics.observe_latency(Duration::from_nanos(took));
        }
        for (p, seq) in checkpointed {
            if let Some(task) = self.tasks.get_mut(&p) {
                task.ckpt_seq = Some(seq);
                task.last_checkpoint = Instant::now();
            }
        }
        Ok(())
    }

    /// Aborts the open transaction and forgets all in-memory state: every assigned group
    /// is rebuilt from Kafka and the consumer goes back to the committed offsets.
    fn abort(&mut self) {
        self.open_stamps.clear();
        if self.in_txn {
            self.observe.metrics.transaction_aborted();
        }
        if (self.in_txn || self.abort_pending) && self.config.kafka.exactly_once {
            // What the aborted transaction still holds is discarded anyway: drop what was
            // not sent, and serve the delivery reports of what was (librdkafka's abort
            // waits for them, and only the application's poll delivers them).
            self.producer.purge(PurgeConfig::default().queue());
            let deadline = Instant::now() + self.config.transaction_timeout;
            while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
                self.producer.poll(Duration::from_millis(20));
            }
            match self.producer.abort_transaction(self.config.transaction_timeout) {
                Ok(()) => self.abort_pending = false,
                Err(e) => {
                    error!(error = %e, "aborting the transaction failed");
                    if is_fatal(&e) {
                        self.fatal = Some(WorkerError::Kafka { context: "aborting", source: e });
                    } else {
                        // Retried before the next transaction begins.
                        self.abort_pending = true;
                    }
                }
            }
        }
        self.in_txn = false;
        // Failures of the aborted transaction's messages (purged ones included) are not
        // the next transaction's.
        self.producer.context().failures.lock().expect("not poisoned").clear();
        let groups: Vec<i32> = self.tasks.keys().copied().collect();
        self.unrestored.extend(groups);
        self.tasks.clear();
        self.exported.clear();
    }

    /// Counter deltas and state gauges of every group, to the metrics.
    fn export_state(&mut self) {
        self.observe.metrics.add_bytes(std::mem::take(&mut self.bytes_in));
        let now = now_ms();
        for (p, task) in &self.tasks {
            let engine = task.state.pipeline.engine();
            if let Some(before) = self.exported.get_mut(p) {
                self.observe.metrics.add_stats(before, engine.stats());
                before.clone_from(engine.stats());
            }
            self.observe.metrics.set_state(
                *p,
                engine.live_touches(),
                engine.shoppers(),
                engine.pending(),
                engine.ledger_len(),
            );
            self.observe
                .metrics
                .set_watermark_lag(*p, task.state.pipeline.watermarks().current().map(|w| now.saturating_sub(w)));
        }
    }

    /// `--stop-at-end`: caught up, and every input idle, so the watermark has passed all
    /// that the input lets it pass (the tail of purchases is written before stopping).
    fn finished(&self) -> bool {
        self.caught_up()
            && self.tasks.values().all(|t| (0..self.inputs.len()).all(|i| t.state.pipeline.watermarks().is_idle(i)))
    }

    /// `--stop-at-end`: every assigned input partition has reached its end offset.
    fn caught_up(&self) -> bool {
        self.stop_at_end
            && !self.tasks.is_empty()
            && self.unrestored.is_empty()
            && self.ends.iter().all(|((p, i), (low, high))| {
                self.tasks.get(p).is_some_and(|t| t.state.positions[usize::from(*i)].unwrap_or(*low) >= *high)
            })
    }

    /// Resumes every paused partition (after an abort, state and alignment start over).
    fn resume_all(&mut self, consumer: &BaseConsumer<ConsumerCtx>) {
        self.held.clear();
        self.held_bytes.clear();
        let mut tpl = TopicPartitionList::new();
        for (p, i) in std::mem::take(&mut self.paused) {
            tpl.add_partition(&self.inputs[usize::from(i)], p);
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(&tpl) {
                warn!(error = %e, "resuming partitions failed");
            }
        }
    }
}

fn send_state(
    producer: &BaseProducer<ProducerCtx>,
    topic: &str,
    p: i32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<(), WorkerError> {
    let mut record = BaseRecord::with_opaque_to(topic, 0).partition(p).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    send_waiting(producer, record).map_err(WorkerError::kafka("writing the state topic"))
}

/// Sends one record, waiting (and serving delivery reports) while the local queue is full.
pub(crate) fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Checks the inputs are co-partitioned and creates the state topic if missing.
fn prepare_topics(config: &Config) -> Result<i32, WorkerError> {
    let probe: BaseConsumer =
        with_user_settings(client_config(config), config).create().map_err(WorkerError::kafka("creating a client"))?;
    let timeout = Duration::from_secs(30);
    let mut counts = Vec::new();
    for t in &config.kafka.input_topics {
        let md = probe.fetch_metadata(Some(t), timeout).map_err(WorkerError::kafka("reading topic metadata"))?;
        let n = md.topics().first().map_or(0, |m| if m.error().is_some() { 0 } else { m.partitions().len() });
        if n == 0 {
            return Err(WorkerError::Setup(format!("input topic {t:?} does not exist (kafka.input_topics)")));
        }
        counts.push(n as i32);
    }
    let n = counts[0];
    if counts.iter().any(|&c| c != n) {
        let listed: Vec<String> =
            config.kafka.input_topics.iter().zip(&counts).map(|(t, c)| format!("{t} ({c} partitions)")).collect();
        return Err(WorkerError::Setup(format!(
            "input topics {} have different partition counts: the worker joins partition p of every input, so they \
             must be co-partitioned by user_id with equal counts (SPEC 8.6). Re-create them with equal counts, \
             keyed by user_id (kafka.repartition, which re-keys inputs through an internal topic, is not in this \
             release yet) (kafka.input_topics)",
            listed.join(", ")
        )));
    }
    let state = &config.kafka.state_topic;
    let md = probe.fetch_metadata(Some(state), timeout).map_err(WorkerError::kafka("reading topic metadata"))?;
    let existing = md.topics().first().filter(|m| m.error().is_none()).map_or(0, |m| m.partitions().len() as i32);
    if existing == 0 {
        let admin: AdminClient<_> = with_user_settings(client_config(config), config)
            .create()
            .map_err(WorkerError::kafka("creating an admin client"))?;
        // Compacted: the latest record per key (shopper, group record, log entry) is the
        // state; tombstones remove gone shoppers and covered log entries.
        let max_bytes = STATE_MESSAGE_BYTES.to_string();
        let topic = NewTopic::new(state, n, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact")
            .set("max.message.bytes", &max_bytes)
            .set("min.cleanable.dirty.ratio", "0.1")
            .set("segment.ms", "3600000");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WorkerError::Setup(format!("runtime: {e}")))?;
        let results = rt
            .block_on(admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(timeout))))
            .map_err(WorkerError::kafka("creating the state topic"))?;
        for r in results {
            if let Err((name, code)) = r {
                if code != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(WorkerError::Setup(format!("creating state topic {name}: {code}")));
                }
            }
        }
        info!(topic = %state, partitions = n, "created the state topic");
    } else if existing != n {
        return Err(WorkerError::Setup(format!(
            "state topic {state:?} has {existing} partitions, the inputs have {n} (kafka.state_topic)"
        )));
    }
    Ok(n)
}

/// Claims the lowest free slot `n` for the default transactional id `<base>-<n>` with a
/// lock file per slot in the temp directory, so workers started on one host with the same
/// config get distinct ids and never fence each other. A restarted worker gets its old
/// slot back (a dead process holds no lock), so it fences its own previous incarnation;
/// a stopped (zombie) one keeps its slot, and the consumer group's generation fences its
/// commits instead (KIP-447: offsets are sent with the group metadata).
fn claim_transactional_id(base: &str) -> Result<(String, std::fs::File), WorkerError> {
    let safe: String = base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let dir = std::env::temp_dir();
    for slot in 0..1024 {
        let path = dir.join(format!("attrib-txn-{safe}-{slot}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WorkerError::Setup(format!("transactional id slot lock {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                let id = format!("{base}-{slot}");
                info!(transactional_id = %id, lock = %path.display(), "claimed a transactional id slot on this host");
                return Ok((id, file));
            }
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(WorkerError::Setup(format!("transactional id slot lock {}: {e}", path.display())))
            }
        }
    }
    Err(WorkerError::Setup("no free transactional id slot on this host (kafka.transactional_id)".into()))
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

/// The low and high offsets of a partition as the consumer last saw them in a fetch
/// response (`rd_kafka_get_watermark_offsets`: local, no broker round trip; the rdkafka
/// crate only wraps the querying variant). `None` while unknown.
fn cached_watermarks(consumer: &BaseConsumer<ConsumerCtx>, topic: &str, p: i32) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid
    // NUL-terminated string for the call; low/high are valid out-pointers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            p,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0 && high >= 0)
        .then_some((low, high))
}

/// Moves the consumer back to the committed offsets of its assignment.
fn rewind(consumer: &BaseConsumer<ConsumerCtx>, inputs: &[String]) -> Result<(), WorkerError> {
    let assignment = consumer.assignment().map_err(WorkerError::kafka("reading the assignment"))?;
    let committed = consumer
        .committed_offsets(assignment.clone(), Duration::from_secs(30))
        .map_err(WorkerError::kafka("reading committed offsets"))?;
    for e in committed.elements() {
        if !inputs.iter().any(|t| t == e.topic()) {
            continue;
        }
        let to = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        consumer.seek(e.topic(), e.partition(), to, Duration::from_secs(10)).map_err(WorkerError::kafka("seeking"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::Partition;

    use super::consumer_lag;

    /// librdkafka's "no offset" (`RD_KAFKA_OFFSET_INVALID`).
    const INVALID: i64 = -1001;

    fn part(app: i64, committed: i64, ls: i64, hi: i64) -> Partition {
        Partition {
            app_offset: app,
            committed_offset: committed,
            ls_offset: ls,
            hi_offset: hi,
            // What librdkafka reports for a transactional consumer of a new group.
            consumer_lag: -1,
            ..Partition::default()
        }
    }

    #[test]
    fn consumer_lag_counts_from_the_position_not_the_committed_offset() {
        // A new group with exactly-once: nothing committed through the consumer.
        assert_eq!(consumer_lag(&part(700, INVALID, 1000, 1000)), Some(300));
        // A restarted group: the committed offset is where it started, not where it is.
        assert_eq!(consumer_lag(&part(900, 100, 1000, 1200)), Some(100), "read_committed: the stable end");
        // Nothing handed over yet: from the committed offset.
        assert_eq!(consumer_lag(&part(INVALID, 400, 1000, 1000)), Some(600));
        assert_eq!(consumer_lag(&part(1000, INVALID, 990, 1000)), Some(0), "stale end: caught up");
        assert_eq!(consumer_lag(&part(50, INVALID, INVALID, 80)), Some(30), "no stable offset yet: the high one");
    }

    #[test]
    fn consumer_lag_is_unknown_without_a_position_or_an_end() {
        assert_eq!(consumer_lag(&part(INVALID, INVALID, 1000, 1000)), None);
        assert_eq!(consumer_lag(&part(10, INVALID, INVALID, INVALID)), None);
    }
}

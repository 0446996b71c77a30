//! The re-key stage (`kafka.repartition`, SPEC 8.6): inputs keyed any way, with any
//! partition count, re-keyed by `user_id` into the internal topic
//! `<group_id>-repartition`, exactly once, for the joining stage to read as it reads
//! co-partitioned inputs.
//!
//! - **Its own consumer group** (`<group_id>-repartitioner`) over the input topics,
//!   `read_committed`, on its own thread in the worker process: several workers share the
//!   source partitions, and the two groups rebalance independently.
//! - **Its own transactional producer** (`<transactional_id>-repartitioner`, so unique
//!   per process like the worker's). Each transaction holds the forwarded events and the
//!   stage's input offsets (`send_offsets_to_transaction` with the group metadata): an
//!   input message reaches the internal topic exactly once. After a failed transaction
//!   the stage aborts and goes back to its committed offsets.
//! - **Placement**: each event goes to the partition its `user_id` maps to under
//!   `kafka.partitioner` among `kafka.partitions`, keyed by `user_id`, so the joiner's
//!   `misrouted` check holds. A message that does not decode (no `user_id` to place it
//!   by) goes to partition 0, and the joiner dead-letters it as today, naming the source
//!   topic, partition and offset: nothing is lost, one place handles dead letters.
//! - **Watermarks** ([`super::forward`]): every forwarded event names its source
//!   partition; the stage writes markers (largest event time so far, idle or not) per
//!   source partition to every internal partition: when a source goes idle or active
//!   again, at every commit for the sources that moved, every [`MARK_EVERY`] forwarded
//!   events, and for every source it owns every half `time.idle_timeout` (a joiner that
//!   takes over a group wakes every source and learns again which are idle). A source is
//!   idle when it showed nothing for `time.idle_timeout` and has nothing left to read, or,
//!   with `--stop-at-end`, at once when it reached the end offset it had when the stage
//!   got it.
//!   Event times more than `time.max_future_skew` ahead of the clock do not move a marker
//!   (the joiner dead-letters those events).
//! - **Read-ahead** ([`StageCore::ahead`]): a source running more than `kafka.read_ahead`
//!   past the slowest source the stage reads is held back (its messages held, the
//!   partition paused once it holds [`HOLD_BYTES`]), so the joiner gets the sources
//!   aligned in event time whatever the fetch sizes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::client::{client_config, fetch_for_throughput, repartition_topic, send_waiting, with_user_settings, Layout};
use super::flow::cached_watermarks;
use super::forward::Forwarded;
use super::{now_ms, WorkerError, HOLD_BYTES, STATE_MESSAGE_BYTES};
use crate::codec::{DecodeError, Decoder};
use crate::config::Config;
use crate::model::{Event, Millis};
use crate::routing::Partitioner;

/// Every this many forwarded events, markers for the sources that moved.
pub const MARK_EVERY: u64 = 5_000;

/// How often every owned source's marker is written again, moved or not: half of
/// `time.idle_timeout` (at least 100 ms). A joiner that takes over a group wakes every
/// source and hears again within this which are idle, as a worker without repartitioning
/// marks an input idle again after `idle_timeout`.
fn refresh_interval(config: &Config) -> Duration {
    (config.idle_timeout / 2).max(Duration::from_millis(100))
}

/// The stage as the worker's poll loop sees it.
pub(super) struct Stage {
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<WorkerError>>>,
    thread: Option<JoinHandle<()>>,
}

impl Stage {
    /// Creates the stage's clients (errors surface here, at start) and starts its thread.
    pub fn spawn(config: &Config, layout: &Layout, stop_at_end: bool) -> Result<Stage, WorkerError> {
        let exactly_once = config.kafka.exactly_once;
        let mut pc = client_config(config);
        pc.set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", STATE_MESSAGE_BYTES.to_string());
        if exactly_once {
            pc.set("transactional.id", format!("{}-repartitioner", config.kafka.transactional_id))
                .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string());
        }
        let producer: BaseProducer<StageProducerCtx> = with_user_settings(pc, config)
            .create_with_context(StageProducerCtx::default())
            .map_err(WorkerError::kafka("creating the re-key stage's producer"))?;
        if exactly_once {
            producer
                .init_transactions(config.transaction_timeout)
                .map_err(WorkerError::kafka("initialising the re-key stage's transactions"))?;
        }
        let group = format!("{}-repartitioner", config.kafka.group_id);
        let core = Arc::new(parking_lot::Mutex::new(StageCore {
            topic: repartition_topic(config),
            partitions: layout.partitions,
            partitioner: config.partitioner,
            index: {
                let mut index = HashMap::new();
                let mut next = 0u32;
                for (t, n) in &layout.inputs {
                    for p in 0..*n {
                        index.insert((t.clone(), p), next);
                        next += 1;
                    }
                }
                index
            },
            decoder: Decoder::new(config.limits),
            config: config.clone(),
            producer,
            sources: HashMap::new(),
            in_txn: false,
            last_commit: Instant::now(),
            last_refresh: Instant::now(),
            last_idle_check: Instant::now(),
            since_marks: 0,
            forwarded: 0,
            markers: 0,
            stop_at_end,
            fatal: None,
        }));
        let mut cc = client_config(config);
        cc.set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", config.session_timeout.as_millis().to_string());
        fetch_for_throughput(&mut cc);
        let consumer: BaseConsumer<StageCtx> = with_user_settings(cc, config)
            .create_with_context(StageCtx { core: core.clone() })
            .map_err(WorkerError::kafka("creating the re-key stage's consumer"))?;
        let topics: Vec<&str> = config.kafka.input_topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(WorkerError::kafka("subscribing the re-key stage"))?;
        info!(group = %group, topic = %repartition_topic(config), partitions = layout.partitions, "re-key stage started");
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, failed) = (stop.clone(), failed.clone());
            std::thread::Builder::new()
                .name("attrib-rekey".into())
                .spawn(move || {
                    if let Err(e) = run(&consumer, &core, &stop) {
                        error!(error = %e, "re-key stage failed");
                        *failed.lock().expect("not poisoned") = Some(e);
                    }
                    consumer.unsubscribe();
                    let c = core.lock();
                    info!(forwarded = c.forwarded, markers = c.markers, "re-key stage stopped");
                })
                .map_err(|e| WorkerError::Setup(format!("starting the re-key stage: {e}")))?
        };
        Ok(Stage { stop, failed, thread: Some(thread) })
    }

    /// Why the stage stopped on its own, once (the worker then stops too).
    pub fn failure(&self) -> Option<WorkerError> {
        let failed = self.failed.lock().map(|mut f| f.take()).unwrap_or_else(|p| p.into_inner().take());
        failed.or_else(|| {
            // A thread that ended without being told to and without an error panicked:
            // nothing would be re-keyed any more, so the worker must not go on.
            let ended = self.thread.as_ref().is_some_and(JoinHandle::is_finished);
            (ended && !self.stop.load(Ordering::Relaxed))
                .then(|| WorkerError::Setup("the re-key stage's thread ended unexpectedly".into()))
        })
    }

    /// Commits what is open, leaves the group and waits for the thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Delivery failures (they fail the commit without transactions; with them the
/// transaction's commit fails by itself).
#[derive(Default)]
struct StageProducerCtx {
    failures: Mutex<Vec<String>>,
}

impl ClientContext for StageProducerCtx {}

impl ProducerContext for StageProducerCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failures.lock().expect("not poisoned").push(e.to_string());
        }
    }
}

/// What the stage knows of one source partition it owns.
#[derive(Debug)]
struct Source {
    index: u32,
    /// Next offset to read (`None`: nothing read yet, and the committed offset unknown).
    position: Option<i64>,
    /// Largest event time read since the stage got the partition.
    max_ts: Option<Millis>,
    idle: bool,
    last_seen: Instant,
    /// `--stop-at-end`: the end offset when the stage got the partition.
    end: Option<i64>,
    /// What the last marker said (`None`: none written since the stage got it).
    marked: Option<(Option<Millis>, bool)>,
    /// Messages read but not yet forwarded because the source runs ahead in event time
    /// ([`StageCore::ahead`]), in offset order, and their payload bytes.
    held: VecDeque<OwnedMessage>,
    held_bytes: usize,
    /// Paused in the consumer because it holds [`HOLD_BYTES`].
    paused: bool,
}

struct StageCore {
    config: Config,
    producer: BaseProducer<StageProducerCtx>,
    topic: String,
    partitions: i32,
    partitioner: Partitioner,
    /// (topic, partition) → source index ([`super::forward::sources`] order).
    index: HashMap<(String, i32), u32>,
    decoder: Decoder,
    /// The source partitions this stage owns.
    sources: HashMap<(String, i32), Source>,
    in_txn: bool,
    last_commit: Instant,
    last_refresh: Instant,
    last_idle_check: Instant,
    since_marks: u64,
    forwarded: u64,
    markers: u64,
    stop_at_end: bool,
    fatal: Option<WorkerError>,
}

impl StageCore {
    fn ensure_txn(&mut self) -> Result<(), WorkerError> {
        if !self.in_txn {
            if self.config.kafka.exactly_once {
                self.producer.begin_transaction().map_err(WorkerError::kafka("beginning a re-key transaction"))?;
            }
            self.in_txn = true;
        }
        Ok(())
    }

    /// Takes one input message: forwards it, or holds it while its source runs ahead in
    /// event time.
    fn take(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let key = (msg.topic().to_string(), msg.partition());
        let Some(source) = self.sources.get(&key) else { return Ok(()) }; // revoked meanwhile
        let seen = source.held.back().map(|m| m.offset() + 1).or(source.position);
        if seen.is_some_and(|next| msg.offset() < next) {
            return Ok(()); // a re-delivery after a seek
        }
        let payload = msg.payload().unwrap_or_default();
        // Behind held messages it waits its turn; `release` decodes it then.
        let decoded = if source.held.is_empty() { Some(self.decoder.decode(payload)) } else { None };
        let Some(decoded) = decoded.filter(|d| !self.ahead(&key, d)) else {
            let source = self.sources.get_mut(&key).expect("checked above");
            source.held_bytes += payload.len();
            source.held.push_back(msg.detach());
            source.last_seen = Instant::now();
            return Ok(());
        };
        self.forward(&key, msg.offset(), payload, decoded)
    }

    /// Whether an event of source `key` runs more than `kafka.read_ahead` past the
    /// slowest source this stage reads: the smallest largest-event-time among its sources
    /// that are not idle, where a source that has forwarded nothing yet counts as the
    /// slowest of all (as an input with no event holds the joiner's watermark back). The
    /// slowest source always moves, so the stage never stalls: a source with nothing to
    /// read goes idle (after `time.idle_timeout`, or at once at its end offset with
    /// `--stop-at-end`) and stops holding the others back.
    ///
    /// Without this, one source read far ahead of the others in event time (a large
    /// fetch returns a whole partition before the next one's first message, a partition
    /// restarted from an older offset) floods the joiner with touches its watermark is
    /// hours from reaching, and a shopper past the store's memory bound loses touches
    /// that replay credits (README, "Repartitioning").
    fn ahead(&self, key: &(String, i32), decoded: &Result<Event, DecodeError>) -> bool {
        let at = |s: &Source| s.max_ts.unwrap_or(Millis::MIN);
        let Some(own) = self.sources.get(key).map(at) else { return false };
        let floor = self.sources.values().filter(|s| !s.idle).map(at).min();
        let Some(floor) = floor.filter(|&f| f < own) else { return false };
        let Ok(event) = decoded else { return false };
        let ts = event.ts();
        ts <= now_ms().saturating_add(self.config.max_future_skew) && ts > floor.saturating_add(self.config.read_ahead)
    }

    /// Forwards held messages whose source is no longer ahead, in order, until none
    /// moves; then pauses the sources holding [`HOLD_BYTES`] and resumes the ones that
    /// drained below half of it.
    fn release(&mut self, consumer: &BaseConsumer<StageCtx>) -> Result<(), WorkerError> {
        loop {
            let keys: Vec<(String, i32)> =
                self.sources.iter().filter(|(_, s)| !s.held.is_empty()).map(|(k, _)| k.clone()).collect();
            let mut moved = false;
            for key in keys {
                loop {
                    let source = self.sources.get_mut(&key).expect("owned");
                    let Some(msg) = source.held.pop_front() else { break };
                    let payload = msg.payload().unwrap_or_default();
                    let decoded = self.decoder.decode(payload);
                    if self.ahead(&key, &decoded) {
                        self.sources.get_mut(&key).expect("owned").held.push_front(msg);
                        break;
                    }
                    self.sources.get_mut(&key).expect("owned").held_bytes -= payload.len();
                    self.forward(&key, msg.offset(), payload, decoded)?;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for ((t, p), s) in &mut self.sources {
            if !s.paused && s.held_bytes >= HOLD_BYTES {
                s.paused = true;
                pause.add_partition(t, *p);
            } else if s.paused && s.held_bytes < HOLD_BYTES / 2 {
                s.paused = false;
                resume.add_partition(t, *p);
            }
        }
        if pause.count() > 0 {
            consumer.pause(&pause).map_err(WorkerError::kafka("pausing source partitions ahead in event time"))?;
        }
        if resume.count() > 0 {
            consumer.resume(&resume).map_err(WorkerError::kafka("resuming source partitions"))?;
        }
        Ok(())
    }

    /// Forwards one input message of source `key`.
    fn forward(
        &mut self,
        key: &(String, i32),
        offset: i64,
        payload: &[u8],
        decoded: Result<Event, DecodeError>,
    ) -> Result<(), WorkerError> {
        let Some(&index) = self.index.get(key) else { return Ok(()) };
        self.ensure_txn()?;
        let (partition, user, ts) = match &decoded {
            Ok(event) => (
                self.partitioner.partition(event.user_id().as_bytes(), self.partitions),
                Some(event.user_id()),
                Some(event.ts()),
            ),
            Err(_) => (0, None, None),
        };
        let skew_limit = now_ms().saturating_add(self.config.max_future_skew);
        let source = self.sources.get_mut(key).expect("owned");
        let was_idle = source.idle;
        source.idle = false;
        source.last_seen = Instant::now();
        source.position = Some(offset + 1);
        if let Some(ts) = ts.filter(|&ts| ts <= skew_limit) {
            source.max_ts = Some(source.max_ts.map_or(ts, |m| m.max(ts)));
        }
        if was_idle {
            // Active again: every internal partition hears it before this event lands in
            // one of them.
            self.mark(key)?;
        }
        let fwd = Forwarded::Event { source: index, topic: key.0.clone(), partition: key.1, offset };
        let (name, value) = fwd.header();
        let headers = OwnedHeaders::new().insert(rdkafka::message::Header { key: name, value: Some(&value) });
        let mut record = BaseRecord::to(&self.topic).payload(payload).partition(partition).headers(headers);
        if let Some(user) = user {
            record = record.key(user);
        }
        send_waiting(&self.producer, record).map_err(WorkerError::kafka("forwarding to the internal topic"))?;
        self.forwarded += 1;
        self.since_marks += 1;
        if self.since_marks >= MARK_EVERY {
            self.mark_moved(false)?;
        }
        Ok(())
    }

    /// Writes source `key`'s marker to every internal partition.
    fn mark(&mut self, key: &(String, i32)) -> Result<(), WorkerError> {
        self.ensure_txn()?;
        let Some(source) = self.sources.get_mut(key) else { return Ok(()) };
        let fwd = Forwarded::Mark { source: source.index, max_ts: source.max_ts, idle: source.idle };
        source.marked = Some((source.max_ts, source.idle));
        let (name, value) = fwd.header();
        for p in 0..self.partitions {
            let headers = OwnedHeaders::new().insert(rdkafka::message::Header { key: name, value: Some(&value) });
            let record = BaseRecord::<(), [u8], ()>::to(&self.topic).payload(&[][..]).partition(p).headers(headers);
            send_waiting(&self.producer, record).map_err(WorkerError::kafka("writing a watermark marker"))?;
        }
        self.markers += 1;
        Ok(())
    }

    /// Markers for the sources whose event time or idleness moved since their last one
    /// (`all`: for every source owned).
    fn mark_moved(&mut self, all: bool) -> Result<(), WorkerError> {
        self.since_marks = 0;
        let moved: Vec<(String, i32)> = self
            .sources
            .iter()
            .filter(|(_, s)| all || s.marked != Some((s.max_ts, s.idle)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in moved {
            self.mark(&key)?;
        }
        Ok(())
    }

    /// Marks idle the sources that showed nothing for `idle_timeout` and have nothing
    /// left to read (or, `--stop-at-end`, reached their end), and tells the joiners.
    fn check_idle(&mut self, consumer: &BaseConsumer<StageCtx>) -> Result<(), WorkerError> {
        if self.last_idle_check.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        self.last_idle_check = Instant::now();
        let idle_timeout = self.config.idle_timeout;
        let keys: Vec<(String, i32)> = self.sources.keys().cloned().collect();
        let mut due = Vec::new();
        for key in keys {
            let source = &self.sources[&key];
            if source.idle || !source.held.is_empty() {
                continue;
            }
            let quiet = source.last_seen.elapsed() >= idle_timeout;
            if !quiet && !self.stop_at_end {
                continue;
            }
            let position = match source.position {
                Some(p) => p,
                None => {
                    // Nothing read yet: where the group's committed offset says it starts.
                    let Some(p) = committed(consumer, &key)? else { continue };
                    self.sources.get_mut(&key).expect("owned").position = Some(p);
                    p
                }
            };
            let source = &self.sources[&key];
            let at_end = self.stop_at_end && source.end.is_some_and(|end| position >= end);
            if at_end {
                due.push(key);
                continue;
            }
            if !quiet {
                continue;
            }
            let (_, high) = match cached_watermarks(consumer, &key.0, key.1) {
                Some(known) => known,
                None => consumer
                    .fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
                    .map_err(WorkerError::kafka("reading watermarks for the idle check"))?,
            };
            if position >= high {
                due.push(key);
            } else {
                self.sources.get_mut(&key).expect("owned").last_seen = Instant::now();
            }
        }
        for key in due {
            self.sources.get_mut(&key).expect("owned").idle = true;
            self.mark(&key)?;
        }
        Ok(())
    }

    /// Commits the open transaction: what was forwarded, the markers of the sources
    /// that moved, and the input offsets.
    fn commit(&mut self, consumer: &BaseConsumer<StageCtx>) -> Result<(), WorkerError> {
        if self.last_refresh.elapsed() >= refresh_interval(&self.config) && !self.sources.is_empty() {
            self.last_refresh = Instant::now();
            self.mark_moved(true)?;
        } else if self.in_txn {
            self.mark_moved(false)?;
        }
        if !self.in_txn {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), s) in &self.sources {
            if let Some(pos) = s.position {
                tpl.add_partition_offset(t, *p, Offset::Offset(pos)).map_err(WorkerError::kafka("offsets"))?;
            }
        }
        let timeout = self.config.transaction_timeout;
        if self.config.kafka.exactly_once {
            let cgm =
                consumer.group_metadata().ok_or_else(|| WorkerError::Setup("no consumer group metadata".into()))?;
            self.producer
                .send_offsets_to_transaction(&tpl, &cgm, timeout)
                .map_err(WorkerError::kafka("sending the re-key stage's offsets to the transaction"))?;
            self.producer.commit_transaction(timeout).map_err(WorkerError::kafka("committing a re-key transaction"))?;
        } else {
            self.producer.flush(timeout).map_err(WorkerError::kafka("flushing the re-key stage"))?;
            let failures = std::mem::take(&mut *self.producer.context().failures.lock().expect("not poisoned"));
            if let Some(first) = failures.first() {
                return Err(WorkerError::Setup(format!(
                    "{} forwarded message(s) not delivered: {first}",
                    failures.len()
                )));
            }
            if tpl.count() > 0 {
                consumer.commit(&tpl, CommitMode::Sync).map_err(WorkerError::kafka("committing re-key offsets"))?;
            }
        }
        self.in_txn = false;
        // From the end of the commit: a commit that takes longer than the interval must
        // still leave a whole interval of forwarding before the next one.
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Aborts the open transaction and forgets what it covered: the sources start over
    /// from their committed offsets (the caller seeks there).
    fn abort(&mut self) {
        if self.in_txn && self.config.kafka.exactly_once {
            if let Err(e) = self.producer.abort_transaction(self.config.transaction_timeout) {
                warn!(error = %e, "aborting a re-key transaction failed");
            }
        }
        self.in_txn = false;
        for s in self.sources.values_mut() {
            *s = fresh(s.index, s.end);
        }
    }
}

fn fresh(index: u32, end: Option<i64>) -> Source {
    Source {
        index,
        position: None,
        max_ts: None,
        idle: false,
        last_seen: Instant::now(),
        end,
        marked: None,
        held: VecDeque::new(),
        held_bytes: 0,
        paused: false,
    }
}

/// The group's committed offset of one partition (`None`: nothing committed yet and the
/// partition's start unknown).
fn committed(consumer: &BaseConsumer<StageCtx>, (t, p): &(String, i32)) -> Result<Option<i64>, WorkerError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(t, *p);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(WorkerError::kafka("reading the re-key stage's committed offsets"))?;
    let offset = got.find_partition(t, *p).map(|e| e.offset());
    Ok(match offset {
        Some(Offset::Offset(o)) => Some(o),
        // Nothing committed: it starts at the beginning (auto.offset.reset = earliest).
        _ => {
            let (low, _) = consumer
                .fetch_watermarks(t, *p, Duration::from_secs(5))
                .map_err(WorkerError::kafka("reading watermarks"))?;
            Some(low)
        }
    })
}

/// Rebalances: commit before giving partitions up; fresh sources for new ones.
struct StageCtx {
    core: Arc<parking_lot::Mutex<StageCore>>,
}

impl ClientContext for StageCtx {}

impl ConsumerContext for StageCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = self.core.lock();
            info!(partitions = tpl.count(), "re-key stage: partitions revoked, committing");
            if let Err(e) = core.commit(consumer) {
                warn!(error = %e, "re-key commit before revocation failed; the next owner redoes it");
                if e.is_fatal() {
                    core.fatal = Some(e);
                } else {
                    core.abort();
                }
            }
            // librdkafka keeps a partition paused across revocation and a later
            // assignment: resume what this stage paused before giving it up.
            let mut resume = TopicPartitionList::new();
            for e in tpl.elements() {
                let removed = core.sources.remove(&(e.topic().to_string(), e.partition()));
                if removed.is_some_and(|s| s.paused) {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
            if resume.count() > 0 {
                if let Err(e) = consumer.resume(&resume) {
                    warn!(error = %e, "re-key stage: resuming revoked partitions failed");
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut core = self.core.lock();
            let mut count = 0;
            for e in tpl.elements() {
                let key = (e.topic().to_string(), e.partition());
                if let Some(&index) = core.index.get(&key) {
                    core.sources.entry(key).or_insert_with(|| fresh(index, None));
                    count += 1;
                }
            }
            info!(partitions = count, "re-key stage: partitions assigned");
        }
    }
}

/// Most messages forwarded between two looks at the clock, the idle check and the commit.
const MAX_BATCH: usize = 10_000;

fn run(
    consumer: &BaseConsumer<StageCtx>,
    core: &Arc<parking_lot::Mutex<StageCore>>,
    stop: &AtomicBool,
) -> Result<(), WorkerError> {
    while !stop.load(Ordering::Relaxed) {
        // Never hold the lock in poll(): rebalance callbacks take it.
        let mut polled = consumer.poll(Duration::from_millis(50));
        let mut c = core.lock();
        if let Some(e) = c.fatal.take() {
            return Err(e);
        }
        let step = (|| -> Result<(), WorkerError> {
            if c.stop_at_end {
                // The end offsets of newly assigned sources, once.
                let missing: Vec<(String, i32)> =
                    c.sources.iter().filter(|(_, s)| s.end.is_none()).map(|(k, _)| k.clone()).collect();
                for key in missing {
                    let (_, high) = consumer
                        .fetch_watermarks(&key.0, key.1, Duration::from_secs(10))
                        .map_err(WorkerError::kafka("reading end offsets"))?;
                    if let Some(s) = c.sources.get_mut(&key) {
                        s.end = Some(high);
                    }
                }
            }
            let interval = c.config.commit_interval;
            let mut taken = 0;
            while let Some(result) = polled {
                match result {
                    Ok(msg) => c.take(&msg)?,
                    Err(e) => warn!(error = %e, "re-key stage: consumer error"),
                }
                taken += 1;
                if taken >= MAX_BATCH || c.last_commit.elapsed() >= interval {
                    break;
                }
                polled = parking_lot::MutexGuard::unlocked(&mut c, || consumer.poll(Duration::ZERO));
            }
            c.release(consumer)?;
            c.check_idle(consumer)?;
            if c.last_commit.elapsed() >= interval {
                c.commit(consumer)?;
            }
            Ok(())
        })();
        if let Err(e) = step {
            if e.is_fatal() {
                return Err(e);
            }
            warn!(error = %e, "re-key transaction failed: aborting and going back to the committed offsets");
            c.abort();
            rewind(consumer)?;
        }
    }
    let mut c = core.lock();
    if let Err(e) = c.commit(consumer) {
        warn!(error = %e, "re-key stage: final commit failed; the next owner redoes the uncommitted part");
        c.abort();
    }
    Ok(())
}

/// Moves the consumer back to the committed offsets of its assignment, every partition
/// resumed (the sources start over, holding nothing).
fn rewind(consumer: &BaseConsumer<StageCtx>) -> Result<(), WorkerError> {
    let assignment = consumer.assignment().map_err(WorkerError::kafka("reading the assignment"))?;
    consumer.resume(&assignment).map_err(WorkerError::kafka("resuming partitions"))?;
    let committed = consumer
        .committed_offsets(assignment, Duration::from_secs(30))
        .map_err(WorkerError::kafka("reading committed offsets"))?;
    for e in committed.elements() {
        let to = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        consumer.seek(e.topic(), e.partition(), to, Duration::from_secs(10)).map_err(WorkerError::kafka("seeking"))?;
    }
    Ok(())
}

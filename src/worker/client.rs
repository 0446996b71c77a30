//! Client setup: librdkafka settings, the contexts of the producer and the consumers
//! (delivery reports, statistics), the topics the worker creates, and the host-local
//! transactional id slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, info};

use super::state;
use super::{Core, WorkerError, STATE_MESSAGE_BYTES};
use crate::config::Config;
use crate::metrics::Metrics;

/// Base librdkafka settings shared by every client, then the user's `[kafka.client]`.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    c
}

/// Consumer fetch settings chosen for throughput (the worker's, the restore and the re-key
/// stage's consumers; `[kafka.client]` overrides them). librdkafka's defaults fetch at most
/// 1 MiB per partition per request and refill the local queue below 100,000 messages;
/// with 16 input partitions of ~150-byte events an exactly-once catch-up of 1M events
/// then spent 3.2 s of 7.4 s waiting in `poll` (124k–135k events/s; 151k–217k with these
/// settings passed through `[kafka.client]`, same binary, this 2-core machine; see
/// BENCHMARKS.md for `scripts/bench-kafka.sh` runs). `fetch.min.bytes` stays 1: a
/// caught-up worker gets each message as soon as it is written.
pub(super) fn fetch_for_throughput(c: &mut ClientConfig) {
    c.set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("queued.min.messages", "200000")
        // The whole prefetch queue of the consumer, over every partition.
        .set("queued.max.messages.kbytes", "131072");
}

pub(crate) fn with_user_settings(mut c: ClientConfig, config: &Config) -> ClientConfig {
    for (k, v) in &config.kafka.client {
        c.set(k, v);
    }
    c
}

/// Delivery reports: any failure; without transactions also the processing latency (a
/// record is visible once delivered).
pub(super) struct ProducerCtx {
    pub(super) failures: Mutex<Vec<String>>,
    /// Time origin of the receive stamps carried by records (see [`RECORD_TAG`]).
    pub(super) epoch: Instant,
    pub(super) latency: Mutex<Histogram<u64>>,
    pub(super) metrics: Arc<Metrics>,
    /// Without transactions: messages sent and delivered (or failed) per counting slot
    /// (see [`COUNTED`]): two alternating commit epochs of output, and the state items.
    pub(super) sent: [AtomicU64; 3],
    pub(super) delivered: [AtomicU64; 3],
}

/// Delivery opaque bit marking a record that carries the receive stamp (nanoseconds
/// since the epoch) of the message that made it, in the low bits.
pub(super) const RECORD_TAG: usize = 1 << 63;

/// Delivery opaque bit marking a message whose delivery is counted (no transactions
/// only), in the slot held by the two bits under it ([`COUNT_SLOT_SHIFT`]). An
/// at-least-once commit writes its log entries once every record of its epoch is
/// delivered, while the next epoch's records are already being sent.
pub(super) const COUNTED: usize = 1 << 62;
pub(super) const COUNT_SLOT_SHIFT: u32 = 60;
/// The slot of state items (log entries, checkpoints).
pub(super) const STATE_SLOT: usize = 2;

impl ProducerCtx {
    /// The opaque bits that count a message in `slot`.
    pub(super) fn count_tag(slot: usize) -> usize {
        COUNTED | (slot << COUNT_SLOT_SHIFT)
    }

    /// A message tagged with `opaque` was handed to the producer (delivery reports are
    /// served on the thread that sends, in `poll` or `flush`, so never before this).
    pub(super) fn sent(&self, opaque: usize) {
        if opaque & COUNTED != 0 {
            self.sent[(opaque >> COUNT_SLOT_SHIFT) & 3].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every message counted in `slot` is delivered (or failed).
    pub(super) fn all_delivered(&self, slot: usize) -> bool {
        self.delivered[slot].load(Ordering::Acquire) >= self.sent[slot].load(Ordering::Relaxed)
    }
}

impl ClientContext for ProducerCtx {}

impl ProducerContext for ProducerCtx {
    /// 0: nothing to note; [`RECORD_TAG`] set: a record with its receive stamp (no
    /// transactions only).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        if let Err((e, _)) = result {
            // Noted before the count, so whoever sees the count sees the failure.
            self.failures.lock().expect("not poisoned").push(e.to_string());
        }
        if tag & COUNTED != 0 {
            self.delivered[(tag >> COUNT_SLOT_SHIFT) & 3].fetch_add(1, Ordering::Release);
        }
        match result {
            Ok(_) if tag & RECORD_TAG != 0 => {
                let stamp = tag & ((1 << COUNT_SLOT_SHIFT) - 1);
                let took = (self.epoch.elapsed().as_nanos() as u64).saturating_sub(stamp as u64);
                self.latency.lock().expect("not poisoned").saturating_record(took / 1000);
                self.metrics.observe_latency(Duration::from_nanos(took));
            }
            _ => {}
        }
    }
}

/// The restore consumer's context: reaching the end of a partition is how a restore
/// knows it has read everything (`enable.partition.eof`), not an error to log.
pub(super) struct RestoreCtx;

impl ClientContext for RestoreCtx {
    fn error(&self, error: KafkaError, reason: &str) {
        if !state::is_eof(&error) {
            error!(error = %error, reason, "librdkafka error (restore consumer)");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreCtx {}

/// The consumer's context: hands rebalances to the core.
pub(super) struct ConsumerCtx {
    pub(super) core: Arc<parking_lot::Mutex<Core>>,
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
                let assigned = core.tasks.contains_key(p) || core.unrestored.contains(p) || core.away.contains(p);
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
pub(super) fn consumer_lag(part: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
    let position = [part.app_offset, part.committed_offset].into_iter().find(|&o| o >= 0)?;
    // An end older than the position (statistics gathered at different moments): caught up.
    (end >= 0).then(|| (end - position).max(0))
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

/// How the worker's topics are laid out, as [`prepare_topics`] found (or made) them.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// Partition count of what the joining stage reads (the inputs, or the internal
    /// topic when repartitioning): one partition group per partition.
    pub partitions: i32,
    /// Every input topic with its partition count, in `kafka.input_topics` order.
    pub inputs: Vec<(String, i32)>,
}

/// The internal topic the re-key stage writes and the joining stage reads.
pub(crate) fn repartition_topic(config: &Config) -> String {
    format!("{}-repartition", config.kafka.group_id)
}

/// The topics the joining stage reads: the inputs, or the internal topic.
pub(crate) fn joined_topics(config: &Config) -> Vec<String> {
    if config.kafka.repartition {
        vec![repartition_topic(config)]
    } else {
        config.kafka.input_topics.clone()
    }
}

/// Checks the inputs are co-partitioned (or creates the internal topic to re-key them
/// through, `kafka.repartition`) and creates the state topic if missing.
pub(super) fn prepare_topics(config: &Config) -> Result<Layout, WorkerError> {
    let probe: BaseConsumer =
        with_user_settings(client_config(config), config).create().map_err(WorkerError::kafka("creating a client"))?;
    let timeout = Duration::from_secs(30);
    let count = |t: &str| -> Result<i32, WorkerError> {
        let md = probe.fetch_metadata(Some(t), timeout).map_err(WorkerError::kafka("reading topic metadata"))?;
        Ok(md.topics().first().filter(|m| m.error().is_none()).map_or(0, |m| m.partitions().len() as i32))
    };
    let mut inputs = Vec::new();
    for t in &config.kafka.input_topics {
        let n = count(t)?;
        if n == 0 {
            return Err(WorkerError::Setup(format!("input topic {t:?} does not exist (kafka.input_topics)")));
        }
        inputs.push((t.clone(), n));
    }
    let largest = inputs.iter().map(|(_, n)| *n).max().unwrap_or(1);
    let n = if config.kafka.repartition {
        let want = if config.kafka.partitions > 0 { config.kafka.partitions as i32 } else { largest };
        let topic = repartition_topic(config);
        match count(&topic)? {
            0 => {
                // Events are at most limits.max_message_bytes; the producer allows more.
                let max_bytes = STATE_MESSAGE_BYTES.to_string();
                create_topic(config, &topic, want, &[("max.message.bytes", &max_bytes)])?;
                info!(topic = %topic, partitions = want, "created the internal repartition topic");
            }
            have if have != want => {
                return Err(WorkerError::Setup(format!(
                    "internal topic {topic:?} has {have} partitions, kafka.partitions asks for {want} (kafka.partitions; \
                     the internal topic and the state topic cannot change their partition count under a running \
                     kafka.group_id: use a new one)"
                )));
            }
            _ => {}
        }
        want
    } else {
        if inputs.iter().any(|(_, c)| *c != inputs[0].1) {
            let listed: Vec<String> = inputs.iter().map(|(t, c)| format!("{t} ({c} partitions)")).collect();
            return Err(WorkerError::Setup(format!(
                "input topics {} have different partition counts: the worker joins partition p of every input, so \
                 they must be co-partitioned by user_id with equal counts (SPEC 8.6). Set kafka.repartition = true to \
                 re-key them by user_id through an internal topic (kafka.partitions partitions, default the largest \
                 input's), or re-create them with equal counts, keyed by user_id (kafka.input_topics)",
                listed.join(", ")
            )));
        }
        inputs[0].1
    };
    let state = &config.kafka.state_topic;
    let existing = count(state)?;
    if existing == 0 {
        // Compacted: the latest record per key (shopper, group record, log entry) is the
        // state; tombstones remove gone shoppers and covered log entries.
        let max_bytes = STATE_MESSAGE_BYTES.to_string();
        create_topic(
            config,
            state,
            n,
            &[
                ("cleanup.policy", "compact"),
                ("max.message.bytes", &max_bytes),
                ("min.cleanable.dirty.ratio", "0.1"),
                ("segment.ms", "3600000"),
            ],
        )?;
        info!(topic = %state, partitions = n, "created the state topic");
    } else if existing != n {
        let what = if config.kafka.repartition { "the internal repartition topic has" } else { "the inputs have" };
        return Err(WorkerError::Setup(format!(
            "state topic {state:?} has {existing} partitions, {what} {n} (kafka.state_topic)"
        )));
    }
    Ok(Layout { partitions: n, inputs })
}

/// Creates `name` with `partitions` partitions and `settings` (an existing one is fine).
fn create_topic(config: &Config, name: &str, partitions: i32, settings: &[(&str, &str)]) -> Result<(), WorkerError> {
    let admin: AdminClient<_> = with_user_settings(client_config(config), config)
        .create()
        .map_err(WorkerError::kafka("creating an admin client"))?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Setup(format!("runtime: {e}")))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        rt.block_on(admin.create_topics([&topic], &options)).map_err(WorkerError::kafka("creating a topic"))?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(WorkerError::Setup(format!("creating topic {name}: {code}")));
            }
        }
    }
    Ok(())
}

/// Claims the lowest free slot `n` for the default transactional id `<base>-<n>` with a
/// lock file per slot in the temp directory, so workers started on one host with the same
/// config get distinct ids and never fence each other. A restarted worker gets its old
/// slot back (a dead process holds no lock), so it fences its own previous incarnation;
/// a stopped (zombie) one keeps its slot, and the consumer group's generation fences its
/// commits instead (KIP-447: offsets are sent with the group metadata).
pub(super) fn claim_transactional_id(base: &str) -> Result<(String, std::fs::File), WorkerError> {
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

/// The transactional ids of the worker's producers: `kafka.transactional_id` and
/// `<kafka.transactional_id>.b`, used in turn, one transaction each; `None` (one producer)
/// without transactions.
///
/// Why two: once a transaction is committed the broker still writes its commit markers,
/// and until they are written the next transaction of the same id cannot add partitions
/// (`CONCURRENT_TRANSACTIONS`, which librdkafka retries after 20 ms). That wait was in
/// most commits and set the exactly-once latency; the other id's last transaction
/// finished a whole commit earlier. Only one transaction is ever open, so commits stay in
/// order and an abort has one transaction to abort. A restarted worker initialises both
/// ids, fencing both of its predecessor's producers (the suffix ends in a letter, so it
/// never equals another worker's automatic `<group>-<host>-<slot>` id).
pub(super) fn producer_ids(config: &Config) -> Vec<Option<String>> {
    if config.kafka.exactly_once {
        let id = &config.kafka.transactional_id;
        vec![Some(id.clone()), Some(format!("{id}.b"))]
    } else {
        vec![None]
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::statistics::Partition;

    use super::{consumer_lag, producer_ids};
    use crate::config::Config;

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

    #[test]
    fn exactly_once_alternates_two_transactional_ids_and_at_least_once_has_none() {
        let mut c = Config::default();
        c.kafka.exactly_once = true;
        c.kafka.transactional_id = "g-host-0".into();
        assert_eq!(producer_ids(&c), [Some("g-host-0".to_string()), Some("g-host-0.b".to_string())]);
        c.kafka.exactly_once = false;
        assert_eq!(producer_ids(&c), [None]);
    }
}

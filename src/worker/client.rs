//! Client setup: librdkafka settings, the contexts of the producer and the consumers
//! (delivery reports, statistics), the topics the worker creates, and the host-local
//! transactional id slot.

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
}

/// Delivery opaque bit marking a record that carries the receive stamp (nanoseconds
/// since the epoch) of the message that made it, in the other bits.
pub(super) const RECORD_TAG: usize = 1 << 63;

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

/// Checks the inputs are co-partitioned and creates the state topic if missing.
pub(super) fn prepare_topics(config: &Config) -> Result<i32, WorkerError> {
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

//! Live output: records, shadow records and dead letters of the groups go straight to
//! the producer (inside the open transaction with exactly-once).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tracing::warn;

use super::client::{send_waiting, ProducerCtx, RECORD_TAG};
use crate::codec::encode_record;
use crate::config::Config;
use crate::model::{DeadLetter, RecordView};
use crate::pipeline::Sink;

/// Records and dead letters of live processing go straight to the producer.
pub(super) struct LiveOut<'a> {
    producer: &'a BaseProducer<ProducerCtx>,
    output_topic: &'a str,
    dlq_topic: &'a str,
    shadow_topic: &'a str,
    buf: Vec<u8>,
    /// Records written so far.
    pub(super) records: u64,
    /// Receive stamp of the message being handled (nanoseconds since the core's epoch).
    received: u64,
    stamps: &'a mut Vec<u64>,
    hold: &'a mut Histogram<u64>,
    dead_letters: &'a mut SampledLog,
    /// No transactions: latency is timed at delivery, not at the commit.
    at_delivery: bool,
}

impl<'a> LiveOut<'a> {
    /// Output of what the message received at `received` makes, to the topics of `config`.
    pub(super) fn new(
        producer: &'a BaseProducer<ProducerCtx>,
        config: &'a Config,
        received: u64,
        stamps: &'a mut Vec<u64>,
        hold: &'a mut Histogram<u64>,
        dead_letters: &'a mut SampledLog,
    ) -> LiveOut<'a> {
        LiveOut {
            producer,
            output_topic: &config.kafka.output_topic,
            dlq_topic: &config.kafka.dlq_topic,
            shadow_topic: &config.kafka.shadow_topic,
            buf: Vec::new(), // most messages (touches) write nothing
            records: 0,
            received,
            stamps,
            hold,
            dead_letters,
            at_delivery: !config.kafka.exactly_once,
        }
    }
}

/// Logs dead letters at a sampled rate: the first one, then at most one line per
/// [`SampledLog::EVERY`] with the number left unlogged since the previous line.
pub(super) struct SampledLog {
    pub(super) last: Option<Instant>,
    pub(super) suppressed: u64,
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

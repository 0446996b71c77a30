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

/// Output made while the previous transaction is being committed (see
/// [`super::txn`]): it belongs to the next transaction, so it waits here, in one byte
/// arena, until that commit is done and the next transaction begins.
#[derive(Default)]
pub(super) struct Deferred {
    bytes: Vec<u8>,
    /// Topic (an index into [`topics`]), end of the key and end of the payload in
    /// `bytes`, delivery opaque.
    items: Vec<(u8, usize, usize, usize)>,
}

/// The output topics by kind: [`Deferred::OUTPUT`], [`Deferred::DLQ`], [`Deferred::SHADOW`].
fn topics(config: &Config) -> [&str; 3] {
    [&config.kafka.output_topic, &config.kafka.dlq_topic, &config.kafka.shadow_topic]
}

/// Hands `record` to the producer, counting it if its opaque says so; a send that fails
/// is noted with the delivery failures (the commit then fails and aborts).
fn send_noted(producer: &BaseProducer<ProducerCtx>, record: BaseRecord<'_, [u8], [u8], usize>) {
    let opaque = record.delivery_opaque;
    match send_waiting(producer, record) {
        Ok(()) => producer.context().sent(opaque),
        Err(e) => producer.context().failures.lock().expect("not poisoned").push(e.to_string()),
    }
}

impl Deferred {
    const OUTPUT: u8 = 0;
    const DLQ: u8 = 1;
    const SHADOW: u8 = 2;

    fn push(&mut self, topic: u8, key: &[u8], payload: &[u8], opaque: usize) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.items.push((topic, key_end, self.bytes.len(), opaque));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// Sends everything held, in order, and empties the buffer.
    pub(super) fn send_all(&mut self, producer: &BaseProducer<ProducerCtx>, config: &Config) {
        let topics = topics(config);
        let mut start = 0;
        for &(topic, key_end, end, opaque) in &self.items {
            let record = BaseRecord::with_opaque_to(topics[usize::from(topic)], opaque)
                .key(&self.bytes[start..key_end])
                .payload(&self.bytes[key_end..end]);
            send_noted(producer, record);
            start = end;
        }
        self.clear();
    }
}

/// Where live output goes.
pub(super) enum Route<'a> {
    /// To the producer, in the open transaction.
    Send,
    /// To the producer, counted in this slot (no transactions, see
    /// [`super::client::COUNTED`]).
    Count(usize),
    /// Held for the next transaction: the previous one is being committed.
    Defer(&'a mut Deferred),
}

impl<'a> Route<'a> {
    /// The route while a commit is (`closing`) or is not in progress; `epoch`: the
    /// counting slot of output without transactions.
    pub(super) fn new(exactly_once: bool, closing: bool, deferred: &'a mut Deferred, epoch: usize) -> Route<'a> {
        match (exactly_once, closing) {
            (true, true) => Route::Defer(deferred),
            (true, false) => Route::Send,
            (false, _) => Route::Count(epoch),
        }
    }
}

/// Records and dead letters of live processing go straight to the producer, or into
/// [`Deferred`] while the previous transaction is being committed.
pub(super) struct LiveOut<'a> {
    producer: &'a BaseProducer<ProducerCtx>,
    route: Route<'a>,
    topics: [&'a str; 3],
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
        route: Route<'a>,
        config: &'a Config,
        received: u64,
        stamps: &'a mut Vec<u64>,
        hold: &'a mut Histogram<u64>,
        dead_letters: &'a mut SampledLog,
    ) -> LiveOut<'a> {
        LiveOut {
            producer,
            route,
            topics: topics(config),
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
    /// Sends `payload` to the topic of `kind`.
    fn send(&mut self, kind: u8, key: &[u8], payload: &[u8], mut opaque: usize) {
        match &mut self.route {
            Route::Defer(deferred) => {
                deferred.push(kind, key, payload, opaque);
                return;
            }
            Route::Count(slot) => opaque |= ProducerCtx::count_tag(*slot),
            Route::Send => {}
        }
        let record = BaseRecord::with_opaque_to(self.topics[usize::from(kind)], opaque).key(key).payload(payload);
        send_noted(self.producer, record);
    }

    /// Sends an encoded record (payload without its newline) of a message received at
    /// `received`.
    fn send_record(&mut self, kind: u8, key: &[u8], payload: &[u8], received: u64) {
        // Exactly once: visible at the commit (timed there); otherwise at delivery.
        let opaque = if self.at_delivery { RECORD_TAG | received as usize } else { 0 };
        if !self.at_delivery {
            self.stamps.push(received);
        }
        self.send(kind, key, payload, opaque);
        self.records += 1;
    }

    /// Sends what a group made on a worker thread, in the order it made it.
    pub(super) fn send_buffered(&mut self, out: &Buffered) {
        for &us in &out.holds {
            self.hold.saturating_record(us);
        }
        for d in &out.dead_letters {
            self.dead_letters.dead_letter(d);
        }
        let mut start = 0;
        for &(kind, key_end, end, received) in &out.items {
            let (key, payload) = (&out.bytes[start..key_end], &out.bytes[key_end..end]);
            if kind == Deferred::DLQ {
                self.send(kind, key, payload, 0);
            } else {
                self.send_record(kind, key, payload, received);
            }
            start = end;
        }
    }
}

impl Sink for LiveOut<'_> {
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        // `tag`: when the purchase or refund was received (0: restored, unknown).
        if tag > 0 && tag <= self.received {
            self.hold.saturating_record((self.received - tag) / 1000);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_record(record, &mut buf);
        buf.pop(); // no newline in a Kafka value

        // Shadow records (SPEC 8.3) go to their own topic, in the same transaction.
        let kind = if record.shadow { Deferred::SHADOW } else { Deferred::OUTPUT };
        self.send_record(kind, record.creator_id.as_bytes(), &buf, self.received);
        self.buf = buf;
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        self.dead_letters.dead_letter(&dead_letter);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        serde_json::to_writer(&mut buf, &dead_letter).expect("dead letters serialise");
        self.send(Deferred::DLQ, b"", &buf, 0);
        self.buf = buf;
    }
}

/// What a group makes on a worker thread ([`super::batch`]): encoded there, sent by the
/// poll thread with [`LiveOut::send_buffered`], in order.
#[derive(Default)]
pub(super) struct Buffered {
    bytes: Vec<u8>,
    /// Topic kind, end of the key and end of the payload in `bytes`, and the receive
    /// stamp of the message that made it.
    items: Vec<(u8, usize, usize, u64)>,
    /// Watermark holds (µs) of the records, and the dead letters to log.
    holds: Vec<u64>,
    dead_letters: Vec<DeadLetter>,
    /// Receive stamp of the message being handled.
    pub(super) received: u64,
}

impl Buffered {
    fn push(&mut self, kind: u8, key: &[u8], payload: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        payload(&mut self.bytes);
        self.items.push((kind, key_end, self.bytes.len(), self.received));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.holds.is_empty() && self.dead_letters.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.holds.clear();
        self.dead_letters.clear();
    }
}

impl Sink for Buffered {
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        if tag > 0 && tag <= self.received {
            self.holds.push((self.received - tag) / 1000);
        }
        let kind = if record.shadow { Deferred::SHADOW } else { Deferred::OUTPUT };
        self.push(kind, record.creator_id.as_bytes(), |bytes| {
            encode_record(record, bytes);
            bytes.pop(); // no newline in a Kafka value
        });
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        self.push(Deferred::DLQ, b"", |bytes| {
            serde_json::to_writer(&mut *bytes, &dead_letter).expect("dead letters serialise");
        });
        self.dead_letters.push(dead_letter);
    }
}

//! `attrib produce`: loads JSONL files into the input topics, for tests, benchmarks and
//! anyone who wants to replay fixtures through Kafka.
//!
//! Each valid event goes to the topic of its type (`view` → the 1st input topic, `click`
//! → the 2nd, `purchase` → the 3rd, `refund` → the 4th, as in `kafka.input_topics`) with
//! key `user_id`, partitioned with librdkafka's `murmur2_random`, the Java client's
//! partitioner, so other producers of the same topics agree on the partition of each
//! shopper. Lines that do not decode go, unchanged and without a key, to the first input
//! topic, where the worker dead-letters them.
//!
//! With a rate, lines are paced to arrive steadily (see [`Pacer`]), for latency
//! benchmarks; without one they go as fast as the producer takes them.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{client_config, send_waiting, with_user_settings, WorkerError};
use crate::codec::Decoder;
use crate::config::Config;
use crate::model::{EventType, Millis};

/// How `produce` sends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOptions {
    /// After the lines, one view per input partition a minute of event time past the
    /// last event, so the worker's watermark passes everything sent.
    pub flush_marker: bool,
    /// Lines per second, steady; 0: as fast as possible. Flush markers are not paced.
    pub rate: u64,
    /// The message key of purchases and refunds (touches are always keyed by `user_id`).
    pub key: KeyBy,
}

/// How `produce` keys purchases and refunds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KeyBy {
    /// By shopper: every input co-partitioned, as the worker joins them.
    #[default]
    UserId,
    /// By order, as order services often do (SPEC 8.6): the worker dead-letters them as
    /// `misrouted` unless it repartitions.
    OrderId,
}

/// What `produce` sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Messages per input topic, in `kafka.input_topics` order.
    pub per_topic: Vec<u64>,
    /// Flush markers written (one per input partition).
    pub markers: u64,
    /// From the first send until every message was delivered (the final flush).
    pub elapsed: Duration,
}

impl Produced {
    /// Lines sent (flush markers not included).
    pub fn events(&self) -> u64 {
        self.per_topic.iter().sum()
    }
}

/// Paces sends to a steady rate: a token bucket refilled from a monotonic clock.
///
/// Line `n` (counted from the bucket's base) is due at `base + n / rate`, computed from
/// scratch for every line, so neither rounding nor sleeping late accumulates: the rate
/// holds over minutes. A sender that falls behind (a stall, a full queue) may catch up
/// by at most [`Pacer::BURST`] worth of lines at once; any lag beyond that is forgiven
/// (the base moves), so a stall does not turn into a long burst that would distort a
/// latency measurement.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    base: Instant,
    sent_since_base: u64,
}

impl Pacer {
    /// The bucket's depth, in time: how much lag may be caught up at full speed.
    pub const BURST: Duration = Duration::from_millis(100);

    /// A pacer for `rate` lines per second starting now; `None` for rate 0 (unpaced).
    pub fn new(rate: u64) -> Option<Pacer> {
        (rate > 0).then(|| Pacer { rate, base: Instant::now(), sent_since_base: 0 })
    }

    /// When the next line is due.
    fn due(&self) -> Instant {
        let nanos = u128::from(self.sent_since_base) * 1_000_000_000 / u128::from(self.rate);
        self.base + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long to wait before the next line may go, given the time `now`; counts the
    /// line as sent. Zero when it is due already.
    pub fn delay(&mut self, now: Instant) -> Duration {
        let due = self.due();
        let wait = due.saturating_duration_since(now);
        if wait.is_zero() && now.duration_since(due) > Self::BURST {
            // Too far behind: forgive the lag beyond one bucket.
            self.base = now.checked_sub(Self::BURST).unwrap_or(now);
            self.sent_since_base = 0;
        }
        self.sent_since_base += 1;
        wait
    }
}

/// Sends every line of `files`, paced to `opts.rate`; with `opts.flush_marker`, then one
/// view per partition of every input topic, 1 minute of event time after the largest
/// event time sent, so the worker's watermark passes every event sent before (a stream
/// never ends by itself).
pub fn produce(config: &Config, files: &[PathBuf], opts: &ProduceOptions) -> Result<Produced, WorkerError> {
    let inputs = &config.kafka.input_topics;
    if inputs.len() != 4 {
        return Err(WorkerError::Setup("produce needs four input topics: views, clicks, purchases, refunds".into()));
    }
    super::preflight::check_produce(config)?;
    let mut pc = client_config(config);
    pc.set("partitioner", "murmur2_random").set("enable.idempotence", "true").set("linger.ms", "20");
    let producer: BaseProducer =
        with_user_settings(pc, config).create().map_err(WorkerError::kafka("creating the producer"))?;
    let mut decoder = Decoder::new(config.limits);
    let mut result = Produced { per_topic: vec![0; inputs.len()], ..Produced::default() };
    let mut max_ts = Millis::MIN;
    let mut line = Vec::new();
    let started = Instant::now();
    let mut pacer = Pacer::new(opts.rate);
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| WorkerError::Setup(format!("{}: {e}", path.display())))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| WorkerError::Setup(format!("{}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            let raw = line.strip_suffix(b"\n").unwrap_or(&line);
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (topic_index, key) = match decoder.decode(raw) {
                Ok(event) => {
                    max_ts = max_ts.max(event.ts());
                    let i = match event.event_type() {
                        EventType::View => 0,
                        EventType::Click => 1,
                        EventType::Purchase => 2,
                        EventType::Refund => 3,
                    };
                    let key = match (&event, opts.key) {
                        (crate::model::Event::Purchase(p), KeyBy::OrderId) => p.order_id.to_string(),
                        (crate::model::Event::Refund(r), KeyBy::OrderId) => r.order_id.to_string(),
                        _ => event.user_id().to_string(),
                    };
                    (i, Some(key))
                }
                Err(_) => (0, None),
            };
            if let Some(pacer) = pacer.as_mut() {
                let wait = pacer.delay(Instant::now());
                if !wait.is_zero() {
                    producer.poll(Duration::ZERO); // serve delivery reports while idle
                    std::thread::sleep(wait);
                }
            }
            let mut record = BaseRecord::<str, [u8]>::to(&inputs[topic_index]).payload(raw);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            send_waiting(&producer, record).map_err(WorkerError::kafka("producing"))?;
            result.per_topic[topic_index] += 1;
        }
    }
    if opts.flush_marker && max_ts > Millis::MIN {
        let probe: BaseConsumer = with_user_settings(client_config(config), config)
            .create()
            .map_err(WorkerError::kafka("creating a client"))?;
        let ts = max_ts + 60_000;
        for topic in inputs {
            let md =
                probe.fetch_metadata(Some(topic), Duration::from_secs(30)).map_err(WorkerError::kafka("metadata"))?;
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            for p in 0..partitions {
                // A shopper id that maps to partition p, so the marker is not misrouted.
                let user = (0u32..)
                    .map(|n| format!("attrib-flush-{n}"))
                    .find(|u| config.partitioner.partition(u.as_bytes(), partitions) == p)
                    .expect("some id maps to every partition");
                let payload = format!(
                    r#"{{"type":"view","event_id":"attrib-flush-{topic}-{p}-{ts}","ts":{ts},"user_id":"{user}","creator_id":"attrib-flush"}}"#
                );
                let record = BaseRecord::<str, str>::to(topic).partition(p).key(&user).payload(&payload);
                send_waiting(&producer, record).map_err(WorkerError::kafka("producing"))?;
                result.markers += 1;
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(WorkerError::kafka("flushing"))?;
    result.elapsed = started.elapsed();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a sender that sends the moment it may; returns the send times.
    fn schedule(rate: u64, n: u64, start: Instant) -> Vec<Instant> {
        let mut pacer = Pacer { rate, base: start, sent_since_base: 0 };
        let mut now = start;
        (0..n)
            .map(|_| {
                now += pacer.delay(now);
                now
            })
            .collect()
    }

    #[test]
    fn rate_zero_is_unpaced() {
        assert!(Pacer::new(0).is_none());
    }

    #[test]
    fn steady_rate_without_drift() {
        let start = Instant::now();
        // 3 lines per second do not divide a second evenly: rounding must not add up.
        let times = schedule(3, 3 * 600 + 1, start);
        assert_eq!(times[0], start);
        assert_eq!(times[3 * 600] - start, Duration::from_secs(600));
        assert_eq!(times[1] - start, Duration::from_nanos(333_333_333));
        assert_eq!(times[2] - start, Duration::from_nanos(666_666_666));
        let times = schedule(250_000, 250_000 * 60 + 1, start);
        assert_eq!(*times.last().unwrap() - start, Duration::from_secs(60));
    }

    #[test]
    fn late_sends_do_not_shift_the_schedule() {
        let start = Instant::now();
        let mut pacer = Pacer { rate: 1000, base: start, sent_since_base: 0 };
        // Sleeping overshoots by 0.5 ms every time: later lines are still due on the grid.
        let mut now = start;
        for _ in 0..10_000 {
            now += pacer.delay(now) + Duration::from_micros(500);
        }
        assert_eq!(pacer.due() - start, Duration::from_secs(10));
        assert!(now - start < Duration::from_millis(10_001));
    }

    #[test]
    fn a_stall_is_caught_up_by_at_most_one_bucket() {
        let start = Instant::now();
        let mut pacer = Pacer { rate: 1000, base: start, sent_since_base: 0 };
        assert_eq!(pacer.delay(start), Duration::ZERO);
        // Stalled for 5 s: the line due then and 100 ms worth more go at once, then the
        // pace resumes on the grid.
        let now = start + Duration::from_secs(5);
        for _ in 0..101 {
            assert_eq!(pacer.delay(now), Duration::ZERO);
        }
        assert_eq!(pacer.delay(now), Duration::from_millis(1));
        assert_eq!(pacer.delay(now), Duration::from_millis(2));
    }
}

//! `attrib produce`: loads JSONL files into the input topics, for tests, benchmarks and
//! anyone who wants to replay fixtures through Kafka.
//!
//! Each valid event goes to the topic of its type (`view` → the 1st input topic, `click`
//! → the 2nd, `purchase` → the 3rd, `refund` → the 4th, as in `kafka.input_topics`) with
//! key `user_id`, partitioned with librdkafka's `murmur2_random`, the Java client's
//! partitioner, so other producers of the same topics agree on the partition of each
//! shopper. Lines that do not decode go, unchanged and without a key, to the first input
//! topic, where the worker dead-letters them.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{client_config, send_waiting, with_user_settings, WorkerError};
use crate::codec::Decoder;
use crate::config::Config;
use crate::model::{EventType, Millis};

/// What `produce` sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Messages per input topic, in `kafka.input_topics` order.
    pub per_topic: Vec<u64>,
    /// Flush markers written (one per input partition).
    pub markers: u64,
}

/// Sends every line of `files`; with `flush_marker`, then one view per partition of
/// every input topic, 1 minute of event time after the largest event time sent, so the
/// worker's watermark passes every event sent before (a stream never ends by itself).
pub fn produce(config: &Config, files: &[PathBuf], flush_marker: bool) -> Result<Produced, WorkerError> {
    let inputs = &config.kafka.input_topics;
    if inputs.len() != 4 {
        return Err(WorkerError::Setup("produce needs four input topics: views, clicks, purchases, refunds".into()));
    }
    let mut pc = client_config(config);
    pc.set("partitioner", "murmur2_random").set("enable.idempotence", "true").set("linger.ms", "20");
    let producer: BaseProducer =
        with_user_settings(pc, config).create().map_err(WorkerError::kafka("creating the producer"))?;
    let mut decoder = Decoder::new(config.limits);
    let mut result = Produced { per_topic: vec![0; inputs.len()], markers: 0 };
    let mut max_ts = Millis::MIN;
    let mut line = Vec::new();
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
                    (i, Some(event.user_id().to_string()))
                }
                Err(_) => (0, None),
            };
            let mut record = BaseRecord::<str, [u8]>::to(&inputs[topic_index]).payload(raw);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            send_waiting(&producer, record).map_err(WorkerError::kafka("producing"))?;
            result.per_topic[topic_index] += 1;
        }
    }
    if flush_marker && max_ts > Millis::MIN {
        let probe: BaseConsumer = with_user_settings(client_config(config), config)
            .create()
            .map_err(WorkerError::kafka("creating a client"))?;
        let ts = max_ts + 60_000;
        for topic in inputs {
            let md =
                probe.fetch_metadata(Some(topic), Duration::from_secs(30)).map_err(WorkerError::kafka("metadata"))?;
            let partitions = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            for p in 0..partitions {
                let payload = format!(
                    r#"{{"type":"view","event_id":"attrib-flush-{topic}-{p}-{ts}","ts":{ts},"user_id":"attrib-flush","creator_id":"attrib-flush"}}"#
                );
                let record = BaseRecord::<str, str>::to(topic).partition(p).key("attrib-flush").payload(&payload);
                send_waiting(&producer, record).map_err(WorkerError::kafka("producing"))?;
                result.markers += 1;
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(WorkerError::kafka("flushing"))?;
    Ok(result)
}

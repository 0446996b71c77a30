//! `attrib restate --kafka`: the adjustment records of a restatement (SPEC 8.5) go to
//! the output topic in one Kafka transaction, key `creator_id` like every record, so a
//! `read_committed` consumer sees all of them or none.
//!
//! The transactional id is `<kafka.group_id>-restate-<revision>`: a second run of the same
//! revision fences a first one still in flight (its open transaction is aborted), and
//! writes the same `commission_id`s, which consumers deduplicate.

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{client_config, send_waiting, with_user_settings, WorkerError};
use crate::codec::encode_record;
use crate::config::Config;
use crate::restate::Restatement;

/// The transactional id a restatement to `revision` produces under.
pub fn transactional_id(config: &Config, revision: &str) -> String {
    format!("{}-restate-{revision}", config.kafka.group_id)
}

/// Produces the adjustments to `kafka.output_topic` in one transaction; returns how many.
/// Nothing is visible to `read_committed` consumers unless this returns `Ok`.
pub fn produce_adjustments(config: &Config, restatement: &Restatement) -> Result<usize, WorkerError> {
    let mut pc = client_config(config);
    pc.set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("transactional.id", transactional_id(config, &restatement.revision))
        .set("transaction.timeout.ms", config.transaction_timeout.as_millis().to_string());
    let producer: BaseProducer =
        with_user_settings(pc, config).create().map_err(WorkerError::kafka("creating the producer"))?;
    producer.init_transactions(config.transaction_timeout).map_err(WorkerError::kafka("initialising transactions"))?;
    producer.begin_transaction().map_err(WorkerError::kafka("beginning a transaction"))?;
    let topic = &config.kafka.output_topic;
    let mut buf = Vec::with_capacity(1024);
    let sent = (|| {
        for r in &restatement.adjustments {
            buf.clear();
            encode_record(&r.view(), &mut buf);
            let payload = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let record = BaseRecord::<str, [u8]>::to(topic).key(r.creator_id.as_str()).payload(payload);
            send_waiting(&producer, record).map_err(WorkerError::kafka("producing an adjustment"))?;
        }
        producer.flush(config.transaction_timeout).map_err(WorkerError::kafka("flushing"))?;
        producer
            .commit_transaction(config.transaction_timeout)
            .map_err(WorkerError::kafka("committing the transaction"))
    })();
    if let Err(e) = sent {
        let _ = producer.abort_transaction(Duration::from_secs(30));
        return Err(e);
    }
    Ok(restatement.adjustments.len())
}

//! Transactions: opening one, the commit (records, the state topic's log and
//! checkpoints, and the input offsets together), the abort that throws state away, and
//! the metrics exported at each commit.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tracing::error;

use super::client::{send_waiting, ConsumerCtx, ProducerCtx};
use super::state::{checkpoint_items, CommitMeta, StateItem};
use super::{is_fatal, now_ms, Core, WorkerError};

impl Core {
    pub(super) fn ensure_txn(&mut self) -> Result<(), WorkerError> {
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

    /// Writes the order log (and due snapshots) and commits records + offsets atomically.
    /// Waits until everything sent is delivered; any delivery failure is an error.
    fn flush_delivered(&self) -> Result<(), WorkerError> {
        self.producer.flush(self.config.transaction_timeout).map_err(WorkerError::kafka("flushing the transaction"))?;
        let failures = std::mem::take(&mut *self.producer.context().failures.lock().expect("not poisoned"));
        match failures.first() {
            Some(first) => Err(WorkerError::Setup(format!("{} message(s) not delivered: {first}", failures.len()))),
            None => Ok(()),
        }
    }

    pub(super) fn commit(
        &mut self,
        consumer: &BaseConsumer<ConsumerCtx>,
        force_snapshot: bool,
    ) -> Result<(), WorkerError> {
        self.export_state();
        if !self.in_txn {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        if !self.config.kafka.exactly_once {
            // At least once: a restart continues from the newest log entry it finds, also
            // one whose offsets were never committed (state::rebuild), so the records a
            // log entry stands for must be delivered before the entry is written. One
            // flush for both would let a crash deliver the entry and lose the records:
            // Kafka orders nothing across partitions.
            self.flush_delivered()?;
        }
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
        self.flush_delivered()?;
        let timeout = self.config.transaction_timeout;
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
    pub(super) fn abort(&mut self) {
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
    pub(super) fn export_state(&mut self) {
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
}

pub(super) fn send_state(
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

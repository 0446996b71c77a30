//! Transactions: opening one, the commit (records, the state topic's log and
//! checkpoints, and the input offsets together), the abort that throws state away, and
//! the metrics exported at each commit.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, error};

use super::client::{send_waiting, ConsumerCtx, ProducerCtx, STATE_SLOT};
use super::state::{CommitMeta, StateItem};
use super::{is_fatal, now_ms, Core, WorkerError};

/// A commit in progress: what it commits was fixed when it started.
pub(super) struct Closing {
    started: Instant,
    /// The input offsets (with the state metadata) it commits.
    offsets: TopicPartitionList,
    /// Receive stamps of the messages that made its records.
    stamps: Vec<u64>,
    /// Groups whose checkpoint it writes, with the checkpoint's sequence number.
    checkpointed: Vec<(i32, u64)>,
    /// What it waits for before the offsets are committed.
    waiting: Waiting,
}

/// What a commit in progress waits for.
enum Waiting {
    /// Exactly once: everything sent, its state items included, is delivered.
    All,
    /// At least once: the records of its epoch (the counting slot they were sent in) are
    /// delivered; then its order-log entries and checkpoints are written...
    Records { slot: usize, state_items: Vec<(i32, StateItem)> },
    /// ...and delivered.
    State,
}

impl Core {
    pub(super) fn ensure_txn(&mut self) -> Result<(), WorkerError> {
        if !self.in_txn {
            if self.config.kafka.exactly_once {
                if self.abort_pending {
                    // A previous abort timed out: librdkafka wants it called again first.
                    self.producer()
                        .abort_transaction(self.config.transaction_timeout)
                        .map_err(WorkerError::kafka("finishing an earlier abort"))?;
                    self.abort_pending = false;
                }
                self.producer().begin_transaction().map_err(WorkerError::kafka("beginning a transaction"))?;
            }
            self.in_txn = true;
        }
        Ok(())
    }

    /// Delivery failures reported since the last look, as an error.
    fn take_failures(&self) -> Result<(), WorkerError> {
        let failures = std::mem::take(&mut *self.producer().context().failures.lock().expect("not poisoned"));
        match failures.first() {
            Some(first) => Err(WorkerError::Setup(format!("{} message(s) not delivered: {first}", failures.len()))),
            None => Ok(()),
        }
    }

    /// Everything sent so far (`slot`: everything counted in that slot) is delivered,
    /// serving delivery reports. With `wait`, waits for all of it (the transaction
    /// timeout at most); without, only looks.
    fn delivered(&mut self, wait: bool, slot: Option<usize>) -> Result<bool, WorkerError> {
        if wait {
            let blocked = Instant::now();
            let flushed = self.producer().flush(self.config.transaction_timeout);
            self.commit_phases[1] += blocked.elapsed();
            flushed.map_err(WorkerError::kafka("flushing the transaction"))?;
        } else {
            self.serve_deliveries();
            let done = match slot {
                Some(slot) => self.producer().context().all_delivered(slot),
                None => self.producer().in_flight_count() == 0,
            };
            if !done {
                return Ok(false);
            }
        }
        self.take_failures()?;
        Ok(true)
    }

    /// Serves every delivery report waiting (one `poll` serves one event, a batch of
    /// reports of one partition): without transactions they time the latency, and a
    /// commit in progress waits for them.
    pub(super) fn serve_deliveries(&self) {
        for _ in 0..1024 {
            let before = self.producer().in_flight_count();
            self.producer().poll(Duration::ZERO);
            if before == 0 || self.producer().in_flight_count() == before {
                break;
            }
        }
    }

    /// A blocking commit: finishes the commit in progress, if any, then commits all that
    /// was processed since. For rebalances and shutdown.
    pub(super) fn commit(
        &mut self,
        consumer: &BaseConsumer<ConsumerCtx>,
        force_snapshot: bool,
    ) -> Result<(), WorkerError> {
        self.advance_commit(consumer, true)?;
        self.start_commit(force_snapshot)?;
        self.advance_commit(consumer, true)?;
        Ok(())
    }

    /// Starts committing what was processed so far (the open transaction): its order-log
    /// entry, due checkpoints and input offsets are fixed now; the commit completes in
    /// [`Core::advance_commit`] once everything is delivered. Meanwhile processing goes on
    /// and its output waits in [`Core::deferred`] for the next transaction (pipelined
    /// commits: the poll thread does not sit idle while the broker acknowledges).
    pub(super) fn start_commit(&mut self, force_snapshot: bool) -> Result<(), WorkerError> {
        debug_assert!(self.closing.is_none(), "one commit at a time");
        self.export_state();
        if !self.in_txn {
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        let mut items = Vec::new();
        let mut checkpointed = Vec::new();
        for (p, task) in &mut self.tasks {
            if !task.log.is_empty() {
                task.state.seq += 1;
                items.push((*p, StateItem::log(task.state.seq, std::mem::take(&mut task.log))));
            }
            // A group's first commit writes a checkpoint (a restore needs one); then one
            // every snapshot_interval, holding only the shoppers changed since the last.
            let due = force_snapshot || task.last_checkpoint.elapsed() >= self.config.snapshot_interval;
            let behind = task.ckpt_seq != Some(task.state.seq);
            if task.state.seq > 0 && behind && (due || task.ckpt_seq.is_none()) {
                checkpointed.push((*p, task.state.seq));
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (p, task) in &self.tasks {
            if task.state.seq == 0 {
                continue; // nothing processed yet
            }
            let meta = CommitMeta::encode(task.state.seq);
            for (i, topic) in self.inputs.iter().enumerate() {
                if let Some(pos) = task.state.positions[i] {
                    offsets
                        .add_partition_offset(topic, *p, Offset::Offset(pos))
                        .map_err(WorkerError::kafka("offsets"))?;
                    if let Some(mut e) = offsets.find_partition(topic, *p) {
                        e.set_metadata(meta.clone());
                    }
                }
            }
        }
        // The checkpoints are encoded on the checkpoint thread, each group away meanwhile
        // (its offsets and log entry are fixed above); the commit waits for them.
        for &(p, _) in &checkpointed {
            let task = self.tasks.remove(&p).expect("a group of this worker");
            let covered_from = task.ckpt_seq.unwrap_or(0);
            self.checkpointer.send(p, Box::new(task), covered_from)?;
            self.away.insert(p);
        }
        let items_len = items.len();
        let waiting = if self.config.kafka.exactly_once {
            self.send_state_items(&items, 0)?;
            Waiting::All
        } else {
            // At least once: a restart continues from the newest log entry it finds, also
            // one whose offsets were never committed (state::rebuild), so the records a
            // log entry stands for must be delivered before the entry is written: Kafka
            // orders nothing across partitions. The entries wait until they are; output
            // from now on is counted in the other slot and sent at once.
            let slot = self.epoch_slot;
            self.epoch_slot ^= 1;
            Waiting::Records { slot, state_items: items }
        };
        let closing =
            Closing { started, offsets, stamps: std::mem::take(&mut self.open_stamps), checkpointed, waiting };
        self.commit_phases[0] += started.elapsed();
        debug!(
            items = items_len,
            checkpoints = closing.checkpointed.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "commit started"
        );
        self.closing = Some(closing);
        self.last_commit = Instant::now();
        Ok(())
    }

    fn send_state_items(&self, items: &[(i32, StateItem)], opaque: usize) -> Result<(), WorkerError> {
        let topic = &self.config.kafka.state_topic;
        for (p, item) in items {
            send_state(self.producer(), topic, *p, &item.key, item.value.as_deref(), opaque)?;
        }
        Ok(())
    }

    /// Moves the commit in progress on: once everything it holds is delivered (waiting
    /// for it with `wait`), commits the offsets with it, then begins the next
    /// transaction with the output deferred meanwhile. Returns whether no commit is left
    /// in progress.
    pub(super) fn advance_commit(
        &mut self,
        consumer: &BaseConsumer<ConsumerCtx>,
        wait: bool,
    ) -> Result<bool, WorkerError> {
        if self.closing.is_none() {
            return Ok(true);
        }
        if !self.checkpoints_back(wait)? {
            return Ok(false);
        }
        let Some(closing) = self.closing.as_mut() else { return Ok(true) };
        if let Waiting::Records { slot, .. } = closing.waiting {
            // At least once: the records of the commit's epoch are delivered, then its log
            // entries are written (counted apart) and awaited, then the offsets committed.
            if !self.delivered(wait, Some(slot))? {
                return Ok(false);
            }
            let Some(closing) = self.closing.as_mut() else { return Ok(true) };
            if let Waiting::Records { state_items, .. } = std::mem::replace(&mut closing.waiting, Waiting::State) {
                self.send_state_items(&state_items, ProducerCtx::count_tag(STATE_SLOT))?;
            }
        }
        let slot = self.closing.as_ref().is_some_and(|c| matches!(c.waiting, Waiting::State)).then_some(STATE_SLOT);
        if !self.delivered(wait, slot)? {
            return Ok(false);
        }
        let Some(closing) = self.closing.take() else { return Ok(true) };
        let phase = Instant::now();
        let timeout = self.config.transaction_timeout;
        if self.config.kafka.exactly_once {
            let cgm =
                consumer.group_metadata().ok_or_else(|| WorkerError::Setup("no consumer group metadata".into()))?;
            self.producer()
                .send_offsets_to_transaction(&closing.offsets, &cgm, timeout)
                .map_err(WorkerError::kafka("sending offsets to the transaction"))?;
            self.producer().commit_transaction(timeout).map_err(WorkerError::kafka("committing the transaction"))?;
            // The next transaction goes to the other producer (see `producer_ids`).
            self.active = (self.active + 1) % self.producers.len();
        } else if closing.offsets.count() > 0 {
            // Everything above is delivered (no failures): now the offsets. Asynchronously
            // while processing goes on (a blocking commit held the poll thread for a round
            // trip to the group coordinator every commit); a blocking commit for a
            // hand-over or shutdown (`wait`), whose offsets the next owner reads.
            let mode = if wait { CommitMode::Sync } else { CommitMode::Async };
            consumer.commit(&closing.offsets, mode).map_err(WorkerError::kafka("committing offsets"))?;
        }
        self.commit_phases[2] += phase.elapsed();
        self.in_txn = false;
        let took = closing.started.elapsed();
        self.observe.metrics.transaction_committed(took);
        self.commit_time += took;
        self.commits += 1;
        let now = self.stamp();
        debug!(
            took_ms = took.as_millis() as u64,
            records = closing.stamps.len(),
            oldest_ms = closing.stamps.first().map_or(0, |s| now.saturating_sub(*s) / 1_000_000),
            "committed"
        );
        for stamp in closing.stamps {
            let took = now.saturating_sub(stamp);
            self.latency.saturating_record(took / 1000);
            self.observe.metrics.observe_latency(Duration::from_nanos(took));
        }
        for (p, seq) in closing.checkpointed {
            if let Some(task) = self.tasks.get_mut(&p) {
                task.ckpt_seq = Some(seq);
                task.last_checkpoint = Instant::now();
            }
        }
        // What was processed meanwhile opens the next transaction.
        if std::mem::take(&mut self.worked_while_closing) || !self.deferred.is_empty() {
            self.ensure_txn()?;
            self.deferred.send_all(&self.producers[self.active], &self.config);
        }
        Ok(true)
    }

    /// Takes back the groups the commit in progress sent to the checkpoint thread, and
    /// their checkpoints into the transaction (exactly once: sent now; at least once:
    /// written with the order-log entries once the records are delivered). With `wait`,
    /// waits for all of them. Returns whether all are back.
    fn checkpoints_back(&mut self, wait: bool) -> Result<bool, WorkerError> {
        while !self.away.is_empty() {
            let Some(done) = self.checkpointer.next(wait)? else { return Ok(false) };
            let p = done.partition;
            self.away.remove(&p);
            self.tasks.insert(p, *done.task);
            let items: Vec<(i32, StateItem)> = done.items.into_iter().map(|item| (p, item)).collect();
            debug!(group = p, items = items.len(), took_ms = done.took.as_millis() as u64, "checkpoint encoded");
            match self.closing.as_mut().map(|c| &mut c.waiting) {
                Some(Waiting::Records { state_items, .. }) => state_items.extend(items),
                _ => self.send_state_items(&items, 0)?,
            }
        }
        Ok(true)
    }

    /// Whether to start a commit now (none is in progress). `kafka.commit_interval`
    /// bounds how long processed input waits for its commit. A worker that has caught up
    /// with its inputs (`drained`: nothing more fetched) and holds records commits after a
    /// tenth of it: small transactions for low latency when there is time for them, large
    /// ones while catching up, when commits would only cost throughput.
    pub(super) fn commit_due(&self, drained: bool) -> bool {
        let elapsed = self.last_commit.elapsed();
        elapsed >= self.config.commit_interval
            || (drained && !self.open_stamps.is_empty() && elapsed >= self.config.commit_interval / 10)
    }

    /// Before processing a message: output goes to the open transaction, or, while a
    /// commit is in progress, to [`Core::deferred`] for the next one.
    pub(super) fn begin_work(&mut self) -> Result<(), WorkerError> {
        if self.closing.is_some() {
            self.worked_while_closing = true;
            Ok(())
        } else {
            self.ensure_txn()
        }
    }

    /// Aborts the open transaction and forgets all in-memory state: every assigned group
    /// is rebuilt from Kafka and the consumer goes back to the committed offsets.
    pub(super) fn abort(&mut self) {
        self.open_stamps.clear();
        self.batch.clear();
        self.closing = None;
        self.deferred.clear();
        self.worked_while_closing = false;
        if self.in_txn {
            self.observe.metrics.transaction_aborted();
        }
        if (self.in_txn || self.abort_pending) && self.config.kafka.exactly_once {
            // What the aborted transaction still holds is discarded anyway: drop what was
            // not sent, and serve the delivery reports of what was (librdkafka's abort
            // waits for them, and only the application's poll delivers them).
            self.producer().purge(PurgeConfig::default().queue());
            let deadline = Instant::now() + self.config.transaction_timeout;
            while self.producer().in_flight_count() > 0 && Instant::now() < deadline {
                self.producer().poll(Duration::from_millis(20));
            }
            match self.producer().abort_transaction(self.config.transaction_timeout) {
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
        self.producer().context().failures.lock().expect("not poisoned").clear();
        let groups: Vec<i32> = self.tasks.keys().copied().collect();
        self.unrestored.extend(groups);
        self.tasks.clear();
        // Groups on the checkpoint thread are rebuilt too; their results are dropped.
        self.checkpointer.cancel();
        self.unrestored.append(&mut self.away);
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
    opaque: usize,
) -> Result<(), WorkerError> {
    let mut record = BaseRecord::with_opaque_to(topic, opaque).partition(p).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    send_waiting(producer, record).map_err(WorkerError::kafka("writing the state topic"))?;
    producer.context().sent(opaque);
    Ok(())
}

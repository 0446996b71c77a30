//! Rebalances: what the worker hands over when partitions are revoked, and how an
//! assigned partition group is restored (on the restore thread, see [`restore`]) or kept
//! before it is processed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::client::ConsumerCtx;
use super::restore::{Handover, Outcome};
use super::task::{Routing, Task};
use super::{Core, WorkerError};

impl Core {
    /// Hands every assigned group that is not restored yet to the restore thread, and
    /// installs the groups it has finished. Never blocks: the poll loop keeps polling
    /// while groups are restored (their input partitions paused, see [`restore`]).
    pub(super) fn restore_pending(&mut self) -> Result<(), WorkerError> {
        let asked: Vec<i32> = self.unrestored.difference(&self.dispatched).copied().collect();
        for p in asked {
            let kept = self.parked.get(&p).map(|(_, handover)| handover.clone());
            self.restorer.request(self.routing(p), kept);
            self.dispatched.insert(p);
        }
        while let Some(done) = self.restorer.try_done() {
            let p = done.partition;
            self.dispatched.remove(&p);
            if !self.unrestored.contains(&p) {
                continue; // no longer assigned
            }
            let task = match done.result? {
                Outcome::Kept => {
                    let Some((task, _)) = self.parked.remove(&p) else {
                        // Not parked after all (cannot happen): rebuild it.
                        continue;
                    };
                    let engine = task.state.pipeline.engine();
                    info!(
                        group = p,
                        touches = engine.live_touches(),
                        shoppers = engine.shoppers(),
                        seq = task.state.seq,
                        took_ms = done.took.as_millis() as u64,
                        "partition group kept: its state in memory is still the committed one"
                    );
                    task
                }
                Outcome::Rebuilt { state, ckpt_seq, state_records, state_bytes } => {
                    self.parked.remove(&p);
                    let mut task = Task::new(self.routing(p), *state, ckpt_seq);
                    // SPEC 8.1: the state was rebuilt under the config in force when it
                    // was written; from here on this worker's config applies.
                    let changed = task.state.pipeline.processing().differences(&self.processing);
                    for (key, was, now) in &changed {
                        info!(group = p, key = %key, was = %was, now = %now, "config differs from the one this state was written under: the new value applies from now on");
                    }
                    if !changed.is_empty() {
                        task.set_processing(self.processing.clone());
                    }
                    task.wake_inputs();
                    let engine = task.state.pipeline.engine();
                    info!(
                        group = p,
                        events = engine.stats().events_in,
                        touches = engine.live_touches(),
                        shoppers = engine.shoppers(),
                        seq = task.state.seq,
                        checkpoint_seq = ?task.ckpt_seq,
                        state_records,
                        state_bytes,
                        took_ms = done.took.as_millis() as u64,
                        "partition group restored"
                    );
                    task
                }
            };
            self.unrestored.remove(&p);
            for i in 0..self.inputs.len() {
                self.last_seen.insert((p, i as u8), Instant::now());
            }
            for (i, end) in done.ends.into_iter().enumerate() {
                self.ends.insert((p, i as u8), end);
            }
            self.exported.insert(p, task.state.pipeline.engine().stats().clone());
            self.tasks.insert(p, task);
        }
        Ok(())
    }

    fn routing(&self, p: i32) -> Routing {
        Routing {
            partition: p,
            partitioner: self.config.partitioner,
            partitions: self.partitions,
            sources: self.sources,
        }
    }

    /// Pauses the input partitions of every group being restored: what they would
    /// deliver before their state is in would only be held.
    pub(super) fn pause_unrestored(&mut self, consumer: &BaseConsumer<ConsumerCtx>) {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.unrestored {
            for (i, topic) in self.inputs.iter().enumerate() {
                if self.paused.insert((p, i as u8)) {
                    tpl.add_partition(topic, p);
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.pause(&tpl) {
                warn!(error = %e, "pausing the partitions of groups being restored failed");
            }
        }
    }
}

impl Core {
    /// After the commit that hands every group over: keeps each group's state, with
    /// what was committed, in case the group comes back (see [`restore`]).
    fn park(&mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        if !self.config.kafka.exactly_once {
            return; // at least once: always rebuilt (see [`restore`])
        }
        for (p, task) in tasks {
            let handover = Handover { seq: task.state.seq, positions: task.state.positions.clone() };
            self.parked.insert(p, (task, handover));
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    /// Without transactions the offsets are committed asynchronously between rebalances
    /// (`Core::advance_commit`): a failed commit is only logged here; the next one covers
    /// it, and until then a restart re-reads a little more (at least once). librdkafka
    /// reports blocking commits here too; their failure is also returned to the caller.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            warn!(error = %e, "committing input offsets failed");
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = self.core.lock();
            info!(partitions = tpl.count(), "partitions revoked: committing and handing over");
            core.observe.metrics.rebalance("revoke");
            core.observe.health.set_assigned(false);
            // What was taken from the consumer before the rebalance is processed first,
            // as if each message had been processed when it was taken.
            match core.run_batch().and_then(|()| core.commit(consumer, true)) {
                Ok(()) => core.park(),
                Err(e) => {
                    warn!(error = %e, "commit before revocation failed; the next owner redoes the uncommitted part");
                    if e.is_fatal() {
                        core.fatal = Some(e);
                    } else {
                        core.abort();
                    }
                }
            }
            core.restorer.cancel_all();
            core.dispatched.clear();
            let gone: Vec<i32> = core.tasks.keys().chain(core.parked.keys()).copied().collect();
            for p in gone {
                core.observe.metrics.remove_partition(p);
            }
            core.tasks.clear();
            core.checkpointer.cancel();
            core.away.clear();
            core.exported.clear();
            core.unrestored.clear();
            core.last_seen.clear();
            core.paused.clear();
            core.held.clear();
            core.pressed = false;
            core.ends.clear();
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut core = self.core.lock();
                let groups: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(groups = ?groups, "partitions assigned");
                core.observe.metrics.rebalance("assign");
                core.observe.health.set_assigned(!groups.is_empty());
                // Parked groups not given back are someone else's now.
                core.parked.retain(|p, _| groups.contains(p));
                core.unrestored.extend(groups);
                core.pause_unrestored(consumer);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => error!(error = %e, "rebalance error"),
        }
    }
}

/// Moves the consumer back to the committed offsets of its assignment.
pub(super) fn rewind(consumer: &BaseConsumer<ConsumerCtx>, inputs: &[String]) -> Result<(), WorkerError> {
    let assignment = consumer.assignment().map_err(WorkerError::kafka("reading the assignment"))?;
    let committed = consumer
        .committed_offsets(assignment.clone(), Duration::from_secs(30))
        .map_err(WorkerError::kafka("reading committed offsets"))?;
    for e in committed.elements() {
        if !inputs.iter().any(|t| t == e.topic()) {
            continue;
        }
        let to = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        consumer.seek(e.topic(), e.partition(), to, Duration::from_secs(10)).map_err(WorkerError::kafka("seeking"))?;
    }
    Ok(())
}

//! Rebalances: what the worker hands over when partitions are revoked, and how an
//! assigned partition group is restored from the state topic before it is processed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::Offset;
use tracing::{error, info, warn};

use super::client::ConsumerCtx;
use super::state;
use super::task::{Routing, Task};
use super::{Core, WorkerError};

impl Core {
    /// Rebuilds every assigned partition group that is not yet restored.
    pub(super) fn restore_pending(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        while let Some(p) = self.unrestored.pop_first() {
            let started = Instant::now();
            let inputs: Vec<(String, i32)> = self.inputs.iter().map(|t| (t.clone(), p)).collect();
            let timeout = self.config.transaction_timeout.max(Duration::from_secs(60));
            let committed = state::committed(consumer, &inputs, &self.config.kafka.group_id, timeout)?;
            let deadline = Instant::now() + Duration::from_secs(300);
            let part = match committed.seq {
                Some(_) => {
                    state::read_partition(&self.restore_consumer, &self.config.kafka.state_topic, p, deadline, &|| {
                        false
                    })?
                }
                None => state::PartitionState::default(),
            };
            let (read_records, read_bytes) = (part.records, part.bytes);
            let routing = Routing { partition: p, partitioner: self.config.partitioner, partitions: self.partitions };
            let (restored, ckpt_seq) = state::rebuild(
                &mut state::KafkaInputs::new(&self.restore_consumer, &inputs),
                part,
                &inputs,
                &self.inputs,
                &committed,
                &self.processing,
                routing,
                deadline,
                &|| false,
            )?;
            let mut task = Task::new(routing, restored, ckpt_seq);
            // SPEC 8.1: the state was rebuilt under the config in force when it was
            // written; from here on this worker's config applies.
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
                state_records = read_records,
                state_bytes = read_bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "partition group restored"
            );
            for i in 0..self.inputs.len() {
                self.last_seen.insert((p, i as u8), Instant::now());
                if self.stop_at_end {
                    let ends = consumer
                        .fetch_watermarks(&self.inputs[i], p, Duration::from_secs(30))
                        .map_err(WorkerError::kafka("reading end offsets"))?;
                    self.ends.insert((p, i as u8), ends);
                }
            }
            self.exported.insert(p, task.state.pipeline.engine().stats().clone());
            self.tasks.insert(p, task);
        }
        Ok(())
    }
}

impl ConsumerContext for ConsumerCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = self.core.lock();
            info!(partitions = tpl.count(), "partitions revoked: committing and handing over");
            core.observe.metrics.rebalance("revoke");
            core.observe.health.set_assigned(false);
            if let Err(e) = core.commit(consumer, true) {
                warn!(error = %e, "commit before revocation failed; the next owner redoes the uncommitted part");
                if e.is_fatal() {
                    core.fatal = Some(e);
                } else {
                    core.abort();
                }
            }
            for p in core.tasks.keys() {
                core.observe.metrics.remove_partition(*p);
            }
            core.tasks.clear();
            core.exported.clear();
            core.unrestored.clear();
            core.last_seen.clear();
            core.paused.clear();
            core.held.clear();
            core.held_bytes.clear();
            core.pressed = false;
            core.ends.clear();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut core = self.core.lock();
                let groups: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(groups = ?groups, "partitions assigned");
                core.observe.metrics.rebalance("assign");
                core.observe.health.set_assigned(!groups.is_empty());
                core.unrestored.extend(groups);
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

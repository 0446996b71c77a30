//! Alignment and idleness: which input partitions are read (read-ahead, back-pressure),
//! which count as idle for the watermark, and when a catch-up run is done.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::TopicPartitionList;
use tracing::{info, warn};

use super::client::ConsumerCtx;
use super::held::Queue;
use super::{Core, WorkerError, HOLD_BYTES};

impl Core {
    /// Event-time alignment: pauses an input partition whose events run more than
    /// `read_ahead` past its group's watermark, resumes it when the others catch up. A
    /// partition that is slow to deliver (a backlog, a large message) then cannot let the
    /// others race ahead; without this, per-shopper touch caps and state size would depend
    /// on fetch timing. Replay reads files the same way (the one furthest behind first).
    ///
    /// Back-pressure: while this worker holds more than `limits.max_live_touches` touches
    /// or `limits.max_pending_purchases` pending purchases, the allowance shrinks to
    /// `max_out_of_orderness`: only the input(s) furthest behind in event time are read.
    /// They are what holds the watermark back, so reading them advances it, which evicts
    /// touches and settles purchases; nothing is dropped and the group never stops.
    pub(super) fn align(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        let touches: usize = self.tasks.values().map(|t| t.state.pipeline.engine().live_touches()).sum();
        let pending: usize = self.tasks.values().map(|t| t.state.pipeline.engine().pending()).sum();
        let over_touches = touches > self.config.max_live_touches;
        let over_pending = pending > self.config.max_pending_purchases;
        self.observe.metrics.set_backpressure("live_touches", over_touches);
        self.observe.metrics.set_backpressure("pending_purchases", over_pending);
        let pressed = over_touches || over_pending;
        if pressed != self.pressed {
            if pressed {
                warn!(
                    touches,
                    pending,
                    max_live_touches = self.config.max_live_touches,
                    max_pending_purchases = self.config.max_pending_purchases,
                    "state limit reached: back-pressure, reading only the inputs furthest behind in event time"
                );
            } else {
                info!(touches, pending, "state back under its limits: back-pressure released");
            }
            self.pressed = pressed;
        }
        self.read_ahead_now = if pressed { self.config.engine.max_out_of_orderness } else { self.config.read_ahead };
        // Held messages whose input is no longer ahead (the allowance may have changed,
        // an input gone idle) go to the engine, in order, as in a batch.
        self.run_batch()?;
        // The consumer fetches ahead-running partitions until they hold HOLD_BYTES, then
        // pauses them (a pause drops librdkafka's prefetched messages, which are fetched
        // again on resume: holding avoids that churn for short leads).
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (&key, queue) in &self.held {
            if queue.bytes() >= HOLD_BYTES && self.paused.insert(key) {
                pause.add_partition(&self.inputs[usize::from(key.1)], key.0);
            }
        }
        let drained: Vec<(i32, u8)> = self
            .paused
            .iter()
            .filter(|k| self.tasks.contains_key(&k.0) && self.held.get(k).map_or(0, Queue::bytes) < HOLD_BYTES / 2)
            .copied()
            .collect();
        for key in drained {
            self.paused.remove(&key);
            resume.add_partition(&self.inputs[usize::from(key.1)], key.0);
        }
        if pause.count() > 0 {
            consumer.pause(&pause).map_err(WorkerError::kafka("pausing partitions ahead in event time"))?;
        }
        if resume.count() > 0 {
            consumer.resume(&resume).map_err(WorkerError::kafka("resuming partitions"))?;
        }
        Ok(())
    }

    /// Marks inputs idle that showed nothing for `idle_timeout` *and* have nothing left
    /// to read: a partition that is merely behind (a backlog after a restart, a slow
    /// fetch) is not idle, or the watermark would overtake its events.
    pub(super) fn check_idle(&mut self, consumer: &BaseConsumer<ConsumerCtx>) -> Result<(), WorkerError> {
        if self.sources > 0 {
            // Repartitioning: the watermark inputs are the source partitions, and their
            // idleness comes from the re-key stage's markers, which sees them.
            return Ok(());
        }
        let idle_timeout = self.config.idle_timeout;
        let candidates: Vec<(i32, u8)> = self
            .last_seen
            .iter()
            .filter(|(k, at)| at.elapsed() >= idle_timeout || self.at_end(**k))
            .map(|(k, _)| *k)
            .filter(|(p, i)| self.tasks.get(p).is_some_and(|t| !t.state.pipeline.watermarks().is_idle(usize::from(*i))))
            .collect();
        let mut due = Vec::new();
        for (p, i) in candidates {
            if self.at_end((p, i)) {
                // A catch-up run reads up to the end it was given and no further: an
                // input partition that reached it has nothing more to come in this run.
                due.push((p, i));
                continue;
            }
            let topic = &self.inputs[usize::from(i)];
            // The end offset the fetcher saw last (no round trip: this runs every loop
            // for every quiet partition); a broker query only when none is known yet.
            let (low, high) = match cached_watermarks(consumer, topic, p) {
                Some(known) => known,
                None => consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(5))
                    .map_err(WorkerError::kafka("reading watermarks for the idle check"))?,
            };
            let held = self.held.get(&(p, i)).is_some_and(|q| !q.is_empty());
            let pending = held
                || match self.tasks.get(&p).and_then(|t| t.state.positions[usize::from(i)]) {
                    Some(pos) => pos < high,
                    None => high > low,
                };
            if pending {
                self.last_seen.insert((p, i), Instant::now());
            } else {
                due.push((p, i));
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        self.begin_work()?;
        let received = self.stamp();
        for (p, i) in due {
            self.with_task_out(p, received, |task, out| task.set_idle(usize::from(i), out));
        }
        Ok(())
    }

    /// `--stop-at-end`: caught up, and every input idle, so the watermark has passed all
    /// that the input lets it pass (the tail of purchases is written before stopping).
    pub(super) fn finished(&self) -> bool {
        self.caught_up() && self.all_idle()
    }

    /// Every watermark input of every group is idle.
    fn all_idle(&self) -> bool {
        self.tasks.values().all(|t| {
            let w = t.state.pipeline.watermarks();
            (0..w.len()).all(|i| w.is_idle(i))
        })
    }

    /// `--stop-at-end`: input partition `key` has reached the end offset it had when its
    /// group was restored, and holds no message back. It counts as idle at once (not after
    /// `idle_timeout`): nothing more is read from it in this run, and `idle_timeout` would
    /// mark it idle all the same, only later (in a long catch-up, while the others are
    /// still being read). Waiting only delayed the exit.
    pub(super) fn at_end(&self, (p, i): (i32, u8)) -> bool {
        self.stop_at_end
            && self.held.get(&(p, i)).is_none_or(Queue::is_empty)
            && self.ends.get(&(p, i)).is_some_and(|(low, high)| {
                self.tasks.get(&p).is_some_and(|t| t.state.positions[usize::from(i)].unwrap_or(*low) >= *high)
            })
    }

    /// `--stop-at-end`: every assigned input partition has reached its end offset.
    ///
    /// Repartitioning: the internal topic has no end while the re-key stage writes to it.
    /// The stage marks each source partition idle once it reached its end offset, and
    /// that marker follows every event of the source in every internal partition: every
    /// source idle is the end.
    pub(super) fn caught_up(&self) -> bool {
        if self.sources > 0 {
            return self.stop_at_end
                && !self.tasks.is_empty()
                && self.unrestored.is_empty()
                && self.away.is_empty()
                && self.all_idle();
        }
        self.stop_at_end
            && !self.tasks.is_empty()
            && self.unrestored.is_empty()
            && self.ends.iter().all(|((p, i), (low, high))| {
                self.tasks.get(p).is_some_and(|t| t.state.positions[usize::from(*i)].unwrap_or(*low) >= *high)
            })
    }

    /// Resumes every paused partition (after an abort, state and alignment start over).
    pub(super) fn resume_all(&mut self, consumer: &BaseConsumer<ConsumerCtx>) {
        self.held.clear();
        let mut tpl = TopicPartitionList::new();
        for (p, i) in std::mem::take(&mut self.paused) {
            tpl.add_partition(&self.inputs[usize::from(i)], p);
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.resume(&tpl) {
                warn!(error = %e, "resuming partitions failed");
            }
        }
    }
}

/// The low and high offsets of a partition as the consumer last saw them in a fetch
/// response (`rd_kafka_get_watermark_offsets`: local, no broker round trip; the rdkafka
/// crate only wraps the querying variant). `None` while unknown.
pub(super) fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    p: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid
    // NUL-terminated string for the call; low/high are valid out-pointers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            p,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0 && high >= 0)
        .then_some((low, high))
}

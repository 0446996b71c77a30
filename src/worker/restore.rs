//! Restoring partition groups off the poll thread.
//!
//! A restore reads a group's state partition and replays its order log over the inputs,
//! which takes about a second per million live touches. On the poll thread that would
//! stop `poll()` for as long, and a large enough restore would get the worker evicted
//! from the group (`max.poll.interval.ms`). So one restore thread does it, with its own
//! clients: the restore consumer (state topic and inputs, manually assigned) and an
//! offsets client (the worker's `group.id`, never subscribed) that reads the committed
//! offsets. The poll thread keeps polling; a group's input partitions stay paused, and
//! messages that were already fetched for it are held, until it is restored.
//!
//! A group this worker had before a rebalance and gets back is *kept*, not rebuilt, when
//! nobody committed anything for it in between: its committed offsets and order-log
//! sequence are still the ones this worker committed when it gave the group up. With
//! exactly-once that proves the state in memory is what a rebuild would produce: every
//! change to a group's state is a logged step committed with the input offsets in one
//! transaction (a restore followed by a config change or an idle mark logs a step, so it
//! moves the sequence), and what an aborted transaction wrote is never read back. A
//! checkpoint another owner wrote without any new step holds that same state. Without
//! transactions a crashed owner can leave log entries behind that were never committed
//! but that a rebuild continues from, so at-least-once always rebuilds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::debug;

use super::client::{client_config, fetch_for_throughput, with_user_settings, RestoreCtx};
use super::state;
use super::task::{Routing, TaskState};
use super::WorkerError;
use crate::config::Config;
use crate::pipeline::Processing;

/// What this worker knew of a group when it gave it up after a successful commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Handover {
    pub seq: u64,
    pub positions: Vec<Option<i64>>,
}

/// A restore to do.
struct Request {
    routing: Routing,
    generation: u64,
    /// Set when this worker still holds the group's state from before a rebalance.
    kept: Option<Handover>,
}

/// How a group came back.
pub(super) enum Outcome {
    /// The state in memory is still the committed one.
    Kept,
    Rebuilt {
        state: Box<TaskState>,
        ckpt_seq: Option<u64>,
        state_records: u64,
        state_bytes: u64,
    },
}

/// A finished restore.
pub(super) struct Done {
    pub partition: i32,
    pub generation: u64,
    pub took: Duration,
    /// `(low, high)` offsets of every input partition when the restore read them
    /// (`--stop-at-end` only, else empty).
    pub ends: Vec<(i64, i64)>,
    pub result: Result<Outcome, WorkerError>,
}

/// The restore thread, and the poll thread's handle on it.
pub(super) struct Restorer {
    requests: Option<mpsc::Sender<Request>>,
    done: mpsc::Receiver<Done>,
    /// Bumped at every revocation: restores asked for before it are cancelled, and their
    /// results dropped.
    generation: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// What the restore thread needs to know.
struct Context {
    restore: BaseConsumer<RestoreCtx>,
    offsets: BaseConsumer<RestoreCtx>,
    config: Config,
    processing: Processing,
    stop_at_end: bool,
    generation: Arc<AtomicU64>,
}

impl Restorer {
    /// Creates the restore thread's clients and starts it.
    pub fn spawn(config: &Config, processing: Processing, stop_at_end: bool) -> Result<Restorer, WorkerError> {
        let mut rc = client_config(config);
        rc.set("group.id", format!("{}-restore", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        fetch_for_throughput(&mut rc);
        let restore: BaseConsumer<RestoreCtx> = with_user_settings(rc, config)
            .create_with_context(RestoreCtx)
            .map_err(WorkerError::kafka("creating the restore consumer"))?;
        let mut oc = client_config(config);
        oc.set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        let offsets: BaseConsumer<RestoreCtx> = with_user_settings(oc, config)
            .create_with_context(RestoreCtx)
            .map_err(WorkerError::kafka("creating the offsets client"))?;
        let generation = Arc::new(AtomicU64::new(0));
        let (requests, inbox) = mpsc::channel::<Request>();
        let (outbox, done) = mpsc::channel::<Done>();
        let cx = Context {
            restore,
            offsets,
            config: config.clone(),
            processing,
            stop_at_end,
            generation: generation.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("attrib-restore".into())
            .spawn(move || {
                for request in inbox {
                    if request.generation != cx.generation.load(Ordering::Acquire) {
                        continue;
                    }
                    let started = Instant::now();
                    let mut ends = Vec::new();
                    let result = cx.restore(&request, &mut ends);
                    let done = Done {
                        partition: request.routing.partition,
                        generation: request.generation,
                        took: started.elapsed(),
                        ends,
                        result,
                    };
                    if outbox.send(done).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| WorkerError::Setup(format!("starting the restore thread: {e}")))?;
        Ok(Restorer { requests: Some(requests), done, generation, thread: Some(thread) })
    }

    /// The current generation (results of other generations are stale).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Cancels every restore asked for so far (a revocation).
    pub fn cancel_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks for group `routing.partition` to be restored (or kept).
    pub fn request(&self, routing: Routing, kept: Option<Handover>) {
        let request = Request { routing, generation: self.generation(), kept };
        if let Some(tx) = &self.requests {
            // The thread only ends when this handle is dropped.
            let _ = tx.send(request);
        }
    }

    /// A finished restore of the current generation, if any (never blocks).
    pub fn try_done(&self) -> Option<Done> {
        loop {
            let done = self.done.try_recv().ok()?;
            if done.generation == self.generation() {
                return Some(done);
            }
            debug!(group = done.partition, "dropping the result of a cancelled restore");
        }
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        self.cancel_all();
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Context {
    fn restore(&self, request: &Request, ends: &mut Vec<(i64, i64)>) -> Result<Outcome, WorkerError> {
        let routing = request.routing;
        let p = routing.partition;
        let cancelled = || self.generation.load(Ordering::Acquire) != request.generation;
        let names = &super::client::joined_topics(&self.config);
        let inputs: Vec<(String, i32)> = names.iter().map(|t| (t.clone(), p)).collect();
        let timeout = self.config.transaction_timeout.max(Duration::from_secs(60));
        let committed = state::committed(&self.offsets, &inputs, &self.config.kafka.group_id, timeout)?;
        if self.stop_at_end {
            for (topic, p) in &inputs {
                let end = self
                    .offsets
                    .fetch_watermarks(topic, *p, Duration::from_secs(30))
                    .map_err(WorkerError::kafka("reading end offsets"))?;
                ends.push(end);
            }
        }
        if let Some(kept) = &request.kept {
            if committed.seq == Some(kept.seq) && committed.offsets == kept.positions {
                return Ok(Outcome::Kept);
            }
            tracing::info!(
                group = p,
                committed_seq = ?committed.seq,
                committed_offsets = ?committed.offsets,
                kept_seq = kept.seq,
                kept_positions = ?kept.positions,
                "partition group changed since this worker gave it up: rebuilding it"
            );
        }
        if cancelled() {
            return Err(WorkerError::Cancelled);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        let topic = &self.config.kafka.state_topic;
        let part = match committed.seq {
            Some(_) => state::read_partition(&self.restore, topic, p, deadline, &cancelled)?,
            None => state::PartitionState::default(),
        };
        let (state_records, state_bytes) = (part.records, part.bytes);
        let (state, ckpt_seq) = state::rebuild(
            &mut state::KafkaInputs::new(&self.restore, &inputs),
            part,
            &inputs,
            names,
            &committed,
            &self.processing,
            routing,
            deadline,
            &cancelled,
        )?;
        Ok(Outcome::Rebuilt { state: Box::new(state), ckpt_seq, state_records, state_bytes })
    }
}

//! One partition group's pipeline and the deterministic steps that drive it.
//!
//! A task owns partition `p` of every input topic. Everything that changes its state goes
//! through [`TaskState::on_message`], [`TaskState::set_idle`] or a config change, and every
//! such call is appended to the task's *order log* ([`Step`]). Replaying the same steps
//! over the same input messages rebuilds exactly the same state, which is how a restarted
//! or newly assigned worker recovers (see [`super::state`]).

use std::time::Instant;

use crate::model::{DeadLetterReason, Millis, SourcePos};
use crate::pipeline::{Pipeline, Processing, Sink};

pub use super::state::Step;

pub use crate::routing::Partitioner;

/// Where a group's messages come from, and how inputs are partitioned: events whose
/// `user_id` maps to another partition are dead-lettered as `misrouted` (SPEC 8.6).
#[derive(Clone, Copy, Debug)]
pub struct Routing {
    pub partition: i32,
    pub partitioner: Partitioner,
    /// Partition count of the inputs.
    pub partitions: i32,
}

/// The state of one partition group.
pub struct TaskState {
    pub pipeline: Pipeline,
    /// Next offset to read per input (`None`: nothing read yet).
    pub positions: Vec<Option<i64>>,
    /// Sequence number of the last order-log entry applied.
    pub seq: u64,
}

impl TaskState {
    /// An empty state over `inputs` inputs.
    pub fn new(processing: Processing, inputs: usize) -> TaskState {
        TaskState { pipeline: Pipeline::new(processing, inputs), positions: vec![None; inputs], seq: 0 }
    }

    /// Handles one input message at `offset` of input `input` (topic `topic`, partition
    /// `partition`). `now_ms` is the wall clock used for the future-timestamp check (logged,
    /// so a rebuild decides the same).
    #[allow(clippy::too_many_arguments)]
    pub fn on_message<S: Sink + ?Sized>(
        &mut self,
        input: usize,
        topic: &str,
        routing: Routing,
        offset: i64,
        payload: &[u8],
        now_ms: Millis,
        tag: u64,
        out: &mut S,
    ) {
        let partition = routing.partition;
        let source = || SourcePos::Kafka { topic: topic.to_string(), partition, offset };
        let decoded = self.pipeline.decode(payload);
        if let Ok(event) = &decoded {
            let n = routing.partitions;
            let expected = routing.partitioner.partition(event.user_id().as_bytes(), n);
            if expected != partition {
                let error = format!(
                    "user_id {:?} maps to partition {expected} of {n} (kafka.partitioner), the event is on partition \
                     {partition}: re-key the topic by user_id",
                    event.user_id()
                );
                self.pipeline.reject(DeadLetterReason::Misrouted, error, source(), payload, out);
                self.positions[input] = Some(offset + 1);
                return;
            }
        }
        self.pipeline.on_decoded(input, decoded.as_ref(), payload, source, Some(now_ms), tag, out);
        self.positions[input] = Some(offset + 1);
    }
}

/// A partition group: its state and the steps since the last commit.
pub struct Task {
    pub routing: Routing,
    pub state: TaskState,
    /// Steps taken since the last commit (written to the order log at commit).
    pub log: Vec<Step>,
    /// The last log entry covered by a checkpoint on the state topic (`None`: this group
    /// has no checkpoint yet, so the next commit writes one).
    pub ckpt_seq: Option<u64>,
    pub last_checkpoint: Instant,
}

impl Task {
    /// A task from a restored or fresh state.
    pub fn new(routing: Routing, state: TaskState, ckpt_seq: Option<u64>) -> Task {
        Task { routing, state, log: Vec::new(), ckpt_seq, last_checkpoint: Instant::now() }
    }

    /// Handles one input message (see [`TaskState::on_message`]) and logs it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_message(
        &mut self,
        input: usize,
        topic: &str,
        offset: i64,
        payload: &[u8],
        now_ms: Millis,
        tag: u64,
        out: &mut impl Sink,
    ) {
        self.state.on_message(input, topic, self.routing, offset, payload, now_ms, tag, out);
        let input = input as u16;
        match self.log.last_mut() {
            Some(Step::Advance { input: last, until, now_ms: at }) if *last == input && *at == now_ms => {
                *until = offset + 1
            }
            _ => self.log.push(Step::Advance { input, until: offset + 1, now_ms }),
        }
    }

    /// Marks input `input` idle: it stops holding the watermark back until it shows an event.
    pub fn set_idle(&mut self, input: usize, out: &mut impl Sink) {
        self.state.pipeline.set_idle(input, true, out);
        self.log.push(Step::Idle { input: input as u16 });
    }

    /// Marks every idle input active again, logged. A restored group's inputs may all be
    /// idle (a `--stop-at-end` run stops once they are); left idle, the first input to be
    /// read would move the watermark alone, and purchases could become final before the
    /// touches on the other inputs are read. Each goes idle again after `idle_timeout`
    /// with nothing to read.
    pub fn wake_inputs(&mut self) {
        for i in 0..self.state.positions.len() {
            if self.state.pipeline.watermarks().is_idle(i) {
                self.state.pipeline.set_idle(i, false, &mut crate::pipeline::Discard);
                self.log.push(Step::Active { input: i as u16 });
            }
        }
    }

    /// Switches to the config this worker runs with, logged so a rebuild switches at the
    /// same point (SPEC 8.1).
    pub fn set_processing(&mut self, processing: Processing) {
        self.state.pipeline.set_processing(processing.clone());
        self.log.push(Step::Config(Box::new(processing)));
    }
}

//! One partition group's engine and the deterministic steps that drive it.
//!
//! A task owns partition `p` of every input topic. Everything that changes its state goes
//! through [`Task::on_message`] or [`Task::set_idle`], and every such call is appended to
//! the task's *order log* ([`Step`]). Replaying the same steps over the same input
//! messages rebuilds exactly the same state, which is how a restarted or newly assigned
//! worker recovers (see [`super::state`]).

use serde::{Deserialize, Serialize};

use crate::engine::watermark::Watermarks;
use crate::engine::Engine;
use crate::model::{Millis, SourcePos};
use crate::pipeline::{Pipeline, Processing, Sink};

pub use crate::pipeline::Discard;

/// One entry of the order log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Input `input`'s messages up to offset `until` (exclusive) were processed, with the
    /// wall clock at `now_ms` for the future-timestamp check.
    Advance { input: u8, until: i64, now_ms: Millis },
    /// Input `input` went idle (no message for `idle_timeout`).
    Idle { input: u8 },
}

/// The state of one partition group.
pub struct TaskState {
    pub pipeline: Pipeline,
    /// Next offset to read per input (`None`: nothing read yet).
    pub positions: Vec<Option<i64>>,
    /// Sequence number of the last order-log entry applied.
    pub seq: u64,
}

/// What a snapshot holds of a [`TaskState`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub globals: Vec<u8>,
    pub shoppers: Vec<Vec<u8>>,
    pub watermarks: Watermarks,
    pub positions: Vec<Option<i64>>,
    pub seq: u64,
}

impl TaskState {
    /// An empty state over `inputs` inputs.
    pub fn new(processing: Processing, inputs: usize) -> TaskState {
        TaskState { pipeline: Pipeline::new(processing, inputs), positions: vec![None; inputs], seq: 0 }
    }

    /// The snapshot form.
    pub fn to_snapshot(&self) -> SnapshotState {
        let snap = self.pipeline.engine().snapshot();
        SnapshotState {
            globals: snap.globals,
            shoppers: snap.shoppers.into_iter().map(|(_, b)| b).collect(),
            watermarks: self.pipeline.watermarks().clone(),
            positions: self.positions.clone(),
            seq: self.seq,
        }
    }

    /// A state from its snapshot form, running under `processing`.
    pub fn from_snapshot(processing: Processing, snap: SnapshotState) -> Result<TaskState, String> {
        let engine = Engine::restore(processing.engine.clone(), &snap.globals, snap.shoppers.iter().map(Vec::as_slice))
            .map_err(|e| e.to_string())?;
        Ok(TaskState {
            pipeline: Pipeline::from_parts(processing, engine, snap.watermarks),
            positions: snap.positions,
            seq: snap.seq,
        })
    }
}

/// Settings a task needs besides the pipeline's.
#[derive(Clone, Debug)]
pub struct TaskSettings;

/// A partition group: pipeline, positions and the steps since the last commit.
pub struct Task {
    pub partition: i32,
    pub state: TaskState,
    /// Steps taken since the last commit (written to the order log at commit).
    pub log: Vec<Step>,
    /// State-topic offset of the latest committed snapshot.
    pub snapshot_offset: Option<i64>,
    /// Order-log sequence number at the latest snapshot.
    pub snapshot_seq: u64,
}

impl Task {
    /// A task from a restored or fresh state.
    pub fn new(partition: i32, state: TaskState, _settings: TaskSettings) -> Task {
        Task { partition, snapshot_seq: state.seq, state, log: Vec::new(), snapshot_offset: None }
    }

    /// Handles one input message at `offset` of input `input`. `now_ms` is the wall
    /// clock used for the future-timestamp check (logged, so a replay decides the same).
    #[allow(clippy::too_many_arguments)]
    pub fn on_message(
        &mut self,
        input: u8,
        topic: &str,
        offset: i64,
        payload: &[u8],
        now_ms: Millis,
        tag: u64,
        out: &mut impl Sink,
    ) {
        let i = usize::from(input);
        let partition = self.partition;
        let source = || SourcePos::Kafka { topic: topic.to_string(), partition, offset };
        self.state.pipeline.on_message(i, payload, source, Some(now_ms), tag, out);
        self.state.positions[i] = Some(offset + 1);
        match self.log.last_mut() {
            Some(Step::Advance { input: last, until, now_ms: at }) if *last == input && *at == now_ms => {
                *until = offset + 1
            }
            _ => self.log.push(Step::Advance { input, until: offset + 1, now_ms }),
        }
    }

    /// Marks input `input` idle: it stops holding the watermark back until it shows an event.
    pub fn set_idle(&mut self, input: u8, out: &mut impl Sink) {
        self.state.pipeline.set_idle(usize::from(input), true, out);
        self.log.push(Step::Idle { input });
    }
}

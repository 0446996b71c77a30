//! One partition group's engine and the deterministic steps that drive it.
//!
//! A task owns partition `p` of every input topic. Everything that changes its state goes
//! through [`Task::on_message`] or [`Task::set_idle`], and every such call is appended to
//! the task's *order log* ([`Step`]). Replaying the same steps over the same input
//! messages rebuilds exactly the same state, which is how a restarted or newly assigned
//! worker recovers (see [`super::state`]).

use serde::{Deserialize, Serialize};

use crate::codec::Decoder;
use crate::engine::watermark::Watermarks;
use crate::engine::{Engine, Outcome, Output};
use crate::model::{DeadLetter, DeadLetterReason, Millis, Record, SourcePos};

/// One entry of the order log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Input `input`'s messages up to offset `until` (exclusive) were processed, with the
    /// wall clock at `now_ms` for the future-timestamp check.
    Advance { input: u8, until: i64, now_ms: Millis },
    /// Input `input` went idle (no message for `idle_timeout`).
    Idle { input: u8 },
}

/// The state of one partition group that a snapshot captures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskState {
    pub engine: Engine,
    pub watermarks: Watermarks,
    /// Next offset to read per input (`None`: nothing read yet).
    pub positions: Vec<Option<i64>>,
    /// Sequence number of the last order-log entry applied.
    pub seq: u64,
}

/// Where a task's records and dead letters go.
pub trait TaskOutput {
    /// A commission or reversal record; `tag` is the wall-clock nanos of the message.
    fn record(&mut self, record: Record, tag: u64);
    /// A dead letter.
    fn dead_letter(&mut self, dead_letter: DeadLetter);
}

/// Discards everything: used while replaying the order log.
pub struct Discard;

impl TaskOutput for Discard {
    fn record(&mut self, _: Record, _: u64) {}
    fn dead_letter(&mut self, _: DeadLetter) {}
}

struct Adapter<'a, O: TaskOutput>(&'a mut O);

impl<O: TaskOutput> Output for Adapter<'_, O> {
    fn record(&mut self, record: Record, tag: u64) {
        self.0.record(record, tag);
    }
}

/// Settings a task needs besides the engine's.
#[derive(Clone, Debug)]
pub struct TaskSettings {
    pub max_future_skew: Millis,
}

/// A partition group: engine, watermarks, positions and the steps since the last commit.
pub struct Task {
    pub partition: i32,
    pub state: TaskState,
    /// Steps taken since the last commit (written to the order log at commit).
    pub log: Vec<Step>,
    /// State-topic offset of the latest committed snapshot.
    pub snapshot_offset: Option<i64>,
    /// Order-log sequence number at the latest snapshot.
    pub snapshot_seq: u64,
    settings: TaskSettings,
}

impl Task {
    /// A task from a restored or fresh state.
    pub fn new(partition: i32, state: TaskState, settings: TaskSettings) -> Task {
        Task { partition, snapshot_seq: state.seq, state, log: Vec::new(), snapshot_offset: None, settings }
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
        decoder: &mut Decoder,
        out: &mut impl TaskOutput,
    ) {
        let i = usize::from(input);
        let s = &mut self.state;
        s.engine.stats_mut().events_in += 1;
        let source = || SourcePos::Kafka { topic: topic.to_string(), partition: self.partition, offset };
        match decoder.decode(payload) {
            Err(e) => {
                s.engine.stats_mut().dead_letter(e.reason);
                out.dead_letter(DeadLetter::new(e.reason, e.message, source(), payload));
            }
            Ok(event) if event.ts() > now_ms.saturating_add(self.settings.max_future_skew) => {
                let reason = DeadLetterReason::FutureTimestamp;
                s.engine.stats_mut().dead_letter(reason);
                let error =
                    format!("event time {} is more than max_future_skew ahead of the clock {now_ms}", event.ts());
                out.dead_letter(DeadLetter::new(reason, error, source(), payload));
            }
            Ok(event) => {
                let ts = event.ts();
                if s.engine.process(event, tag, &mut Adapter(out)) == Outcome::TooLate {
                    let error = format!(
                        "event time {ts} is behind the watermark {} by more than allowed",
                        s.engine.watermark()
                    );
                    out.dead_letter(DeadLetter::new(DeadLetterReason::TooLate, error, source(), payload));
                }
                s.watermarks.observe(i, ts);
            }
        }
        if let Some(w) = s.watermarks.current() {
            s.engine.advance_watermark(w, &mut Adapter(out));
        }
        s.positions[i] = Some(offset + 1);
        match self.log.last_mut() {
            Some(Step::Advance { input: last, until, now_ms: at }) if *last == input && *at == now_ms => {
                *until = offset + 1
            }
            _ => self.log.push(Step::Advance { input, until: offset + 1, now_ms }),
        }
    }

    /// Marks input `input` idle: it stops holding the watermark back until it shows an event.
    pub fn set_idle(&mut self, input: u8, out: &mut impl TaskOutput) {
        let s = &mut self.state;
        s.watermarks.set_idle(usize::from(input), true);
        if let Some(w) = s.watermarks.current() {
            s.engine.advance_watermark(w, &mut Adapter(out));
        }
        self.log.push(Step::Idle { input });
    }
}

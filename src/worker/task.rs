//! One partition group's pipeline and the deterministic steps that drive it.
//!
//! A task owns partition `p` of every input topic. Everything that changes its state goes
//! through [`TaskState::on_message`], [`TaskState::set_idle`] or a config change, and every
//! such call is appended to the task's *order log* ([`Step`]). Replaying the same steps
//! over the same input messages rebuilds exactly the same state, which is how a restarted
//! or newly assigned worker recovers (see [`super::state`]).

use std::time::Instant;

use super::forward::Forwarded;
use crate::codec::DecodeError;
use crate::model::{DeadLetterReason, Event, Millis, SourcePos};
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
    /// With `kafka.repartition`: how many source partitions feed the internal topic (the
    /// group keeps one watermark input per source partition); 0 without.
    pub sources: u32,
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
    /// An empty state over `inputs` inputs, with one watermark input per input, or with
    /// `routing.sources` of them when repartitioning.
    pub fn new(processing: Processing, inputs: usize, routing: Routing) -> TaskState {
        let watermarks = if routing.sources > 0 { routing.sources as usize } else { inputs };
        TaskState { pipeline: Pipeline::new(processing, watermarks), positions: vec![None; inputs], seq: 0 }
    }

    /// Handles one input message at `offset` of input `input` (topic `topic`, partition
    /// `partition`). `now_ms` is the wall clock used for the future-timestamp check (logged,
    /// so a rebuild decides the same). `fwd`: the re-key stage's header, when the input is
    /// the internal topic (`routing.sources > 0`). `decoded`: the payload decoded already
    /// (on another thread, with this pipeline's limits), or `None` to decode it here.
    #[allow(clippy::too_many_arguments)]
    pub fn on_message<S: Sink + ?Sized>(
        &mut self,
        input: usize,
        topic: &str,
        routing: Routing,
        offset: i64,
        payload: &[u8],
        fwd: Option<&Forwarded>,
        decoded: Option<Result<Event, DecodeError>>,
        now_ms: Millis,
        tag: u64,
        out: &mut S,
    ) {
        let partition = routing.partition;
        let mut watermark_input = input;
        let mut origin = (topic, partition, offset);
        if routing.sources > 0 {
            match fwd {
                Some(Forwarded::Mark { source, max_ts, idle }) if *source < routing.sources => {
                    self.pipeline.mark(*source as usize, *max_ts, *idle, out);
                    self.positions[input] = Some(offset + 1);
                    return;
                }
                Some(Forwarded::Event { source, topic, partition, offset }) if *source < routing.sources => {
                    watermark_input = *source as usize;
                    origin = (topic.as_str(), *partition, *offset);
                }
                _ => {
                    // Only the re-key stage writes here; anything else is kept, not joined.
                    let error = format!(
                        "message on the internal topic without a valid source header (one of {} source partitions)",
                        routing.sources
                    );
                    let source = SourcePos::Kafka { topic: topic.to_string(), partition, offset };
                    self.pipeline.reject(DeadLetterReason::InvalidEvent, error, source, payload, out);
                    self.positions[input] = Some(offset + 1);
                    return;
                }
            }
        }
        let (source_topic, source_partition, source_offset) = origin;
        let source =
            || SourcePos::Kafka { topic: source_topic.to_string(), partition: source_partition, offset: source_offset };
        let decoded = decoded.unwrap_or_else(|| self.pipeline.decode(payload));
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
        self.pipeline.on_decoded(watermark_input, decoded.as_ref(), payload, source, Some(now_ms), tag, out);
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
        fwd: Option<&Forwarded>,
        decoded: Option<Result<Event, DecodeError>>,
        now_ms: Millis,
        tag: u64,
        out: &mut impl Sink,
    ) {
        self.state.on_message(input, topic, self.routing, offset, payload, fwd, decoded, now_ms, tag, out);
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
        for i in 0..self.state.pipeline.watermarks().len() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::MemorySink;

    const T0: Millis = 1_764_400_000_000;

    fn internal(sources: u32) -> Routing {
        Routing { partition: 0, partitioner: Partitioner::Murmur2, partitions: 1, sources }
    }

    fn click(user: &str, ts: Millis) -> String {
        format!(
            r#"{{"type":"click","event_id":"k-{user}-{ts}","ts":{ts},"user_id":"{user}","creator_id":"c-1","product_id":"p-1","surface":"link"}}"#
        )
    }

    fn purchase(user: &str, ts: Millis) -> String {
        format!(
            r#"{{"type":"purchase","event_id":"o-{user}","ts":{ts},"user_id":"{user}","order_id":"ord-{user}","currency":"USD","items":[{{"product_id":"p-1","quantity":1,"unit_price":1000}}]}}"#
        )
    }

    fn event(source: u32, topic: &str, offset: i64) -> Forwarded {
        Forwarded::Event { source, topic: topic.into(), partition: 2, offset }
    }

    #[test]
    fn repartitioned_groups_keep_one_watermark_per_source_and_markers_move_it() {
        let routing = internal(3);
        let mut state = TaskState::new(Processing::default(), 1, routing);
        let mut out = MemorySink::default();
        assert_eq!(state.pipeline.watermarks().len(), 3, "one watermark input per source partition");
        let mut offset = 0;
        let mut feed = |state: &mut TaskState, payload: &str, fwd: Forwarded, out: &mut MemorySink| {
            state.on_message(
                0,
                "g-repartition",
                routing,
                offset,
                payload.as_bytes(),
                Some(&fwd),
                None,
                T0 + 86_400_000,
                0,
                out,
            );
            offset += 1;
        };
        feed(&mut state, &click("u", T0), event(0, "clicks", 7), &mut out);
        feed(&mut state, &purchase("u", T0 + 1000), event(1, "purchases", 3), &mut out);
        // Source 2 has shown nothing: the purchase waits.
        assert!(out.records.is_empty());
        // Its marker (read elsewhere, placed in another partition) moves it, and sources
        // 0 and 1 report progress through markers too; nothing here counts as an event.
        let events_in = state.pipeline.engine().stats().events_in;
        let mark = |source, ts| Forwarded::Mark { source, max_ts: Some(ts), idle: false };
        feed(&mut state, "", mark(2, T0 + 60_000), &mut out);
        assert!(out.records.is_empty(), "sources 0 and 1 still hold the watermark at {T0}+1s - 5s");
        feed(&mut state, "", mark(0, T0 + 60_000), &mut out);
        feed(&mut state, "", mark(1, T0 + 60_000), &mut out);
        assert_eq!(out.records.len(), 1, "final once every source passed it");
        assert_eq!(state.pipeline.engine().stats().events_in, events_in, "markers are not events");
        assert_eq!(state.positions[0], Some(offset), "markers advance the position");
    }

    #[test]
    fn a_last_source_reporting_progress_and_idleness_at_once_still_moves_the_watermark() {
        let routing = internal(2);
        let mut state = TaskState::new(Processing::default(), 1, routing);
        let mut out = MemorySink::default();
        let now = T0 + 86_400_000;
        let (c, p) = (click("u", T0 - 1000), purchase("u", T0));
        state.on_message(0, "g", routing, 0, c.as_bytes(), Some(&event(0, "c", 0)), None, now, 0, &mut out);
        state.on_message(0, "g", routing, 1, p.as_bytes(), Some(&event(0, "p", 0)), None, now, 0, &mut out);
        let idle = |source| Forwarded::Mark { source, max_ts: Some(T0 + 60_000), idle: true };
        state.on_message(0, "g", routing, 2, b"", Some(&idle(1)), None, now, 0, &mut out);
        assert!(out.records.is_empty(), "source 0 holds it");
        state.on_message(0, "g", routing, 3, b"", Some(&idle(0)), None, now, 0, &mut out);
        assert_eq!(out.records.len(), 1, "the last source's progress counts before it goes idle");
        assert!(state.pipeline.watermarks().is_idle(0) && state.pipeline.watermarks().is_idle(1));
    }

    #[test]
    fn forwarded_dead_letters_name_the_input_and_headerless_messages_are_kept_not_joined() {
        let routing = internal(2);
        let mut state = TaskState::new(Processing::default(), 1, routing);
        let mut out = MemorySink::default();
        state.on_message(
            0,
            "g-repartition",
            routing,
            0,
            b"{not json",
            Some(&event(1, "purchases", 41)),
            None,
            T0,
            0,
            &mut out,
        );
        let c = click("u", T0);
        state.on_message(0, "g-repartition", routing, 1, c.as_bytes(), None, None, T0, 0, &mut out);
        let bad_source = Forwarded::Event { source: 9, topic: "x".into(), partition: 0, offset: 0 };
        state.on_message(0, "g-repartition", routing, 2, c.as_bytes(), Some(&bad_source), None, T0, 0, &mut out);
        let reasons: Vec<_> = out.dead_letters.iter().map(|d| (d.reason, d.source.clone())).collect();
        assert_eq!(reasons.len(), 3);
        assert_eq!(reasons[0].0, DeadLetterReason::InvalidJson);
        assert_eq!(reasons[0].1, SourcePos::Kafka { topic: "purchases".into(), partition: 2, offset: 41 });
        assert_eq!(reasons[1].0, DeadLetterReason::InvalidEvent);
        assert_eq!(reasons[2].0, DeadLetterReason::InvalidEvent);
        assert_eq!(state.pipeline.engine().live_touches(), 0, "never joined");
        assert_eq!(state.positions[0], Some(3));
    }
}

//! The state topic: each partition group's incremental checkpoints and order log, on a
//! compacted topic (partition `p` belongs to group `p`), written in the same Kafka
//! transactions as the records and the input offsets.
//!
//! Keys (latest value wins, as compaction keeps it):
//!
//! | key | value |
//! |---|---|
//! | `g` | [`GroupRec`]: the last checkpoint's positions, watermarks, engine globals and the config in force |
//! | `s` + user id | one shopper's state ([`crate::engine::checkpoint`]); a tombstone once it is gone |
//! | `l` + seq (8 bytes, big endian) | [`LogRec`]: the steps of one commit; a tombstone once a checkpoint covers it |
//!
//! A checkpoint writes only the shoppers changed since the previous one (its cost
//! follows what changed, not the state's size), the `g` record, and tombstones for the
//! log entries it covers, so the partition holds about one record per live shopper plus
//! the log since the last checkpoint. Every committed input offset carries
//! `attrib=2;seq=<n>`: the last log entry committed with it.
//!
//! Restoring a group reads its partition once (`read_committed`), rebuilds the engine
//! from the latest records, then replays the log entries after the checkpoint over the
//! input messages they name, up to the committed offsets. The engine is deterministic
//! and the wall-clock decisions (idleness, future timestamps) and config changes are in
//! the log, so the result is exactly the state at the last commit (SPEC 8.1).
//!
//! Only reading is Kafka's: each record read goes through [`PartitionState::apply`], and
//! [`rebuild`] reads the inputs through an [`InputReader`], so tests and benchmarks
//! run the same recovery with the inputs in memory ([`MemoryInputs`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::forward::Forwarded;
use super::task::{Routing, TaskState};
use super::WorkerError;
use crate::engine::watermark::Watermarks;
use crate::engine::{checkpoint, Engine};
use crate::model::Millis;
use crate::pipeline::{Discard, Pipeline, Processing};

/// Layout of the state topic and of the commit metadata. Layout 1 (attrib 0.1: CBOR
/// snapshots plus an order log keyed by group, metadata `snap=..;seq=..`) is refused with
/// [`WorkerError::OldState`], never misread.
pub const LAYOUT: u8 = 2;

/// Key of the group record.
pub const GROUP_KEY: &[u8] = b"g";

/// One step of the order log: everything that changed a group's state, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Input `input`'s messages up to offset `until` (exclusive) were processed, with the
    /// wall clock at `now_ms` for the future-timestamp check.
    Advance { input: u16, until: i64, now_ms: Millis },
    /// Input `input` went idle (no message for `idle_timeout` and nothing to read).
    Idle { input: u16 },
    /// The config in force changed (a restart with another config, SPEC 8.1).
    Config(Box<Processing>),
    /// Input `input` counts as active again (a worker that takes over a group does not
    /// inherit its predecessor's idleness: see `Task::wake_inputs`).
    Active { input: u16 },
}

/// The steps of one commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRec {
    pub steps: Vec<Step>,
}

/// A checkpoint's group-wide part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRec {
    /// The last log entry the checkpoint includes.
    pub ckpt_seq: u64,
    /// The inputs, by name (a different list is a different state: refused).
    pub inputs: Vec<String>,
    pub positions: Vec<Option<i64>>,
    pub watermarks: Watermarks,
    /// The engine's global record.
    pub globals: Vec<u8>,
    /// The config in force at the checkpoint.
    pub processing: Processing,
}

/// One record for the state topic: key and value (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateItem {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

fn versioned(value: &impl Serialize) -> Vec<u8> {
    let mut out = vec![LAYOUT];
    out.extend(postcard::to_stdvec(value).expect("state records serialise"));
    out
}

fn unversioned<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, String> {
    match bytes.split_first() {
        Some((&LAYOUT, body)) => postcard::from_bytes(body).map_err(|e| format!("corrupt {what}: {e}")),
        Some((&v, _)) => Err(format!("{what} has layout {v}, this release reads layout {LAYOUT}")),
        None => Err(format!("empty {what}")),
    }
}

/// The key of log entry `seq`.
pub fn log_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The key of a shopper record.
pub fn shopper_key(user_id: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(user_id.as_bytes());
    k
}

impl StateItem {
    /// Log entry `seq`.
    pub fn log(seq: u64, steps: Vec<Step>) -> StateItem {
        StateItem { key: log_key(seq), value: Some(versioned(&LogRec { steps })) }
    }

    /// The group record of a checkpoint.
    pub fn group(rec: &GroupRec) -> StateItem {
        StateItem { key: GROUP_KEY.to_vec(), value: Some(versioned(rec)) }
    }
}

/// Everything a checkpoint of `state` writes: the changed shoppers, the removed ones,
/// the group record, and tombstones for the log entries `(covered_from, ckpt_seq]`.
pub fn checkpoint_items(state: &mut TaskState, inputs: &[String], covered_from: u64) -> Vec<StateItem> {
    let changes = state.pipeline.engine_mut().take_changes();
    let mut items = Vec::with_capacity(changes.upserts.len() + changes.removed.len() + 2);
    for (user, bytes) in changes.upserts {
        items.push(StateItem { key: shopper_key(&user), value: Some(bytes) });
    }
    for user in changes.removed {
        items.push(StateItem { key: shopper_key(&user), value: None });
    }
    for seq in covered_from + 1..=state.seq {
        items.push(StateItem { key: log_key(seq), value: None });
    }
    items.push(StateItem::group(&GroupRec {
        ckpt_seq: state.seq,
        inputs: inputs.to_vec(),
        positions: state.positions.clone(),
        watermarks: state.pipeline.watermarks().clone(),
        globals: changes.globals,
        processing: state.pipeline.processing().clone(),
    }));
    items
}

/// The commit metadata stored with every input offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMeta {
    /// This layout: the last log entry committed.
    V2 { seq: u64 },
    /// Layout 1 (attrib 0.1).
    V1,
}

impl CommitMeta {
    /// `attrib=2;seq=<n>`.
    pub fn encode(seq: u64) -> String {
        format!("attrib={LAYOUT};seq={seq}")
    }

    /// Parses the metadata; `None` when it is not attrib's.
    pub fn parse(s: &str) -> Option<CommitMeta> {
        let mut layout = None;
        let mut seq = None;
        let mut snap = false;
        for part in s.split(';') {
            match part.split_once('=') {
                Some(("attrib", v)) => layout = v.parse::<u8>().ok(),
                Some(("seq", v)) => seq = v.parse().ok(),
                Some(("snap", _)) => snap = true,
                _ => {}
            }
        }
        match (layout, seq) {
            (Some(LAYOUT), Some(seq)) => Some(CommitMeta::V2 { seq }),
            (None, Some(_)) if snap => Some(CommitMeta::V1),
            _ => None,
        }
    }
}

/// What the group's committed offsets say about one partition group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Committed offset per input (`None`: never committed).
    pub offsets: Vec<Option<i64>>,
    /// The last log entry committed (`None`: nothing committed by attrib yet).
    pub seq: Option<u64>,
}

/// Reads the committed offsets of group `p`'s inputs (`(topic, partition)` each).
///
/// An offset fetch answers `UNSTABLE_OFFSET_COMMIT` while a transaction that commits
/// offsets is still open (a dead peer's, until the coordinator aborts it): that is
/// retried until `timeout`, as any other retriable error.
pub fn committed(
    consumer: &BaseConsumer<impl ConsumerContext>,
    inputs: &[(String, i32)],
    group: &str,
    timeout: Duration,
) -> Result<Committed, WorkerError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in inputs {
        tpl.add_partition(t, *p);
    }
    let deadline = Instant::now() + timeout;
    let tpl = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(tpl) => break tpl,
            Err(e) if Instant::now() < deadline && !super::is_fatal(&e) => {
                tracing::debug!(error = %e, "reading committed offsets: retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(WorkerError::kafka("reading committed offsets")(e)),
        }
    };
    let mut offsets = Vec::with_capacity(inputs.len());
    let mut seq: Option<u64> = None;
    for (t, p) in inputs {
        let elem = tpl.find_partition(t, *p);
        let offset = elem.as_ref().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        if offset.is_some() {
            match elem.as_ref().and_then(|e| CommitMeta::parse(e.metadata())) {
                Some(CommitMeta::V2 { seq: s }) => seq = Some(seq.map_or(s, |old: u64| old.max(s))),
                Some(CommitMeta::V1) => {
                    return Err(WorkerError::OldState(format!(
                        "the offsets of consumer group {group:?} on {t}[{p}] were committed by an older attrib (state \
                         layout 1: whole snapshots and an order log); this release keeps state in layout {LAYOUT} and \
                         cannot read that state. Finish the old deployment's backlog with the old release, then start \
                         this one on a new kafka.group_id and kafka.state_topic (set kafka.group_id and the consumer \
                         group's offsets to where the old one stopped), or replay history into an empty group"
                    )))
                }
                None => {}
            }
        }
        offsets.push(offset);
    }
    Ok(Committed { offsets, seq })
}

/// The latest committed record of every key of one state partition.
#[derive(Default)]
pub struct PartitionState {
    pub group: Option<GroupRec>,
    pub shoppers: HashMap<Vec<u8>, Vec<u8>>,
    pub log: HashMap<u64, Vec<Step>>,
    /// Records read (compaction not yet done counts double).
    pub records: u64,
    pub bytes: u64,
}

impl PartitionState {
    /// Takes the next record of state partition `topic[p]` (`value` `None`: a
    /// tombstone), keeping the latest per key as compaction does.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>, topic: &str, p: i32) -> Result<(), WorkerError> {
        let restore_err = |m: String| WorkerError::Restore(format!("state partition {topic}[{p}]: {m}"));
        self.records += 1;
        self.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        match key.first() {
            Some(b'g') => {
                let v = value.ok_or_else(|| restore_err("a tombstone for the group record".into()))?;
                self.group = Some(unversioned(v, "group record").map_err(restore_err)?);
            }
            Some(b's') => match value {
                Some(v) => {
                    self.shoppers.insert(key.to_vec(), v.to_vec());
                }
                None => {
                    self.shoppers.remove(key);
                }
            },
            Some(b'l') if key.len() == 9 => {
                let seq = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
                match value {
                    Some(v) => {
                        let rec: LogRec = unversioned(v, "order-log entry").map_err(restore_err)?;
                        self.log.insert(seq, rec.steps);
                    }
                    None => {
                        self.log.remove(&seq);
                    }
                }
            }
            // Layout 1 keyed every record by its partition number ("0", "1", ...).
            Some(b'0'..=b'9') if key.iter().all(u8::is_ascii_digit) => {
                return Err(WorkerError::OldState(format!(
                    "state topic {topic} holds state written by an older attrib (layout 1); this release reads \
                     layout {LAYOUT}: use a new kafka.state_topic and kafka.group_id"
                )))
            }
            _ => return Err(restore_err(format!("unknown key {:?}", String::from_utf8_lossy(key)))),
        }
        Ok(())
    }
}

/// Reads state partition `p` from its beginning to its end (`read_committed`: the last
/// stable offset), keeping the latest record per key.
pub fn read_partition(
    consumer: &BaseConsumer<impl ConsumerContext>,
    topic: &str,
    p: i32,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<PartitionState, WorkerError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(WorkerError::kafka("seeking the state topic"))?;
    consumer.assign(&tpl).map_err(WorkerError::kafka("assigning the state topic"))?;
    let mut out = PartitionState::default();
    let restore_err = |m: String| WorkerError::Restore(format!("state partition {topic}[{p}]: {m}"));
    loop {
        if Instant::now() > deadline {
            return Err(restore_err("timed out reading".into()));
        }
        if cancelled() {
            return Err(WorkerError::Cancelled);
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else { continue };
        let msg = match msg {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(_)) => break,
            Err(e) if !super::is_fatal(&e) => {
                tracing::debug!(error = %e, "reading the state topic: retrying");
                continue;
            }
            Err(e) => return Err(WorkerError::kafka("reading the state topic")(e)),
        };
        out.apply(msg.key().unwrap_or_default(), msg.payload(), topic, p)?;
    }
    consumer.unassign().map_err(WorkerError::kafka("releasing the state topic"))?;
    Ok(out)
}

/// Where a rebuild reads the input messages that the order log names: the group's input
/// partitions in Kafka, or (in tests and benchmarks) messages held in memory.
/// One input message for a restore: input index, offset, payload, and the re-key stage's
/// header when the input is the internal topic.
pub type InputMessage = (usize, i64, Vec<u8>, Option<Forwarded>);

pub trait InputReader {
    /// Starts reading every input `i` at `from[i]` (`None`: its beginning).
    fn seek(&mut self, from: &[Option<i64>]) -> Result<(), WorkerError>;
    /// The next message of any input, in offset order per input: `(input, offset,
    /// payload)`; `None` when none is there yet.
    fn next(&mut self) -> Result<Option<InputMessage>, WorkerError>;
    /// Stops reading.
    fn release(&mut self) -> Result<(), WorkerError>;
}

/// Input messages held in memory (offset = index), for tests and benchmarks that rebuild
/// without a broker.
pub struct MemoryInputs {
    /// Every message of each input, by offset.
    pub messages: Vec<Vec<Vec<u8>>>,
    next: Vec<usize>,
    turn: usize,
}

impl MemoryInputs {
    /// Inputs holding `messages`.
    pub fn new(messages: Vec<Vec<Vec<u8>>>) -> MemoryInputs {
        MemoryInputs { next: vec![0; messages.len()], messages, turn: 0 }
    }
}

impl InputReader for MemoryInputs {
    fn seek(&mut self, from: &[Option<i64>]) -> Result<(), WorkerError> {
        self.next = from.iter().map(|f| f.map_or(0, |o| o as usize)).collect();
        Ok(())
    }

    fn next(&mut self) -> Result<Option<InputMessage>, WorkerError> {
        // Round robin, as a consumer interleaves partitions.
        for _ in 0..self.messages.len() {
            let i = self.turn;
            self.turn = (self.turn + 1) % self.messages.len();
            if let Some(m) = self.messages[i].get(self.next[i]) {
                self.next[i] += 1;
                return Ok(Some((i, self.next[i] as i64 - 1, m.clone(), None)));
            }
        }
        Ok(None)
    }

    fn release(&mut self) -> Result<(), WorkerError> {
        Ok(())
    }
}

/// A group's input partitions, read with the restore consumer.
pub struct KafkaInputs<'a, C: ConsumerContext> {
    consumer: &'a BaseConsumer<C>,
    inputs: &'a [(String, i32)],
    index: HashMap<(&'a str, i32), usize>,
}

impl<'a, C: ConsumerContext> KafkaInputs<'a, C> {
    pub fn new(consumer: &'a BaseConsumer<C>, inputs: &'a [(String, i32)]) -> KafkaInputs<'a, C> {
        let index = inputs.iter().enumerate().map(|(i, (t, p))| ((t.as_str(), *p), i)).collect();
        KafkaInputs { consumer, inputs, index }
    }
}

impl<C: ConsumerContext> InputReader for KafkaInputs<'_, C> {
    fn seek(&mut self, from: &[Option<i64>]) -> Result<(), WorkerError> {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), from) in self.inputs.iter().zip(from) {
            let from = from.map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(t, *p, from).map_err(WorkerError::kafka("seeking an input"))?;
        }
        self.consumer.assign(&tpl).map_err(WorkerError::kafka("assigning inputs for restore"))
    }

    fn next(&mut self) -> Result<Option<InputMessage>, WorkerError> {
        match self.consumer.poll(Duration::from_millis(100)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => Ok(None),
            Some(Err(e)) if !super::is_fatal(&e) => {
                tracing::debug!(error = %e, "restore read: retrying");
                Ok(None)
            }
            Some(Err(e)) => Err(WorkerError::kafka("reading inputs for restore")(e)),
            Some(Ok(msg)) => Ok(self.index.get(&(msg.topic(), msg.partition())).map(|&j| {
                let fwd = msg.headers().and_then(|h| Forwarded::from_headers(h.iter().map(|h| (h.key, h.value))));
                (j, msg.offset(), msg.payload().unwrap_or_default().to_vec(), fwd)
            })),
        }
    }

    fn release(&mut self) -> Result<(), WorkerError> {
        self.consumer.unassign().map_err(WorkerError::kafka("releasing inputs"))
    }
}

/// Rebuilds a group's state from what its state partition holds, then replays the log
/// entries after the checkpoint (up to `committed.seq`) over the inputs, read with
/// `reader` ([`KafkaInputs`] in the worker) from the checkpoint's positions to the
/// committed offsets. `current`: the config this worker runs with (used as is when the
/// group has no state yet).
#[allow(clippy::too_many_arguments)]
pub fn rebuild(
    reader: &mut impl InputReader,
    part: PartitionState,
    inputs: &[(String, i32)],
    names: &[String],
    committed: &Committed,
    current: &Processing,
    routing: Routing,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<(TaskState, Option<u64>), WorkerError> {
    let p = inputs.first().map_or(0, |i| i.1);
    let err = |m: String| WorkerError::Restore(format!("partition group {p}: {m}"));
    let Some(seq) = committed.seq else {
        // Nothing committed by attrib: start empty, reading from the committed offsets
        // (if another tool set them) or the beginning.
        let mut state = TaskState::new(current.clone(), inputs.len(), routing);
        state.pipeline.engine_mut().track_changes(true);
        state.positions = committed.offsets.clone();
        return Ok((state, None));
    };
    let g = part.group.ok_or_else(|| err(format!("offsets committed up to log entry {seq} but no checkpoint")))?;
    if g.inputs != names {
        return Err(WorkerError::Setup(format!(
            "partition group {p} was written for inputs {:?}, this worker reads {names:?} (kafka.input_topics \
             changed: use a new kafka.group_id and kafka.state_topic)",
            g.inputs
        )));
    }
    let engine = Engine::restore(g.processing.engine.clone(), &g.globals, part.shoppers.values().map(Vec::as_slice))
        .map_err(|e| match e {
            checkpoint::CheckpointError::Layout { found } => WorkerError::OldState(format!(
                "partition group {p}: a shopper record has layout {found}, this release reads {}",
                checkpoint::LAYOUT
            )),
            other => err(other.to_string()),
        })?;
    let mut engine = engine;
    // What the checkpoint holds is on the topic already: only later changes are written.
    engine.track_changes(true);
    let mut state = TaskState {
        pipeline: Pipeline::from_parts(g.processing.clone(), engine, g.watermarks),
        positions: g.positions,
        seq: g.ckpt_seq,
    };
    // Without transactions (at least once) a checkpoint or log entries may have been
    // written after the last offset commit (their records were delivered before them): the
    // state then continues from them, so it matches what was written.
    let mut seq = seq.max(g.ckpt_seq);
    while part.log.contains_key(&(seq + 1)) {
        seq += 1;
    }
    let mut steps = Vec::new();
    for s in g.ckpt_seq + 1..=seq {
        let entry = part.log.get(&s).ok_or_else(|| err(format!("order-log entry {s} of {seq} is missing")))?;
        steps.extend(entry.iter().cloned());
    }
    replay_steps(reader, &mut state, inputs, routing, steps, deadline, cancelled)?;
    state.seq = seq;
    for (i, (have, want)) in state.positions.iter().zip(&committed.offsets).enumerate() {
        if want.is_some() && have < want {
            return Err(err(format!(
                "{}[{}]: the rebuilt state ends at {have:?}, the committed offset is {want:?}",
                inputs[i].0, inputs[i].1
            )));
        }
    }
    Ok((state, Some(g.ckpt_seq)))
}

/// Re-runs logged steps over the input messages they name, writing nothing.
fn replay_steps(
    reader: &mut impl InputReader,
    state: &mut TaskState,
    inputs: &[(String, i32)],
    routing: Routing,
    steps: Vec<Step>,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), WorkerError> {
    if !steps.iter().any(|s| matches!(s, Step::Advance { .. })) {
        for step in steps {
            apply_control(state, step);
        }
        return Ok(());
    }
    reader.seek(&state.positions)?;
    type Buffered = std::collections::VecDeque<(i64, Vec<u8>, Option<Forwarded>)>;
    let mut buffered: Vec<Buffered> = vec![Default::default(); inputs.len()];
    for step in steps {
        let Step::Advance { input, until, now_ms } = step else {
            apply_control(state, step);
            continue;
        };
        let i = usize::from(input);
        loop {
            match buffered[i].front() {
                Some((offset, _, _)) if *offset < until => {
                    let (offset, payload, fwd) = buffered[i].pop_front().expect("front exists");
                    state.on_message(
                        i,
                        &inputs[i].0,
                        routing,
                        offset,
                        &payload,
                        fwd.as_ref(),
                        None,
                        now_ms,
                        0,
                        &mut Discard,
                    );
                    if offset + 1 >= until {
                        break;
                    }
                }
                Some(_) => break,
                None => {
                    if state.positions[i].is_some_and(|pos| pos >= until) {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(WorkerError::Restore(format!(
                            "timed out replaying {}[{}] up to {until}",
                            inputs[i].0, inputs[i].1
                        )));
                    }
                    if cancelled() {
                        return Err(WorkerError::Cancelled);
                    }
                    if let Some((j, offset, payload, fwd)) = reader.next()? {
                        buffered[j].push_back((offset, payload, fwd));
                    }
                }
            }
        }
        // Offsets may have gaps (transaction markers, compaction): the step ends there.
        state.positions[i] = Some(state.positions[i].map_or(until, |p| p.max(until)));
    }
    reader.release()?;
    Ok(())
}

/// Applies a step that reads no input.
fn apply_control(state: &mut TaskState, step: Step) {
    match step {
        Step::Idle { input } => state.pipeline.set_idle(usize::from(input), true, &mut Discard),
        Step::Config(p) => state.pipeline.set_processing(*p),
        Step::Active { input } => state.pipeline.set_idle(usize::from(input), false, &mut Discard),
        Step::Advance { .. } => unreachable!("handled by the caller"),
    }
}

/// Whether a Kafka error while reading is the end of a partition.
pub fn is_eof(e: &KafkaError) -> bool {
    matches!(e, KafkaError::PartitionEOF(_)) || e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_1_record_is_refused_as_old_state_not_misread() {
        // Layout 1 keyed records by partition number; values began with `S` or `L`.
        for value in [&b"L\0\0\0\0\0\0\0\x01"[..], &b"S\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x01"[..]] {
            let err = PartitionState::default().apply(b"3", Some(value), "t", 3).expect_err("refused");
            assert!(matches!(err, WorkerError::OldState(ref m) if m.contains("layout 1")), "{err}");
        }
        let err = PartitionState::default().apply(b"x1", Some(b"v"), "t", 3).expect_err("refused");
        assert!(matches!(err, WorkerError::Restore(ref m) if m.contains("unknown key")), "{err}");
    }

    #[test]
    fn commit_meta_round_trips_and_recognises_the_old_layout() {
        assert_eq!(CommitMeta::parse(&CommitMeta::encode(99)), Some(CommitMeta::V2 { seq: 99 }));
        assert_eq!(CommitMeta::parse("snap=12;seq=3"), Some(CommitMeta::V1));
        assert_eq!(CommitMeta::parse(""), None);
        assert_eq!(CommitMeta::parse("attrib=3;seq=1"), None);
    }

    #[test]
    fn records_round_trip_and_refuse_other_layouts() {
        let item =
            StateItem::log(7, vec![Step::Advance { input: 1, until: 42, now_ms: 1000 }, Step::Idle { input: 3 }]);
        assert_eq!(item.key, log_key(7));
        let rec: LogRec = unversioned(item.value.as_ref().unwrap(), "log").unwrap();
        assert_eq!(rec.steps.len(), 2);
        let mut old = item.value.unwrap();
        old[0] = 1;
        assert!(unversioned::<LogRec>(&old, "log").unwrap_err().contains("layout 1"));
    }

    #[test]
    fn a_checkpoint_tombstones_the_log_it_covers() {
        let routing =
            Routing { partition: 0, partitioner: crate::routing::Partitioner::Murmur2, partitions: 1, sources: 0 };
        let mut state = TaskState::new(Processing::default(), 2, routing);
        state.pipeline.engine_mut().track_changes(true);
        state.seq = 5;
        let items = checkpoint_items(&mut state, &["a".into(), "b".into()], 3);
        let keys: Vec<&[u8]> = items.iter().map(|i| i.key.as_slice()).collect();
        assert_eq!(keys, [log_key(4).as_slice(), log_key(5).as_slice(), GROUP_KEY]);
        let g: GroupRec = unversioned(items[2].value.as_ref().unwrap(), "g").unwrap();
        assert_eq!((g.ckpt_seq, g.inputs.len()), (5, 2));
    }
}

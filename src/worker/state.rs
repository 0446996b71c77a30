//! The state topic: snapshots and the order log of each partition group.
//!
//! Partition `p` of the state topic belongs to partition group `p`. It holds, written in
//! the same transactions as the records and the input offsets:
//!
//! - **order-log entries** (`L`): at every commit, the [`Step`]s taken since the last
//!   one, numbered by a sequence number;
//! - **snapshots** (`S`): now and then, the whole [`TaskState`], CBOR-encoded and cut
//!   into chunks.
//!
//! Each committed input offset carries metadata `snap=<offset>;seq=<n>`: where the latest
//! snapshot starts in the state partition and the last log entry committed. Restoring a
//! group reads that snapshot, then replays the logged steps over the input messages from
//! the snapshot's positions to the committed offsets. The engine is deterministic, so the
//! result is exactly the state at the last commit: nothing committed is redone, nothing
//! uncommitted is lost.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::task::{Discard, SnapshotState, Step, Task, TaskSettings, TaskState};
use super::WorkerError;
use crate::pipeline::Processing;

/// Largest snapshot chunk (well under the broker's default 1 MB message limit).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// A message of the state topic.
#[derive(Debug, PartialEq, Eq)]
pub enum StateMsg {
    /// Chunk `index` of `count` of the snapshot taken at log sequence `seq`.
    Chunk { seq: u64, index: u32, count: u32, data: Vec<u8> },
    /// Order-log entry `seq`.
    Log { seq: u64, steps: Vec<Step> },
}

impl StateMsg {
    /// Wire form: a tag byte, the sequence number, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            StateMsg::Chunk { seq, index, count, data } => {
                out.push(b'S');
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(data);
            }
            StateMsg::Log { seq, steps } => {
                out.push(b'L');
                out.extend_from_slice(&seq.to_be_bytes());
                ciborium::into_writer(steps, &mut out).expect("steps serialise into a Vec");
            }
        }
        out
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8]) -> Result<StateMsg, String> {
        let seq = |b: &[u8]| -> Result<u64, String> {
            b.get(1..9).map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes"))).ok_or("short state message".into())
        };
        match bytes.first() {
            Some(b'S') => {
                let u32_at = |at: usize| -> Result<u32, String> {
                    bytes
                        .get(at..at + 4)
                        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
                        .ok_or("short snapshot chunk".into())
                };
                Ok(StateMsg::Chunk {
                    seq: seq(bytes)?,
                    index: u32_at(9)?,
                    count: u32_at(13)?,
                    data: bytes[17..].to_vec(),
                })
            }
            Some(b'L') => {
                let steps = ciborium::from_reader(&bytes[9..]).map_err(|e| format!("bad order-log entry: {e}"))?;
                Ok(StateMsg::Log { seq: seq(bytes)?, steps })
            }
            _ => Err("unknown state message".into()),
        }
    }
}

/// Cuts a task state into snapshot chunks.
pub fn snapshot_chunks(state: &TaskState) -> Vec<StateMsg> {
    let mut data = Vec::new();
    ciborium::into_writer(&state.to_snapshot(), &mut data).expect("state serialises into a Vec");
    let count = data.len().div_ceil(CHUNK_BYTES).max(1) as u32;
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(CHUNK_BYTES).collect() };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| StateMsg::Chunk { seq: state.seq, index: i as u32, count, data: c.to_vec() })
        .collect()
}

/// The commit metadata stored with every input offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitMeta {
    pub snapshot_offset: i64,
    pub seq: u64,
}

impl CommitMeta {
    /// `snap=<offset>;seq=<n>`.
    pub fn encode(&self) -> String {
        format!("snap={};seq={}", self.snapshot_offset, self.seq)
    }

    /// Parses [`CommitMeta::encode`]'s form.
    pub fn parse(s: &str) -> Option<CommitMeta> {
        let mut snap = None;
        let mut seq = None;
        for part in s.split(';') {
            match part.split_once('=') {
                Some(("snap", v)) => snap = v.parse().ok(),
                Some(("seq", v)) => seq = v.parse().ok(),
                _ => {}
            }
        }
        Some(CommitMeta { snapshot_offset: snap?, seq: seq? })
    }
}

/// What the group's committed offsets say.
pub struct Committed {
    /// Committed offset per input (`None`: never committed).
    pub offsets: Vec<Option<i64>>,
    /// The newest metadata among them.
    pub meta: Option<CommitMeta>,
}

/// Reads the committed offsets of partition `p` of every input topic.
pub fn committed(
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    inputs: &[String],
    p: i32,
    timeout: Duration,
) -> Result<Committed, WorkerError> {
    let mut tpl = TopicPartitionList::new();
    for t in inputs {
        tpl.add_partition(t, p);
    }
    let tpl = consumer.committed_offsets(tpl, timeout).map_err(WorkerError::kafka("reading committed offsets"))?;
    let mut offsets = Vec::with_capacity(inputs.len());
    let mut meta: Option<CommitMeta> = None;
    for t in inputs {
        let elem = tpl.find_partition(t, p);
        let offset = elem.as_ref().and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        if offset.is_some() {
            if let Some(m) = elem.as_ref().and_then(|e| CommitMeta::parse(e.metadata())) {
                if meta.is_none_or(|old| m.seq > old.seq) {
                    meta = Some(m);
                }
            }
        }
        offsets.push(offset);
    }
    Ok(Committed { offsets, meta })
}

/// Everything a restore needs.
pub struct RestoreContext<'a, C: rdkafka::consumer::ConsumerContext> {
    /// A group-less consumer (read_committed) used only for restoring.
    pub consumer: &'a BaseConsumer<C>,
    pub inputs: &'a [String],
    pub state_topic: &'a str,
    pub processing: &'a Processing,
    pub settings: TaskSettings,
    pub timeout: Duration,
}

impl<C: rdkafka::consumer::ConsumerContext> RestoreContext<'_, C> {
    /// Rebuilds partition group `p` to the state of its last commit.
    pub fn restore(&mut self, p: i32, committed: &Committed) -> Result<Task, WorkerError> {
        let Some(meta) = committed.meta else {
            // Never committed: start empty from the earliest offsets.
            let state = TaskState::new(self.processing.clone(), self.inputs.len());
            return Ok(Task::new(p, state, self.settings.clone()));
        };
        let (state, steps) = self.read_state(p, meta)?;
        let snapshot_seq = state.seq;
        let mut task = Task::new(p, state, self.settings.clone());
        task.snapshot_offset = Some(meta.snapshot_offset);
        task.snapshot_seq = snapshot_seq;
        self.replay_steps(&mut task, steps)?;
        task.state.seq = meta.seq;
        task.log.clear();
        for (i, (have, want)) in task.state.positions.iter().zip(&committed.offsets).enumerate() {
            if want.is_some() && have != want {
                return Err(WorkerError::Restore(format!(
                    "partition {p} of {}: replay ended at {have:?}, committed offset is {want:?}",
                    self.inputs[i]
                )));
            }
        }
        Ok(task)
    }

    /// The snapshot at `meta.snapshot_offset` and the log entries after it up to `meta.seq`.
    fn read_state(&mut self, p: i32, meta: CommitMeta) -> Result<(TaskState, Vec<Step>), WorkerError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.state_topic, p, Offset::Offset(meta.snapshot_offset))
            .map_err(WorkerError::kafka("seeking the state topic"))?;
        self.consumer.assign(&tpl).map_err(WorkerError::kafka("assigning the state topic"))?;
        let mut data = Vec::new();
        let mut snapshot: Option<TaskState> = None;
        let mut steps = Vec::new();
        let deadline = Instant::now() + self.timeout;
        let mut seq = None;
        loop {
            if let Some(s) = &snapshot {
                if seq.unwrap_or(s.seq) >= meta.seq {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(WorkerError::Restore(format!("timed out reading state partition {p}")));
            }
            let Some(msg) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            let msg = msg.map_err(WorkerError::kafka("reading the state topic"))?;
            let decoded = StateMsg::decode(msg.payload().unwrap_or_default()).map_err(WorkerError::Restore)?;
            match decoded {
                StateMsg::Chunk { index, count, data: d, .. } if snapshot.is_none() => {
                    if index as usize * CHUNK_BYTES != data.len() {
                        return Err(WorkerError::Restore(format!(
                            "snapshot chunk {index} out of order in partition {p}"
                        )));
                    }
                    data.extend_from_slice(&d);
                    if index + 1 == count {
                        let snap: SnapshotState = ciborium::from_reader(&data[..])
                            .map_err(|e| WorkerError::Restore(format!("bad snapshot in partition {p}: {e}")))?;
                        let state = TaskState::from_snapshot(self.processing.clone(), snap)
                            .map_err(|e| WorkerError::Restore(format!("snapshot in partition {p}: {e}")))?;
                        snapshot = Some(state);
                    }
                }
                StateMsg::Chunk { .. } => {} // a later snapshot; its log entries follow anyway
                StateMsg::Log { seq: s, steps: st } => {
                    if let Some(snap) = &snapshot {
                        if s > snap.seq && s <= meta.seq {
                            steps.extend(st);
                            seq = Some(s);
                        }
                    }
                }
            }
        }
        self.consumer.unassign().map_err(WorkerError::kafka("releasing the state topic"))?;
        Ok((snapshot.expect("loop ends with a snapshot"), steps))
    }

    /// Re-runs the logged steps over the input messages they name, discarding output.
    fn replay_steps(&mut self, task: &mut Task, steps: Vec<Step>) -> Result<(), WorkerError> {
        if steps.is_empty() {
            return Ok(());
        }
        let p = task.partition;
        let mut tpl = TopicPartitionList::new();
        for (i, t) in self.inputs.iter().enumerate() {
            let from = task.state.positions[i].map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(t, p, from).map_err(WorkerError::kafka("seeking an input"))?;
        }
        self.consumer.assign(&tpl).map_err(WorkerError::kafka("assigning inputs for restore"))?;
        let mut buffered: Vec<VecDeque<(i64, Vec<u8>)>> = vec![VecDeque::new(); self.inputs.len()];
        let deadline = Instant::now() + self.timeout;
        for step in steps {
            match step {
                Step::Idle { input } => task.set_idle(input, &mut Discard),
                Step::Advance { input, until, now_ms } => {
                    let i = usize::from(input);
                    loop {
                        match buffered[i].front() {
                            Some((offset, _)) if *offset < until => {
                                let (offset, payload) = buffered[i].pop_front().expect("front exists");
                                let topic = self.inputs[i].clone();
                                task.on_message(input, &topic, offset, &payload, now_ms, 0, &mut Discard);
                                if offset + 1 == until {
                                    break;
                                }
                            }
                            Some(_) => break,
                            None => {
                                if Instant::now() > deadline {
                                    return Err(WorkerError::Restore(format!("timed out replaying partition {p}")));
                                }
                                if let Some(msg) = self.consumer.poll(Duration::from_millis(100)) {
                                    let msg = msg.map_err(WorkerError::kafka("reading inputs for restore"))?;
                                    if let Some(j) = self.inputs.iter().position(|t| t == msg.topic()) {
                                        buffered[j]
                                            .push_back((msg.offset(), msg.payload().unwrap_or_default().to_vec()));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        task.log.clear();
        self.consumer.unassign().map_err(WorkerError::kafka("releasing inputs"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_messages_round_trip() {
        let log = StateMsg::Log {
            seq: 7,
            steps: vec![Step::Advance { input: 1, until: 42, now_ms: 1000 }, Step::Idle { input: 3 }],
        };
        assert_eq!(StateMsg::decode(&log.encode()).unwrap(), log);
        let chunk = StateMsg::Chunk { seq: 3, index: 1, count: 2, data: vec![1, 2, 3] };
        assert_eq!(StateMsg::decode(&chunk.encode()).unwrap(), chunk);
        assert!(StateMsg::decode(b"X").is_err());
    }

    #[test]
    fn commit_meta_round_trips() {
        let m = CommitMeta { snapshot_offset: 12, seq: 99 };
        assert_eq!(CommitMeta::parse(&m.encode()), Some(m));
        assert_eq!(CommitMeta::parse(""), None);
    }

    #[test]
    fn snapshots_round_trip_through_chunks() {
        let mut state = TaskState::new(Processing::default(), 4);
        state.positions = vec![Some(3), None, Some(0), Some(10)];
        state.seq = 5;
        let chunks = snapshot_chunks(&state);
        let mut data = Vec::new();
        for c in chunks {
            let StateMsg::Chunk { data: d, .. } = StateMsg::decode(&c.encode()).unwrap() else { panic!() };
            data.extend(d);
        }
        let back: SnapshotState = ciborium::from_reader(&data[..]).unwrap();
        let back = TaskState::from_snapshot(Processing::default(), back).unwrap();
        assert_eq!(back.positions, state.positions);
        assert_eq!(back.seq, 5);
        assert_eq!(back.pipeline.watermarks(), state.pipeline.watermarks());
    }
}

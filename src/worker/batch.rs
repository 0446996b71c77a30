//! Partition groups processed in parallel, one batch at a time.
//!
//! The poll thread takes messages from the consumer into one inbox per partition group
//! ([`Core::take`]): a copy of the payload, nothing decoded. [`Core::run_batch`] decodes
//! them on `kafka.threads` threads (a contiguous share each: a fetch hands over long
//! runs of one partition, so a batch often holds one or two groups), then hands each
//! group with messages to a job: the job decides, message by message, whether its input
//! runs ahead of the group's watermark (then the message is held, see [`super::flow`])
//! or goes to the group's task, and releases held messages the watermark has caught up
//! with. Jobs run on `kafka.threads` threads at once; a group's engine is only ever
//! touched by one of them, so its state needs no lock. What a job
//! writes is encoded there and buffered ([`Buffered`]); the poll thread sends it, group
//! by group in order, once every job is done.
//!
//! A batch is a barrier: the commit state machine ([`super::txn`]), alignment, idleness,
//! rebalances and restores only ever see the state between two batches, as they saw it
//! between two messages when the poll thread processed everything itself. A rebalance
//! runs the batch taken so far before it revokes anything. So what is committed, and
//! every record, is what one thread would have made; only the interleaving of different
//! groups' records on the output topics differs, as it does between runs anyway.

use std::time::Instant;

use rdkafka::message::{BorrowedMessage, Message};

use super::forward::Forwarded;
use super::held::{Held, Queue};
use super::output::Buffered;
use super::task::Task;
use super::{Clock, Core, Map, WorkerError};
use crate::codec::{DecodeError, DecodeLimits, Decoder};
use crate::model::{Event, Millis};

/// A batch with fewer messages than this runs on the poll thread alone: starting a
/// thread costs tens of microseconds, a message about one.
const PARALLEL_FROM: usize = 256;

/// What an incoming message is besides its payload.
pub(super) struct Incoming {
    input: u8,
    offset: i64,
    fwd: Option<Forwarded>,
    /// The payload decoded, once the batch's decoding phase has run.
    decoded: Option<Result<Event, DecodeError>>,
    /// Receive stamp (ns since the core's epoch) and wall-clock second, as read by the
    /// poll thread when it took the message.
    received: u64,
    second_ms: i64,
}

/// Messages taken from the consumer and not processed yet, per partition group.
#[derive(Default)]
pub(super) struct Batch {
    inboxes: Map<i32, Queue<Incoming>>,
    messages: usize,
    /// One decoder per thread, kept between batches (with the limits they were made
    /// with).
    decoders: Vec<Decoder>,
    limits: Option<DecodeLimits>,
    /// Threads that decode and run jobs (`kafka.threads`), the poll thread included.
    threads: usize,
    /// Output buffers of earlier jobs, emptied, for the next ones.
    spare: Vec<Buffered>,
}

impl Batch {
    /// An empty batch processed on `threads` threads.
    pub(super) fn new(threads: usize) -> Batch {
        Batch { threads: threads.max(1), ..Batch::default() }
    }

    /// Decodes every message of `inboxes` on the batch's threads, each a contiguous
    /// share of them. Decoding is pure and needs no group state; it was half of the work
    /// per event.
    fn decode(&mut self, inboxes: &mut Map<i32, Queue<Incoming>>, limits: DecodeLimits) {
        let threads = self.threads;
        if self.limits != Some(limits) || self.decoders.len() != threads {
            self.decoders = (0..threads).map(|_| Decoder::new(limits)).collect();
            self.limits = Some(limits);
        }
        let mut messages: Vec<(&mut Incoming, &[u8])> = inboxes
            .values_mut()
            .flat_map(Queue::iter_mut)
            // Watermark markers carry no event.
            .filter(|(m, _)| !matches!(m.fwd, Some(Forwarded::Mark { .. })))
            .collect();
        let share = messages.len().div_ceil(threads).max(1);
        let mut decoders = self.decoders.iter_mut();
        let mut chunks = messages.chunks_mut(share);
        let own = chunks.next().zip(decoders.next());
        let decode = |(chunk, decoder): (&mut [(&mut Incoming, &[u8])], &mut Decoder)| {
            for (m, payload) in chunk {
                m.decoded = Some(decoder.decode(payload));
            }
        };
        std::thread::scope(|s| {
            for work in chunks.zip(decoders) {
                s.spawn(move || decode(work));
            }
            if let Some(work) = own {
                decode(work);
            }
        });
    }

    /// Messages in the batch.
    pub(super) fn len(&self) -> usize {
        self.messages
    }

    /// Forgets every message (an abort: the consumer goes back to the committed offsets).
    pub(super) fn clear(&mut self) {
        self.inboxes.clear();
        self.messages = 0;
    }
}

/// Whether input `input` of a group runs more than `read_ahead` past the group's
/// watermark. With `kafka.repartition` (`sources > 0`) never: the group's one input is
/// the internal topic (nothing to align it with here); the re-key stage aligns the
/// sources, and its markers carry their event time.
fn runs_ahead(task: &Task, input: usize, sources: u32, read_ahead: Millis) -> bool {
    if sources > 0 {
        return false;
    }
    let w = task.state.pipeline.watermarks();
    w.current().is_some_and(|w0| w.max_ts(input) > w0.saturating_add(read_ahead))
}

/// What the jobs of one batch share, read only.
struct Shared<'a> {
    inputs: &'a [String],
    /// The limits the batch was decoded with.
    limits: DecodeLimits,
    sources: u32,
    read_ahead: Millis,
    /// The clock when the batch started: held messages released now are received now.
    clock: Clock,
}

/// One partition group's part of a batch: its task, and what the poll thread gets back.
struct Job<'a> {
    task: &'a mut Task,
    work: Work,
}

/// A job's messages and what it leaves for the poll thread.
struct Work {
    p: i32,
    inbox: Queue<Incoming>,
    /// The group's held messages, one queue per input (out of [`Core::held`] meanwhile).
    held: Vec<Queue>,
    out: Buffered,
    /// Messages handed to the task, those of them that are events (markers are not),
    /// and their bytes.
    handed: u64,
    handled: u64,
    bytes: u64,
    /// Per input: a message arrived or was released (for idleness).
    seen: Vec<bool>,
}

impl Job<'_> {
    fn run(&mut self, shared: &Shared<'_>) {
        let Job { task, work: Work { inbox, held, out, handed, handled, bytes, seen, .. } } = self;
        // Decoded with other limits than this group's (cannot happen: every group runs
        // with the worker's config once restored): decoded again by the group.
        let predecoded = task.state.pipeline.processing().limits == shared.limits;
        let mut hand = |task: &mut Task,
                        i: usize,
                        offset: i64,
                        payload: &[u8],
                        fwd: Option<&Forwarded>,
                        decoded: Option<Result<Event, DecodeError>>,
                        (received, second_ms): (u64, i64)| {
            let decoded = decoded.filter(|_| predecoded);
            out.received = received;
            task.on_message(i, &shared.inputs[i], offset, payload, fwd, decoded, second_ms, received, out);
            *handed += 1;
            if !matches!(fwd, Some(Forwarded::Mark { .. })) {
                *handled += 1; // a watermark marker is not an event
            }
            *bytes += payload.len() as u64;
        };
        while let Some((m, range)) = inbox.pop() {
            let i = usize::from(m.input);
            if task.state.positions[i].is_some_and(|pos| m.offset < pos) {
                continue; // already in the state (a re-delivery after a seek)
            }
            seen[i] = true;
            let payload = inbox.payload(range);
            if !held[i].is_empty() || runs_ahead(task, i, shared.sources, shared.read_ahead) {
                held[i].push(Held { offset: m.offset, fwd: m.fwd, decoded: m.decoded }, payload);
                continue;
            }
            hand(task, i, m.offset, payload, m.fwd.as_ref(), m.decoded, (m.received, m.second_ms));
        }
        // Held messages whose input no longer runs ahead, in order, while that lets
        // another input move.
        let now = (shared.clock.stamp, shared.clock.second_ms);
        loop {
            let mut moved = false;
            for (i, queue) in held.iter_mut().enumerate() {
                while !queue.is_empty() && !runs_ahead(task, i, shared.sources, shared.read_ahead) {
                    let Some((Held { offset, fwd, decoded }, range)) = queue.pop() else { break };
                    hand(task, i, offset, queue.payload(range), fwd.as_ref(), decoded, now);
                    seen[i] = true;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }
}

/// Runs `jobs` on up to `threads` threads: the largest first, each to the thread with
/// the least work so far.
fn run_all(jobs: &mut [Job<'_>], shared: &Shared<'_>, threads: usize) {
    let total: usize = jobs.iter().map(|j| j.work.inbox.len()).sum();
    let threads = threads.min(jobs.len());
    if threads < 2 || total < PARALLEL_FROM {
        jobs.iter_mut().for_each(|j| j.run(shared));
        return;
    }
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(jobs[j].work.inbox.len()));
    let mut load = vec![0usize; threads];
    let mut side = vec![0usize; jobs.len()];
    for j in order {
        let t = (0..threads).min_by_key(|&t| load[t]).expect("at least one thread");
        load[t] += jobs[j].work.inbox.len().max(1);
        side[j] = t;
    }
    let mut parts: Vec<Vec<&mut Job<'_>>> = (0..threads).map(|_| Vec::new()).collect();
    for (j, job) in jobs.iter_mut().enumerate() {
        parts[side[j]].push(job);
    }
    let mut parts = parts.into_iter();
    let own = parts.next().expect("at least one thread");
    std::thread::scope(|s| {
        for part in parts {
            s.spawn(move || part.into_iter().for_each(|j| j.run(shared)));
        }
        own.into_iter().for_each(|j| j.run(shared));
    });
}

impl Core {
    /// A message from the consumer: into its group's inbox for the next batch, or held if
    /// its group is being restored or is on the checkpoint thread.
    pub(super) fn take(&mut self, msg: &BorrowedMessage<'_>) {
        let topic = msg.topic();
        let Some(input) = self.inputs.iter().position(|t| t == topic) else { return };
        let p = msg.partition();
        let payload = msg.payload().unwrap_or_default();
        let fwd = self.forwarded(msg);
        match self.tasks.get(&p) {
            Some(task) if task.state.positions[input].is_some_and(|pos| msg.offset() < pos) => {
                // Already in the state (a re-delivery after a seek).
            }
            Some(_) => {
                let Clock { stamp: received, second_ms, .. } = self.clock;
                let incoming =
                    Incoming { input: input as u8, offset: msg.offset(), fwd, decoded: None, received, second_ms };
                self.batch.inboxes.entry(p).or_default().push(incoming, payload);
                self.batch.messages += 1;
            }
            None => self.hold_for_group(p, input as u8, Held { offset: msg.offset(), fwd, decoded: None }, payload),
        }
    }

    /// Holds a message of group `p`, which is not in [`Core::tasks`]: on the checkpoint
    /// thread (held until it is back), or fetched before its group's partitions were
    /// paused for the restore (held, in order, until the group is in).
    fn hold_for_group(&mut self, p: i32, input: u8, held: Held, payload: &[u8]) {
        if !self.away.contains(&p) {
            self.unrestored.insert(p);
        }
        self.held.entry((p, input)).or_default().push(held, payload);
        self.last_seen.insert((p, input), self.clock.at);
    }

    /// Processes the messages taken since the last batch, and releases held messages
    /// whose input no longer runs ahead of its group's watermark: the groups in parallel,
    /// then their output sent in group order.
    pub(super) fn run_batch(&mut self) -> Result<(), WorkerError> {
        let n = self.inputs.len();
        let holds = |held: &Map<(i32, u8), Queue>, p: i32| {
            (0..n).any(|i| held.get(&(p, i as u8)).is_some_and(|q| !q.is_empty()))
        };
        if self.batch.messages == 0 && !self.tasks.keys().any(|&p| holds(&self.held, p)) {
            return Ok(());
        }
        let mut inboxes = std::mem::take(&mut self.batch.inboxes);
        let limits = self.processing.limits;
        if self.batch.messages >= PARALLEL_FROM {
            self.batch.decode(&mut inboxes, limits);
        }
        self.batch.messages = 0;
        let done: Vec<Work> = {
            let Core { tasks, held, inputs, sources, read_ahead_now, clock, .. } = self;
            let shared = Shared { inputs, limits, sources: *sources, read_ahead: *read_ahead_now, clock: *clock };
            let spare = &mut self.batch.spare;
            let mut jobs: Vec<Job<'_>> = tasks
                .iter_mut()
                .filter_map(|(&p, task)| {
                    if inboxes.get(&p).is_none_or(Queue::is_empty) && !holds(held, p) {
                        return None;
                    }
                    // The queue's buffers are reused by the next batch: allocated afresh
                    // each time, they were a fifth of the poll thread in page faults.
                    let inbox = inboxes.get_mut(&p).map(std::mem::take).unwrap_or_default();
                    let held = (0..n).map(|i| held.remove(&(p, i as u8)).unwrap_or_default()).collect();
                    let out = spare.pop().unwrap_or_default();
                    let work = Work { p, inbox, held, out, handed: 0, handled: 0, bytes: 0, seen: vec![false; n] };
                    Some(Job { task, work })
                })
                .collect();
            jobs.sort_by_key(|j| j.work.p);
            run_all(&mut jobs, &shared, self.batch.threads);
            jobs.into_iter().map(|j| j.work).collect()
        };
        // Groups that left `tasks` since their messages were taken (none do today: a
        // batch runs before anything removes a group): held for them.
        for (&p, inbox) in &mut inboxes {
            while let Some((m, range)) = inbox.pop() {
                let held = Held { offset: m.offset, fwd: m.fwd, decoded: m.decoded };
                self.hold_for_group(p, m.input, held, inbox.payload(range));
            }
        }
        // Output goes to the open transaction, or to the next one while a commit is in
        // progress; nothing that changes either happens during a batch.
        if done.iter().any(|w| w.handed > 0) {
            self.begin_work()?;
        }
        let at = self.clock.at;
        for Work { p, mut inbox, held, mut out, handled, bytes, seen, .. } in done {
            inbox.trim();
            inboxes.insert(p, inbox);
            for (i, mut queue) in held.into_iter().enumerate() {
                queue.trim();
                self.held.insert((p, i as u8), queue);
            }
            for (i, _) in seen.iter().enumerate().filter(|(_, s)| **s) {
                self.last_seen.insert((p, i as u8), at);
            }
            if handled > 0 {
                self.first_message.get_or_insert_with(Instant::now);
            }
            self.handled += handled;
            self.bytes_in += bytes;
            if !out.is_empty() {
                self.send_buffered(&out);
            }
            out.clear();
            self.batch.spare.push(out);
        }
        self.batch.inboxes = inboxes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(input: u8, offset: i64, fwd: Option<Forwarded>) -> Incoming {
        Incoming { input, offset, fwd, decoded: None, received: 0, second_ms: 0 }
    }

    #[test]
    fn a_batch_decodes_every_event_as_one_decoder_would_and_leaves_markers_undecoded() {
        let limits = DecodeLimits::default();
        let lines: Vec<String> = (0..1_000)
            .map(|n| match n % 4 {
                0 => format!(r#"{{"type":"click","event_id":"c{n}","user_id":"u{}","creator_id":"k","content_id":"v","ts":"2026-11-29T10:00:00Z"}}"#, n % 7),
                1 => format!(r#"{{"type":"purchase","event_id":"p{n}","user_id":"u{}","order_id":"o{n}","currency":"USD","ts":"2026-11-29T10:00:01Z","items":[{{"sku":"s","qty":1,"unit_price_cents":1000}}]}}"#, n % 7),
                2 => format!("{{not json {n}"),
                _ => format!(r#"{{"type":"click","event_id":"c{n}"}}"#),
            })
            .collect();
        let mut inboxes: Map<i32, Queue<Incoming>> = Map::default();
        for (n, line) in lines.iter().enumerate() {
            inboxes.entry((n % 3) as i32).or_default().push(incoming((n % 2) as u8, n as i64, None), line.as_bytes());
        }
        let mark = Forwarded::Mark { source: 0, max_ts: Some(5), idle: false };
        inboxes.entry(0).or_default().push(incoming(0, 9_999, Some(mark)), b"");
        let mut batch = Batch::new(2);
        batch.decode(&mut inboxes, limits);
        let mut reference = Decoder::new(limits);
        let mut seen = 0;
        for queue in inboxes.values_mut() {
            for (m, payload) in queue.iter_mut() {
                if m.offset == 9_999 {
                    assert!(m.decoded.is_none(), "a marker is not decoded");
                    continue;
                }
                assert_eq!(payload, lines[m.offset as usize].as_bytes(), "payload kept with its message");
                assert_eq!(m.decoded.take(), Some(reference.decode(payload)), "line {}", m.offset);
                seen += 1;
            }
        }
        assert_eq!(seen, lines.len());
        // Both results occur, so the comparison above covers events and dead letters.
        assert!(lines.iter().any(|l| reference.decode(l.as_bytes()).is_ok()));
        assert!(lines.iter().any(|l| reference.decode(l.as_bytes()).is_err()));
    }
}

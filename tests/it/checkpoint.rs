//! Restored from a checkpoint: a pipeline whose engine is snapshotted midway (whole, or
//! as incremental changes applied to a compacted key → record map, as the worker's state
//! topic holds them) and restored must write exactly what an uninterrupted one writes
//! (Arroyo-style golden).

use std::collections::{BTreeMap, HashSet};

use attrib::engine::Engine;
use attrib::gen::{generate, GenOptions};
use attrib::model::{DeadLetter, Record, RecordKind, RecordView, SourcePos};
use attrib::pipeline::{Pipeline, Processing, Sink};

/// A sink that keeps everything (shared by the tests of this binary).
#[derive(Default)]
pub struct Collect(pub Vec<Record>, pub Vec<DeadLetter>);

impl Sink for Collect {
    fn record(&mut self, record: &RecordView<'_>, _: u64) {
        self.0.push(record.to_record());
    }
    fn dead_letter(&mut self, d: DeadLetter) {
        self.1.push(d);
    }
}

/// A fresh pipeline with `inputs` inputs and the default config.
pub fn pipeline(inputs: usize) -> Pipeline {
    Pipeline::new(Processing::default(), inputs)
}

/// A compacted changelog: the latest record per key, and the latest globals.
#[derive(Default)]
struct Changelog {
    globals: Vec<u8>,
    shoppers: BTreeMap<String, Vec<u8>>,
}

impl Changelog {
    fn apply(&mut self, engine: &mut Engine) {
        let c = engine.take_changes();
        self.globals = c.globals;
        for (k, v) in c.upserts {
            self.shoppers.insert(k.to_string(), v);
        }
        for k in c.removed {
            self.shoppers.remove(k.as_str());
        }
    }
}

fn restore(p: &Pipeline, globals: &[u8], shoppers: Vec<&[u8]>) -> Pipeline {
    let processing = p.processing().clone();
    let engine = Engine::restore(processing.engine.clone(), globals, shoppers).expect("restores");
    Pipeline::from_parts(processing, engine, p.watermarks().clone())
}

fn workload() -> Vec<(usize, Vec<u8>)> {
    workload_of(30_000)
}

/// `events` generated lines, each with its input (one of 4).
fn workload_of(events: u64) -> Vec<(usize, Vec<u8>)> {
    let opts = GenOptions {
        events,
        seed: 9,
        duplicates: 0.02,
        invalid: 0.01,
        refunds: 0.3,
        events_per_sec: 2.0,
        ..GenOptions::default()
    };
    let mut lines = Vec::new();
    generate(&opts, |kind, line| {
        lines.push(((kind as usize) % 4, line.to_vec()));
        Ok(())
    })
    .unwrap();
    lines
}

fn run(p: &mut Pipeline, lines: &[(usize, Vec<u8>)], from: usize, to: usize, out: &mut Collect) {
    let now = 4_000_000_000_000; // far future: no future-timestamp dead letters
    for (i, (input, line)) in lines.iter().enumerate().take(to).skip(from) {
        let source = || SourcePos::Kafka { topic: "in".into(), partition: 0, offset: i as i64 };
        p.on_message(*input, line, source, Some(now), 0, out);
    }
}

#[test]
fn a_pipeline_restored_from_a_snapshot_continues_exactly() {
    let lines = workload();
    let mut straight = pipeline(4);
    let mut want = Collect::default();
    run(&mut straight, &lines, 0, lines.len(), &mut want);
    straight.finish(&mut want);

    for cut in [1, 7_777, 15_000, 29_999] {
        let mut first = pipeline(4);
        let mut got = Collect::default();
        run(&mut first, &lines, 0, cut, &mut got);
        let snap = first.engine().snapshot();
        let mut second = restore(&first, &snap.globals, snap.shoppers.iter().map(|(_, b)| b.as_slice()).collect());
        run(&mut second, &lines, cut, lines.len(), &mut got);
        second.finish(&mut got);
        assert_eq!(got.0.len(), want.0.len(), "records after a restore at {cut}");
        assert!(got.0 == want.0, "records differ after a restore at {cut}");
        assert_eq!(got.1, want.1, "dead letters after a restore at {cut}");
        assert_eq!(second.engine().stats(), straight.engine().stats());
    }
    assert!(want.0.len() > 1000);
}

#[test]
fn incremental_checkpoints_applied_to_a_compacted_log_restore_exactly() {
    incremental_restores_match(Processing::default());
}

/// A linear paid model and shadow models credit every touch in the window: a restore that
/// lost an old touch, or a shadow credit, shows here.
#[test]
fn incremental_restores_with_a_linear_model_and_shadow_models_match() {
    incremental_restores_match(linear_with_shadows());
}

/// A linear paid model with two shadow models.
fn linear_with_shadows() -> Processing {
    let mut p = Processing::default();
    p.engine.model = attrib::model::Model::Linear;
    p.engine.shadow_models = vec![attrib::model::Model::LastTouch, attrib::model::Model::TimeDecay];
    p
}

fn incremental_restores_match(processing: Processing) {
    let pipeline = |inputs: usize| Pipeline::new(processing.clone(), inputs);
    let lines = workload();
    let mut straight = pipeline(4);
    let mut want = Collect::default();
    run(&mut straight, &lines, 0, lines.len(), &mut want);
    straight.finish(&mut want);

    // Checkpoints every 997 messages; restore from the log at several of them.
    let mut p = pipeline(4);
    p.engine_mut().track_changes(true);
    let mut log = Changelog::default();
    let mut got = Collect::default();
    let mut at = 0;
    let mut restores = 0;
    while at < lines.len() {
        let next = (at + 997).min(lines.len());
        run(&mut p, &lines, at, next, &mut got);
        log.apply(p.engine_mut());
        at = next;
        if at % 5 == 0 || at == lines.len() || restores < 3 {
            let mut q = restore(&p, &log.globals, log.shoppers.values().map(Vec::as_slice).collect());
            q.engine_mut().track_changes(true);
            assert_eq!(q.engine().live_touches(), p.engine().live_touches(), "touches after a restore at {at}");
            assert_eq!(q.engine().pending(), p.engine().pending(), "pending after a restore at {at}");
            p = q;
            restores += 1;
        }
    }
    p.finish(&mut got);
    assert!(restores > 3);
    assert!(got.0 == want.0, "records differ after incremental restores");
    assert_eq!(got.1, want.1);
    assert_eq!(p.engine().stats(), straight.engine().stats());
}

/// Default processing with a lock period (SPEC 8.2).
fn with_locks(lock_period: i64) -> Processing {
    let mut p = Processing::default();
    p.engine.lock_period = Some(lock_period);
    p
}

#[test]
fn money_a_pipeline_with_locks_restored_from_a_snapshot_continues_exactly() {
    let lines = workload();
    let processing = with_locks(30 * 60_000);
    let mut straight = Pipeline::new(processing.clone(), 4);
    let mut want = Collect::default();
    run(&mut straight, &lines, 0, lines.len(), &mut want);
    straight.finish(&mut want);
    let locks = want.0.iter().filter(|r| r.kind == RecordKind::Lock).count();
    assert!(locks > 100, "the workload locks commissions ({locks})");
    assert!(straight.engine().stats().refund_after_lock > 0, "and has refunds after the lock");

    for cut in [1, 9_001, 20_000, 29_999] {
        let mut first = Pipeline::new(processing.clone(), 4);
        let mut got = Collect::default();
        run(&mut first, &lines, 0, cut, &mut got);
        let snap = first.engine().snapshot();
        let mut second = restore(&first, &snap.globals, snap.shoppers.iter().map(|(_, b)| b.as_slice()).collect());
        run(&mut second, &lines, cut, lines.len(), &mut got);
        second.finish(&mut got);
        assert!(got.0 == want.0, "records differ after a restore at {cut}");
        assert_eq!(second.engine().stats(), straight.engine().stats());
    }
}

/// SPEC 8.1 + 8.2: a lock time is fixed when the purchase becomes final; a later config
/// that keeps orders for less time than that (short refund window, no lateness) and has
/// no lock period must still write every lock due, also through a restore.
#[test]
fn money_orders_are_kept_until_their_lock_across_a_config_change() {
    let lines = workload();
    let lock_period = 2 * 3_600_000;
    let mut p = Pipeline::new(with_locks(lock_period), 4);
    let mut out = Collect::default();
    let half = lines.len() / 2;
    run(&mut p, &lines, 0, half, &mut out);
    let switch = out.0.len();
    let mut shorter = Processing::default();
    shorter.engine.refund_window = 10 * 60_000;
    shorter.engine.allowed_lateness = 0;
    shorter.engine.lock_period = None;
    let snap = p.engine().snapshot();
    let mut q = restore(&p, &snap.globals, snap.shoppers.iter().map(|(_, b)| b.as_slice()).collect());
    q.set_processing(shorter);
    run(&mut q, &lines, half, lines.len(), &mut out);
    q.finish(&mut out);
    let max_ts = (0..4).map(|i| q.watermarks().max_ts(i)).max().unwrap();
    let locked: HashSet<&str> = out.0[switch..]
        .iter()
        .filter(|r| r.kind == RecordKind::Lock)
        .filter_map(|r| r.original_commission_id.as_deref())
        .collect();
    let due: Vec<&Record> = out.0[..switch]
        .iter()
        .filter(|r| r.kind == RecordKind::Commission && r.purchase_ts + lock_period <= max_ts)
        .collect();
    assert!(due.len() > 100, "commissions to lock after the switch: {}", due.len());
    for c in &due {
        assert!(locked.contains(c.commission_id.as_str()), "no lock for {}", c.commission_id);
    }
    // Purchases final under the new config have no lock time.
    let after: HashSet<&str> =
        out.0[switch..].iter().filter(|r| r.kind == RecordKind::Commission).map(|r| r.commission_id.as_str()).collect();
    assert!(locked.iter().all(|id| !after.contains(id)));
}

/// The worker's recovery path without a broker: commits write what `Worker::commit`
/// writes to the state topic (order-log entries, incremental checkpoints) into an
/// in-memory topic, a crash loses everything since the last commit, and the group is
/// rebuilt by `worker::state` (`PartitionState::apply` per record, `rebuild` over the
/// inputs) and continues from the committed offsets. The records committed across every
/// crash, plus the last run's, must be exactly the records of a run without crashes.
#[cfg(feature = "kafka")]
mod recovery {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};

    use attrib::pipeline::Processing;
    use attrib::worker::state::{checkpoint_items, rebuild, Committed, MemoryInputs, PartitionState, StateItem};
    use attrib::worker::task::{Partitioner, Routing, Task};
    use proptest::prelude::*;

    use super::{linear_with_shadows, with_locks, workload_of, Collect};

    const INPUTS: usize = 4;
    /// Far ahead of every event: no future-timestamp dead letters.
    const FAR: i64 = 4_000_000_000_000;
    const ROUTING: Routing = Routing { partition: 0, partitioner: Partitioner::Murmur2, partitions: 1, sources: 0 };

    #[derive(Clone, Debug)]
    enum Act {
        /// The next line of the workload, read with the wall clock at `now_ms`.
        Message {
            now_ms: i64,
        },
        Idle(usize),
        Commit {
            checkpoint: bool,
        },
        /// Lose everything since the last commit and rebuild (the topic compacted or not).
        Crash {
            compact: bool,
        },
    }

    fn names() -> Vec<String> {
        (0..INPUTS).map(|i| format!("in{i}")).collect()
    }

    /// What `Worker::commit` writes for one group: the steps since the last commit as a
    /// log entry, then a checkpoint when one is due (always for the group's first).
    fn commit(task: &mut Task, checkpoint: bool, topic: &mut Vec<StateItem>) -> Committed {
        if !task.log.is_empty() {
            task.state.seq += 1;
            topic.push(StateItem::log(task.state.seq, std::mem::take(&mut task.log)));
        }
        let behind = task.ckpt_seq != Some(task.state.seq);
        if task.state.seq > 0 && behind && (checkpoint || task.ckpt_seq.is_none()) {
            topic.extend(checkpoint_items(&mut task.state, &names(), task.ckpt_seq.unwrap_or(0)));
            task.ckpt_seq = Some(task.state.seq);
        }
        Committed { offsets: task.state.positions.clone(), seq: (task.state.seq > 0).then_some(task.state.seq) }
    }

    /// Log compaction: the latest record per key, tombstoned keys gone.
    fn compact(topic: &mut Vec<StateItem>) {
        let last: HashMap<Vec<u8>, usize> = topic.iter().enumerate().map(|(i, it)| (it.key.clone(), i)).collect();
        let mut at = 0;
        topic.retain(|it| {
            let keep = last[&it.key] == at && it.value.is_some();
            at += 1;
            keep
        });
    }

    /// A group rebuilt as `Worker::restore_pending` does it (the state partition is read
    /// only once offsets were committed). Not woken: `Task::wake_inputs` is a change the
    /// worker makes after the rebuild (logged), not part of reproducing the commit.
    fn restore(topic: &[StateItem], committed: &Committed, messages: &[Vec<Vec<u8>>], current: &Processing) -> Task {
        let mut part = PartitionState::default();
        if committed.seq.is_some() {
            for item in topic {
                part.apply(&item.key, item.value.as_deref(), "state", 0).expect("state records read");
            }
        }
        let inputs: Vec<(String, i32)> = names().into_iter().map(|n| (n, 0)).collect();
        let (state, ckpt_seq) = rebuild(
            &mut MemoryInputs::new(messages.to_vec()),
            part,
            &inputs,
            &names(),
            committed,
            current,
            ROUTING,
            Instant::now() + Duration::from_secs(60),
            &|| false,
        )
        .expect("rebuilds");
        assert_eq!(state.positions, committed.offsets, "the rebuilt group continues from the committed offsets");
        Task::new(ROUTING, state, ckpt_seq)
    }

    fn append(to: &mut Collect, from: Collect) {
        to.0.extend(from.0);
        to.1.extend(from.1);
    }

    /// Runs `acts` over `lines`, crashing at every `Crash` (each once) and rebuilding from
    /// the in-memory state topic. Returns the output and how many crashes there were.
    fn run(acts: &[Act], lines: &[(usize, Vec<u8>)], processing: &Processing, crash: bool) -> (Collect, usize) {
        let mut messages: Vec<Vec<Vec<u8>>> = vec![Vec::new(); INPUTS];
        let mut at = Vec::with_capacity(lines.len());
        for (input, line) in lines {
            at.push((*input, messages[*input].len() as i64));
            messages[*input].push(line.clone());
        }
        let mut topic = Vec::new();
        let mut committed = Committed { offsets: vec![None; INPUTS], seq: None };
        let mut task = restore(&topic, &committed, &messages, processing);
        let (mut done, mut open) = (Collect::default(), Collect::default());
        // Where to go on from after a crash: the act after the last commit, and the line.
        let (mut resume, mut resume_line) = (0, 0);
        let mut fired = HashSet::new();
        let (mut i, mut line) = (0, 0);
        while i < acts.len() {
            match acts[i] {
                Act::Message { now_ms } => {
                    let (input, offset) = at[line];
                    let topic_name = format!("in{input}");
                    task.on_message(input, &topic_name, offset, &lines[line].1, None, None, now_ms, 0, &mut open);
                    line += 1;
                }
                Act::Idle(input) => task.set_idle(input, &mut open),
                Act::Commit { checkpoint } => {
                    committed = commit(&mut task, checkpoint, &mut topic);
                    append(&mut done, std::mem::take(&mut open));
                    (resume, resume_line) = (i + 1, line);
                }
                Act::Crash { compact: c } if crash && fired.insert(i) => {
                    open = Collect::default();
                    if c {
                        compact(&mut topic);
                    }
                    task = restore(&topic, &committed, &messages, processing);
                    (i, line) = (resume, resume_line);
                    continue;
                }
                Act::Crash { .. } => {}
            }
            i += 1;
        }
        task.state.pipeline.finish(&mut open);
        append(&mut done, open);
        (done, fired.len())
    }

    /// The acts for `lines` lines: chunks of messages, each followed by one other act.
    fn acts(chunks: &[(usize, bool, Act)], lines: usize) -> Vec<Act> {
        let mut acts = Vec::new();
        let mut left = lines;
        for (len, early, act) in chunks {
            let len = (*len).min(left);
            left -= len;
            // A wall clock behind the events: every event of the chunk is a
            // future-timestamp dead letter, decided once and logged.
            let now_ms = if *early { 0 } else { FAR };
            acts.extend(std::iter::repeat_n(Act::Message { now_ms }, len));
            acts.push(act.clone());
        }
        acts.extend(std::iter::repeat_n(Act::Message { now_ms: FAR }, left));
        acts
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            4 => Just(Act::Commit { checkpoint: false }),
            2 => Just(Act::Commit { checkpoint: true }),
            1 => (0..INPUTS).prop_map(Act::Idle),
            3 => any::<bool>().prop_map(|compact| Act::Crash { compact }),
        ]
    }

    fn processing(which: u8) -> Processing {
        match which {
            0 => Processing::default(),
            1 => with_locks(30 * 60_000),
            _ => linear_with_shadows(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Crashes at random points after random commits, restored through the worker's
        /// recovery functions, give the uninterrupted run's records and dead letters.
        #[test]
        fn restores_at_random_commit_points_give_the_uninterrupted_output(
            which in 0..3u8,
            chunks in prop::collection::vec((1..700usize, prop::bool::weighted(0.1), act()), 1..24),
        ) {
            let lines = workload_of(6_000);
            let acts = acts(&chunks, lines.len());
            let p = processing(which);
            let (want, _) = run(&acts, &lines, &p, false);
            let (got, crashes) = run(&acts, &lines, &p, true);
            prop_assert!(want.0.len() > 100);
            prop_assert_eq!(got.0.len(), want.0.len(), "records after {} crashes", crashes);
            prop_assert!(got.0 == want.0, "records differ after {} crashes", crashes);
            prop_assert_eq!(&got.1, &want.1, "dead letters after {} crashes", crashes);
        }
    }

    /// Not left to chance: several crashes, with and without compaction, between
    /// checkpoints and after them, and one before the first commit.
    #[test]
    fn several_crashes_between_and_after_checkpoints_give_the_uninterrupted_output() {
        let lines = workload_of(6_000);
        let chunks = [
            (300, false, Act::Crash { compact: false }),
            (500, false, Act::Commit { checkpoint: false }),
            (400, false, Act::Commit { checkpoint: false }),
            (200, false, Act::Crash { compact: false }),
            (900, false, Act::Commit { checkpoint: true }),
            (100, true, Act::Idle(2)),
            (700, false, Act::Commit { checkpoint: false }),
            (300, false, Act::Crash { compact: true }),
            (1000, false, Act::Commit { checkpoint: true }),
            (0, false, Act::Crash { compact: true }),
            (800, false, Act::Commit { checkpoint: false }),
            (10, false, Act::Crash { compact: false }),
        ];
        let acts = acts(&chunks, lines.len());
        for which in 0..3 {
            let p = processing(which);
            let (want, _) = run(&acts, &lines, &p, false);
            let (got, crashes) = run(&acts, &lines, &p, true);
            assert_eq!(crashes, 5);
            assert!(want.1.iter().any(|d| d.reason == attrib::model::DeadLetterReason::FutureTimestamp));
            assert!(got.0 == want.0, "records differ (processing {which})");
            assert_eq!(got.1, want.1, "dead letters differ (processing {which})");
        }
    }
}

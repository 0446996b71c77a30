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
    let opts = GenOptions {
        events: 30_000,
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
    let mut p = Processing::default();
    p.engine.model = attrib::model::Model::Linear;
    p.engine.shadow_models = vec![attrib::model::Model::LastTouch, attrib::model::Model::TimeDecay];
    incremental_restores_match(p);
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

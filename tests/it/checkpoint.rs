//! Restored from a checkpoint: a task snapshotted midway and restored from its CBOR
//! snapshot must write exactly what an uninterrupted task writes (Arroyo-style golden).

use attrib::codec::{DecodeLimits, Decoder};
use attrib::engine::watermark::Watermarks;
use attrib::engine::{Engine, EngineConfig};
use attrib::gen::{generate, GenOptions};
use attrib::model::{DeadLetter, Record};
use attrib::worker::state::{snapshot_chunks, StateMsg};
use attrib::worker::task::{Task, TaskOutput, TaskSettings, TaskState};

/// A task output that keeps everything (shared by the tests of this binary).
#[derive(Default)]
pub struct Collect(pub Vec<Record>, pub Vec<DeadLetter>);

impl TaskOutput for Collect {
    fn record(&mut self, record: Record, _: u64) {
        self.0.push(record);
    }
    fn dead_letter(&mut self, d: DeadLetter) {
        self.1.push(d);
    }
}

/// A fresh partition-group task with `inputs` inputs and the default config.
pub fn task(inputs: usize) -> Task {
    let cfg = EngineConfig::default();
    let state = TaskState {
        watermarks: Watermarks::new(inputs, cfg.max_out_of_orderness),
        engine: Engine::new(cfg),
        positions: vec![None; inputs],
        seq: 0,
    };
    Task::new(0, state, TaskSettings { max_future_skew: 3_600_000 })
}

fn restore(t: &Task) -> Task {
    let mut data = Vec::new();
    for chunk in snapshot_chunks(&t.state) {
        let StateMsg::Chunk { data: d, .. } = StateMsg::decode(&chunk.encode()).unwrap() else { panic!("chunk") };
        data.extend(d);
    }
    let state: TaskState = ciborium::from_reader(&data[..]).unwrap();
    Task::new(0, state, TaskSettings { max_future_skew: 3_600_000 })
}

#[test]
fn a_task_restored_from_a_snapshot_continues_exactly() {
    let opts = GenOptions {
        events: 30_000,
        seed: 9,
        duplicates: 0.02,
        invalid: 0.01,
        refunds: 0.3,
        events_per_sec: 2.0,
        ..GenOptions::default()
    };
    let mut lines: Vec<(u8, Vec<u8>)> = Vec::new();
    generate(&opts, |kind, line| {
        lines.push(((kind as u8) % 4, line.to_vec()));
        Ok(())
    })
    .unwrap();
    let now = 4_000_000_000_000; // far future: no future-timestamp dead letters
    let mut decoder = Decoder::new(DecodeLimits::default());
    let run = |t: &mut Task, from: usize, to: usize, out: &mut Collect, decoder: &mut Decoder| {
        for (i, (input, line)) in lines.iter().enumerate().take(to).skip(from) {
            t.on_message(*input, "in", i as i64, line, now, 0, decoder, out);
        }
    };
    let mut straight = task(4);
    let mut want = Collect::default();
    run(&mut straight, 0, lines.len(), &mut want, &mut decoder);

    for cut in [1, 7_777, 15_000, 29_999] {
        let mut first = task(4);
        let mut got = Collect::default();
        run(&mut first, 0, cut, &mut got, &mut decoder);
        let mut second = restore(&first);
        run(&mut second, cut, lines.len(), &mut got, &mut decoder);
        assert_eq!(got.0.len(), want.0.len(), "records after a restore at {cut}");
        assert!(got.0 == want.0, "records differ after a restore at {cut}");
        assert_eq!(got.1, want.1, "dead letters after a restore at {cut}");
        assert_eq!(second.state.engine.stats(), straight.state.engine.stats());
    }
    assert!(want.0.len() > 1000);
}

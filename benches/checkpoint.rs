//! Commit cost and restore time as the state grows (issue 9).
//!
//! For each N the engine is loaded with N live touches (the `state` bench's synthetic
//! clicks: 5 per shopper, nothing expires) with change tracking on, as the worker runs,
//! and a first checkpoint takes every shopper: those records are what a new worker reads
//! from the compacted state topic.
//!
//! - **commit**: a batch of 10,000 further events (the `state` bench's mix: 92 % clicks,
//!   8 % purchases, on random existing shoppers) goes through the engine untimed; timed is
//!   what the worker's commit builds for the state topic: the order-log entry and
//!   `worker::state::checkpoint_items` (the shoppers changed since the last checkpoint,
//!   the group record, the log tombstones). Each sample is the next batch on the same
//!   state, so N grows by up to 10,000 touches per sample.
//! - **restore**: the first checkpoint's records go through `PartitionState::apply` (what
//!   `read_partition` does with each record it reads) and `worker::state::rebuild`
//!   (what `rebuild` runs): reading from Kafka is not timed.
//!
//! Besides criterion's report, a table row per N is printed with the medians (of the
//! commit's time, bytes and records over its samples).
//!
//! ```sh
//! cargo bench --bench checkpoint                              # N = 1M and 10M (~5 min here)
//! ATTRIB_BENCH_N=1000000,50000000 cargo bench --bench checkpoint   # other sizes
//! ```

use std::cell::RefCell;
use std::time::{Duration, Instant};

use attrib::engine::watermark::Watermarks;
use attrib::engine::Engine;
use attrib::pipeline::{Pipeline, Processing};
use attrib::worker::state::{checkpoint_items, rebuild, Committed, MemoryInputs, PartitionState, StateItem, Step};
use attrib::worker::task::{Partitioner, Routing, TaskState};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

// `run_events` serves the other benches.
#[allow(dead_code)]
mod support;
use support::touches::{batch, load_touches};
use support::CountOutput;

const BATCH: u64 = 10_000;
const STATE_TOPIC: &str = "state";

/// What one commit wrote.
#[derive(Clone, Copy)]
struct Written {
    records: usize,
    bytes: usize,
}

fn written(items: &[StateItem]) -> Written {
    let bytes = items.iter().map(|i| i.key.len() + i.value.as_ref().map_or(0, Vec::len)).sum();
    Written { records: items.len(), bytes }
}

/// One partition group, one input, loaded with `n` live touches, and its first checkpoint.
fn loaded_group(processing: &Processing, n: u64) -> (TaskState, Vec<StateItem>) {
    let mut engine = Engine::new(processing.engine.clone());
    engine.track_changes(true);
    load_touches(&mut engine, n);
    assert_eq!(engine.live_touches() as u64, n);
    let watermarks = Watermarks::new(1, processing.engine.max_out_of_orderness);
    let mut state = TaskState {
        pipeline: Pipeline::from_parts(processing.clone(), engine, watermarks),
        positions: vec![Some(n as i64)],
        seq: 1,
    };
    let items = checkpoint_items(&mut state, &inputs(), 0);
    (state, items)
}

fn inputs() -> Vec<String> {
    vec!["in".into()]
}

/// The worker's commit of one log entry and a checkpoint (see `Worker::commit`).
fn commit(state: &mut TaskState, until: i64) -> Vec<StateItem> {
    state.seq += 1;
    let mut items = vec![StateItem::log(state.seq, vec![Step::Advance { input: 0, until, now_ms: 0 }])];
    items.extend(checkpoint_items(state, &inputs(), state.seq - 1));
    items
}

/// Batch `round` after `n` loaded touches, through the engine (watermark `max ts - 5 s`
/// after each event, as the worker moves it).
fn apply_batch(state: &mut TaskState, n: u64, round: u64) {
    let bound = state.pipeline.processing().engine.max_out_of_orderness;
    let engine = state.pipeline.engine_mut();
    let mut out = CountOutput::default();
    for event in batch(n, 100_000 + round * BATCH, BATCH) {
        let w = event.ts() - bound;
        engine.process(&event, 0, &mut out);
        engine.advance_watermark(w, &mut out);
    }
    state.positions[0] = state.positions[0].map(|p| p + BATCH as i64);
}

fn restore(items: &[StateItem], processing: &Processing) -> (TaskState, u64) {
    let mut part = PartitionState::default();
    for item in items {
        part.apply(&item.key, item.value.as_deref(), STATE_TOPIC, 0).expect("state records read");
    }
    let bytes = part.bytes;
    let committed = Committed { offsets: vec![None], seq: Some(1) };
    let routing = Routing { partition: 0, partitioner: Partitioner::Murmur2, partitions: 1, sources: 0 };
    let (state, _) = rebuild(
        &mut MemoryInputs::new(vec![Vec::new()]),
        part,
        &[("in".into(), 0)],
        &inputs(),
        &committed,
        processing,
        routing,
        Instant::now() + Duration::from_secs(600),
        &|| false,
    )
    .expect("restores");
    (state, bytes)
}

/// The median (`None` when the bench was filtered out).
fn median<T: Ord + Copy>(mut xs: Vec<T>) -> Option<T> {
    xs.sort_unstable();
    xs.get(xs.len() / 2).copied()
}

fn cell<T>(x: Option<T>, show: impl Fn(T) -> String) -> String {
    x.map_or_else(|| "–".into(), show)
}

fn bench_checkpoint(c: &mut Criterion) {
    let processing = Processing::default();
    let mut rows = Vec::new();
    let sizes: Vec<u64> = match std::env::var("ATTRIB_BENCH_N") {
        Ok(list) => {
            list.split(',').map(|n| n.trim().parse().expect("ATTRIB_BENCH_N: live touches, comma separated")).collect()
        }
        Err(_) => vec![1_000_000, 10_000_000],
    };
    for n in sizes {
        let label = format!("{}M_live_touches", n / 1_000_000);
        let (mut state, full) = loaded_group(&processing, n);
        let mut round = 0;

        let mut g = c.benchmark_group("checkpoint");
        // Every sample is one commit after a fresh batch (the batch is not timed).
        g.sample_size(30)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10))
            .sampling_mode(SamplingMode::Flat);
        let commits = RefCell::new(Vec::new());
        g.bench_function(BenchmarkId::new("commit", &label), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    apply_batch(&mut state, n, round);
                    round += 1;
                    let start = Instant::now();
                    let until = state.positions[0].unwrap_or(0);
                    let items = commit(&mut state, until);
                    let took = start.elapsed();
                    commits.borrow_mut().push((took, written(&items)));
                    timed += took;
                    drop(items);
                }
                timed
            })
        });
        drop(state);

        g.sample_size(10).measurement_time(Duration::from_millis(100));
        let restores = RefCell::new(Vec::new());
        let mut restore_bytes = None;
        g.bench_function(BenchmarkId::new("restore", &label), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (restored, bytes) = restore(&full, &processing);
                    let took = start.elapsed();
                    assert_eq!(restored.pipeline.engine().live_touches() as u64, n);
                    restores.borrow_mut().push(took);
                    restore_bytes = Some(bytes);
                    timed += took;
                    drop(restored);
                }
                timed
            })
        });
        g.finish();
        let commits = commits.into_inner();
        rows.push([
            format!("{}M", n / 1_000_000),
            cell(median(commits.iter().map(|c| c.0).collect()), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3)),
            cell(median(commits.iter().map(|c| c.1.bytes).collect()), |b| b.to_string()),
            cell(median(commits.iter().map(|c| c.1.records).collect()), |r| r.to_string()),
            cell(median(restores.into_inner()), |d| format!("{:.2} s", d.as_secs_f64())),
            cell(restore_bytes, |b| format!("{:.1}", b as f64 / 1e6)),
            full.len().to_string(),
        ]);
    }
    println!("\n| N live touches | commit (median) | commit bytes | records per commit | restore (median) | restore MB | state records |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

criterion_group!(benches, bench_checkpoint);
criterion_main!(benches);

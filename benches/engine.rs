//! Throughput benchmarks (issue 4): decoding, the engine per attribution model, and
//! replay end to end, each reported in elements (events) per second.
//!
//! ```sh
//! cargo bench --bench engine
//! ```
//!
//! Inputs come from the seeded generator ([`attrib::gen::generate`], default options,
//! seed 42) and are built once, outside the timed loops.

use std::hint::black_box;
use std::io;
use std::time::Duration;

use attrib::codec::{DecodeLimits, Decoder};
use attrib::config::Config;
use attrib::engine::Engine;
use attrib::gen::{generate, GenOptions};
use attrib::model::Event;
use attrib::replay::{replay, Input, JsonLinesSink};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};

mod support;
use support::run_events;

const DECODE_EVENTS: u64 = 100_000;
const ENGINE_EVENTS: u64 = 200_000;
const MODELS: [&str; 5] = ["last_touch", "first_touch", "linear", "position_based", "time_decay"];

/// `n` generated JSON lines (no newline), default workload options.
fn gen_lines(n: u64) -> Vec<Vec<u8>> {
    let opts = GenOptions { events: n, ..GenOptions::default() };
    let mut lines = Vec::with_capacity(n as usize);
    generate(&opts, |_, line| {
        lines.push(line.to_vec());
        Ok(())
    })
    .expect("generator runs");
    lines
}

fn config(model: &str) -> Config {
    Config::from_toml(&format!("[attribution]\nmodel = \"{model}\"")).expect("valid config")
}

fn bench_decode(c: &mut Criterion) {
    let lines = gen_lines(DECODE_EVENTS);
    let mut g = c.benchmark_group("decode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("decoder", |b| {
        let mut decoder = Decoder::new(DecodeLimits::default());
        b.iter(|| {
            for line in &lines {
                black_box(decoder.decode(black_box(line)).is_ok());
            }
        })
    });
    g.bench_function("simd_json_reference", |b| {
        let mut decoder = Decoder::new(DecodeLimits::default());
        b.iter(|| {
            for line in &lines {
                black_box(decoder.decode_reference(black_box(line)).is_ok());
            }
        })
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(line)).is_ok());
            }
        })
    });
    g.finish();
}

/// Every event through the engine, the watermark at `max ts seen - max_out_of_orderness`
/// after each event (as replay does with one input), then `finish`. Returns the engine so
/// that dropping its state happens outside the timing.
fn run_engine(config: &Config, events: Vec<Event>) -> (Engine, u64) {
    let mut engine = Engine::new(config.engine.clone());
    let records = run_events(&mut engine, events, config.engine.max_out_of_orderness);
    (engine, records)
}

fn bench_engine(c: &mut Criterion) {
    let mut decoder = Decoder::new(DecodeLimits::default());
    let events: Vec<Event> =
        gen_lines(ENGINE_EVENTS).iter().map(|l| decoder.decode(l).expect("generated events are valid")).collect();
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(events.len() as u64));
    for model in MODELS {
        let cfg = config(model);
        assert!(run_engine(&cfg, events.clone()).1 > 0, "{model}: the workload produces records");
        // The clone of the events is setup, outside the timing.
        g.bench_function(model, |b| {
            b.iter_batched(|| events.clone(), |evs| run_engine(&cfg, evs), BatchSize::PerIteration)
        });
    }
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let mut jsonl = Vec::new();
    for line in gen_lines(ENGINE_EVENTS) {
        jsonl.extend_from_slice(&line);
        jsonl.push(b'\n');
    }
    let cfg = config("last_touch");
    let mut g = c.benchmark_group("replay");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(ENGINE_EVENTS));
    g.bench_function("last_touch_jsonl", |b| {
        b.iter(|| {
            let inputs = vec![Input { name: "bench".to_owned(), reader: io::Cursor::new(&jsonl[..]) }];
            // Encodes every record into the sink's reused buffer, then discards the bytes.
            let mut sink = JsonLinesSink::new(io::sink(), None::<io::Sink>);
            let summary = replay(&cfg, inputs, &mut sink).expect("in-memory replay");
            assert_eq!(summary.stats.events_in, ENGINE_EVENTS);
            black_box(summary.stats.records_commission)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_engine, bench_replay);
criterion_main!(benches);

//! Cost per event as the touch state grows (issue 4).
//!
//! For each N the engine is first loaded with N live touches (synthetic clicks, 5 per
//! shopper, distinct event ids, one millisecond apart, all inside the 7-day click window;
//! the watermark is held during the load, so nothing expires). Then a fixed batch of
//! 100,000 further events (92 % clicks on random existing shoppers, 8 % purchases by
//! random existing shoppers of a product they touched) goes through `process` with the
//! watermark advanced after every event to `max ts - 5 s`, as replay does, and `finish`.
//! Only the batch is timed; each timed run starts from its own clone of the loaded
//! engine, so every run sees exactly N live touches.
//!
//! ```sh
//! cargo bench --bench state                      # N = 1M and 10M
//! ATTRIB_BENCH_50M=1 cargo bench --bench state   # also N = 50M (needs ~2x its RSS free)
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use attrib::config::Config;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};

mod support;
use support::run_events;
use support::touches::{batch, loaded_engine};

const BATCH: u64 = 100_000;

fn bench_state(c: &mut Criterion) {
    let config = Config::from_toml("").expect("default config");
    let bound = config.engine.max_out_of_orderness;
    let mut sizes = vec![1_000_000u64, 10_000_000];
    if std::env::var("ATTRIB_BENCH_50M").is_ok_and(|v| v == "1") {
        sizes.push(50_000_000);
    }
    let mut g = c.benchmark_group("state");
    // One timed batch per sample (each needs a fresh clone of the loaded engine), a
    // single warm-up run: 11 clones per N.
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(100))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(BATCH));
    for n in sizes {
        let loaded = loaded_engine(&config.engine, n);
        let events = batch(n, 0, BATCH);
        {
            let mut check = loaded.clone();
            assert!(run_events(&mut check, events.clone(), bound) > 0, "the batch attributes purchases");
            assert!(check.live_touches() as u64 > n, "nothing expired");
        }
        g.bench_with_input(BenchmarkId::from_parameter(format!("{}M_live_touches", n / 1_000_000)), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = loaded.clone();
                    let evs = events.clone();
                    let start = Instant::now();
                    black_box(run_events(&mut engine, evs, bound));
                    timed += start.elapsed();
                    drop(engine);
                }
                timed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_state);
criterion_main!(benches);

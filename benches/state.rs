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
use attrib::engine::Engine;
use attrib::model::{Currency, Event, Item, Purchase, Touch, TouchKind};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};

mod support;
use support::{run_events, CountOutput};

const TOUCHES_PER_SHOPPER: u64 = 5;
const PRODUCTS: u64 = 10_000;
const CREATORS: u64 = 2_000;
const BATCH: u64 = 100_000;
/// 2026-11-01T00:00:00Z.
const START_MS: i64 = 1_793_491_200_000;

fn click(i: u64, user: u64, ts: i64, prefix: &str) -> Event {
    Event::Touch(Touch {
        kind: TouchKind::Click,
        event_id: format!("{prefix}-{i}").into(),
        ts,
        user_id: format!("u-{user}").into(),
        creator_id: format!("c-{}", i % CREATORS).into(),
        product_id: Some(format!("p-{}", user % PRODUCTS).into()),
        surface: Some("video".into()),
    })
}

/// An engine holding `n` live touches; the watermark never moves.
fn loaded_engine(config: &Config, n: u64) -> Engine {
    let shoppers = (n / TOUCHES_PER_SHOPPER).max(1);
    let mut engine = Engine::new(config.engine.clone());
    let mut out = CountOutput::default();
    for i in 0..n {
        engine.process(&click(i, i % shoppers, START_MS + i as i64, "k"), 0, &mut out);
    }
    assert_eq!(engine.live_touches() as u64, n);
    engine
}

/// splitmix64: a cheap, seeded stream of shopper picks.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The timed batch, following the loaded touches in event time.
fn batch(n: u64) -> Vec<Event> {
    let shoppers = (n / TOUCHES_PER_SHOPPER).max(1);
    let mut rng = 7;
    (0..BATCH)
        .map(|j| {
            let user = next(&mut rng) % shoppers;
            let ts = START_MS + (n + j) as i64;
            if next(&mut rng) % 1000 < 80 {
                Event::Purchase(Purchase {
                    event_id: format!("o-{j}").into(),
                    ts,
                    user_id: format!("u-{user}").into(),
                    order_id: format!("ord-{j}").into(),
                    currency: Currency::parse("USD").expect("valid currency"),
                    items: vec![Item {
                        product_id: format!("p-{}", user % PRODUCTS).into(),
                        quantity: 1,
                        unit_price: 1999,
                        category: None,
                    }],
                })
            } else {
                click(j, user, ts, "b")
            }
        })
        .collect()
}

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
        let loaded = loaded_engine(&config, n);
        let events = batch(n);
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

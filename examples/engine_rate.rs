//! Engine alone, decoded events in memory (issue 10): events per second, and how the
//! cost per event grows with the live state.
//!
//! ```sh
//! cargo run --release --example engine_rate rate [EVENTS]      # default 1,000,000
//! cargo run --release --example engine_rate scale [LIVE...]    # default 1000000 50000000
//! ```
//!
//! `rate`: the `attrib gen --events EVENTS --seed 7 --duplicates 0.01 --invalid 0.001`
//! workload, decoded up front (invalid lines dropped), through a last-touch engine as
//! replay drives it (watermark after every event, then `finish`); median of 3 runs.
//!
//! `scale`: for each LIVE, loads LIVE clicks (5 per shopper, as `mem_probe`; nothing
//! expires), then times the next 1,000,000 generated events (touches, purchases and
//! refunds whose shoppers overlap the loaded ones) through the same engine: the cost per
//! event with that much live state. Prints a table with the ratio to the first LIVE.

use std::hint::black_box;
use std::time::Instant;

use attrib::codec::{DecodeLimits, Decoder};
use attrib::config::Config;
use attrib::engine::Engine;
use attrib::gen::{generate, GenOptions};
use attrib::model::{Event, Touch, TouchKind};

#[path = "../benches/support/mod.rs"]
mod support;

/// 2026-11-01T00:00:00Z.
const START_MS: i64 = 1_793_491_200_000;

fn events(n: u64, start_ms: i64) -> Vec<Event> {
    let opts = GenOptions { events: n, seed: 7, duplicates: 0.01, invalid: 0.001, start_ms, ..GenOptions::default() };
    let mut decoder = Decoder::new(DecodeLimits::default());
    let mut out = Vec::with_capacity(n as usize);
    generate(&opts, |_, line| {
        if let Ok(e) = decoder.decode(line.strip_suffix(b"\n").unwrap_or(line)) {
            out.push(e);
        }
        Ok(())
    })
    .expect("generator runs");
    out
}

fn rate(n: u64) {
    let config = Config::from_toml("").expect("default config");
    let evs = events(n, START_MS);
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            let batch = evs.clone();
            let mut engine = Engine::new(config.engine.clone());
            let t = Instant::now();
            let records = support::run_events(&mut engine, batch, config.engine.max_out_of_orderness);
            let secs = t.elapsed().as_secs_f64();
            black_box((records, engine));
            evs.len() as f64 / secs
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!("| events | runs (events/s) | median events/s |");
    println!("|---:|---|---:|");
    println!(
        "| {} | {} | {:.0} |",
        evs.len(),
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        rates[1]
    );
}

fn scale(lives: &[u64]) {
    let config = Config::from_toml("").expect("default config");
    println!("| live touches | load (s) | next 1M events (ns/event) | vs first |");
    println!("|---:|---:|---:|---:|");
    let mut first = None;
    for &live in lives {
        let mut engine = Engine::new(config.engine.clone());
        let shoppers = (live / 5).max(1);
        let t = Instant::now();
        let mut out = support::CountOutput::default();
        for i in 0..live {
            let user = i % shoppers;
            let touch = Touch {
                kind: TouchKind::Click,
                event_id: format!("k-{i}").into(),
                ts: START_MS + i as i64,
                user_id: format!("u-{user}").into(),
                creator_id: format!("c-{}", i % 2000).into(),
                product_id: Some(format!("p-{}", user % 10_000).into()),
                surface: Some("video".into()),
            };
            engine.process(&Event::Touch(touch), 0, &mut out);
        }
        let load = t.elapsed().as_secs_f64();
        let batch = events(1_000_000, START_MS + live as i64 + 1_000);
        let n = batch.len();
        let t = Instant::now();
        let records = support::run_events(&mut engine, batch, config.engine.max_out_of_orderness);
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        black_box(records);
        let base = *first.get_or_insert(ns);
        println!("| {live} | {load:.1} | {ns:.0} | {:.2}x |", ns / base);
        // Dropping 50M touches takes a while; it is not part of any figure.
        std::mem::forget(engine);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &String| s.replace('_', "").parse::<u64>().expect("a number");
    match args.first().map(String::as_str) {
        Some("rate") | None => rate(args.get(1).map(num).unwrap_or(1_000_000)),
        Some("scale") => {
            let lives: Vec<u64> = args[1..].iter().map(num).collect();
            scale(if lives.is_empty() { &[1_000_000, 50_000_000] } else { &lives })
        }
        Some(other) => panic!("usage: engine_rate rate [EVENTS] | scale [LIVE...] (got {other})"),
    }
}

//! Memory per live touch (issue 4).
//!
//! Loads N synthetic clicks into an [`Engine`] (5 per shopper, distinct event ids, one
//! millisecond apart, all within the click window; the watermark never moves, so
//! nothing expires), reads the resident set size from `/proc/self/statm` before and
//! after, and prints the bytes of RSS growth per live touch. Linux only.
//!
//! ```sh
//! cargo run --release --example mem_probe             # N = 1,000,000
//! cargo run --release --example mem_probe 10000000    # N = 10,000,000
//! ```

use std::fs;

use attrib::config::Config;
use attrib::engine::{Engine, Output};
use attrib::model::{Event, RecordView, Touch, TouchKind};

const TOUCHES_PER_SHOPPER: u64 = 5;
const PRODUCTS: u64 = 10_000;
const CREATORS: u64 = 2_000;
/// 2026-11-01T00:00:00Z.
const START_MS: i64 = 1_793_491_200_000;

struct NoOutput;

impl Output for NoOutput {
    fn record(&mut self, _record: &RecordView<'_>, _tag: u64) {}
}

/// Resident pages, from `/proc/self/statm` (second field).
fn resident_pages() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (Linux only)");
    statm.split_whitespace().nth(1).and_then(|f| f.parse().ok()).expect("statm has a resident field")
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn vm_rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The page size, from the two views of the same RSS (no libc needed); 4096 if unclear.
fn page_size() -> u64 {
    let pages = resident_pages();
    match vm_rss_bytes() {
        Some(bytes) if pages > 0 => {
            let p = bytes / pages;
            [4096u64, 16384, 65536].into_iter().min_by_key(|c| c.abs_diff(p)).unwrap_or(4096)
        }
        _ => 4096,
    }
}

fn main() {
    let n: u64 = match std::env::args().nth(1) {
        Some(a) => a.replace('_', "").parse().expect("usage: mem_probe [live touches, default 1000000]"),
        None => 1_000_000,
    };
    let page = page_size();
    let config = Config::from_toml("").expect("default config");
    let shoppers = (n / TOUCHES_PER_SHOPPER).max(1);

    let before = resident_pages() * page;
    let mut engine = Engine::new(config.engine.clone());
    for i in 0..n {
        let user = i % shoppers;
        let touch = Touch {
            kind: TouchKind::Click,
            event_id: format!("k-{i}").into(),
            ts: START_MS + i as i64,
            user_id: format!("u-{user}").into(),
            creator_id: format!("c-{}", i % CREATORS).into(),
            product_id: Some(format!("p-{}", user % PRODUCTS).into()),
            surface: Some("video".into()),
        };
        engine.process(&Event::Touch(touch), 0, &mut NoOutput);
    }
    let after = resident_pages() * page;
    let live = engine.live_touches();
    assert_eq!(live as u64, n, "every touch is live");
    let grown = after.saturating_sub(before);

    println!("| live touches | shoppers | RSS before (MiB) | RSS after (MiB) | growth (MiB) | bytes / live touch |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        live,
        engine.shoppers(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        grown as f64 / live.max(1) as f64
    );
    eprintln!("(page size {page} bytes; {TOUCHES_PER_SHOPPER} touches per shopper)");
    std::hint::black_box(&engine);
}

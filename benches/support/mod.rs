//! Shared by the benchmarks: an output that only counts, the replay-like driver, and an
//! engine loaded with live touches ([`touches`]).

use std::hint::black_box;

use attrib::engine::{Engine, Output};
use attrib::model::{Event, RecordView};

// Not every bench loads touches.
#[allow(dead_code)]
pub mod touches;

/// Counts records (and keeps the optimiser from dropping them).
#[derive(Default)]
pub struct CountOutput(pub u64);

impl Output for CountOutput {
    fn record(&mut self, record: &RecordView<'_>, _tag: u64) {
        black_box(record);
        self.0 += 1;
    }
}

/// Every event through `engine`, the watermark at `max ts seen - bound` after each (as
/// replay does with one input), then `finish`. Returns the records written.
pub fn run_events(engine: &mut Engine, events: Vec<Event>, bound: i64) -> u64 {
    let mut out = CountOutput::default();
    let mut max_ts = i64::MIN;
    for event in events {
        max_ts = max_ts.max(event.ts());
        engine.process(&event, 0, &mut out);
        engine.advance_watermark(max_ts.saturating_sub(bound), &mut out);
    }
    engine.finish(&mut out);
    out.0
}

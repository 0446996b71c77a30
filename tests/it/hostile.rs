//! Hostile input: whatever arrives, nothing panics, nothing valid is lost, memory stays
//! bounded, and every input is processed, a duplicate, or dead-lettered.

use attrib::codec::{DecodeLimits, Decoder};
use attrib::config::Config;
use attrib::engine::watermark::Watermarks;
use attrib::engine::{Engine, EngineConfig};
use attrib::model::{DeadLetterReason, Event, Record, Touch, TouchKind};
use attrib::replay::replay_texts;
use attrib::worker::task::{Task, TaskSettings, TaskState};

use crate::checkpoint::Collect;
use proptest::prelude::*;

const PURCHASE: &str = r#"{"type":"purchase","event_id":"o-1","ts":1764400600000,"user_id":"u-1","order_id":"ord-1","currency":"USD","items":[{"product_id":"p-1","quantity":1,"unit_price":1000}]}"#;
const CLICK: &str =
    r#"{"type":"click","event_id":"k-1","ts":1764400000000,"user_id":"u-1","creator_id":"c-1","product_id":"p-1"}"#;

fn reasons(text: &str) -> (Vec<DeadLetterReason>, usize) {
    let (sink, summary) = replay_texts(&Config::default(), &[text]);
    assert_eq!(summary.stats.accounted(), summary.stats.events_in, "every input accounted for");
    (sink.dead_letters.iter().map(|d| d.reason).collect(), sink.records.len())
}

#[test]
fn broken_lines_are_dead_letters_and_valid_ones_still_pay() {
    let deep = format!("{{\"type\":\"view\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let lines: Vec<String> = vec![
        CLICK.into(),
        String::from_utf8_lossy(b"{\"type\":\"view\",\"event_id\":\"\xff\xfe\"}").into_owned(),
        CLICK[..40].into(),                                                     // truncated JSON
        deep,                                                                   // deeply nested arrays
        CLICK.replace("1764400000000", "99999999999999999999999"),              // beyond i64
        CLICK.replace("1764400000000", "1.7644e12"),                            // float where an integer belongs
        CLICK.replace("1764400000000", "\"NaN\""),                              // NaN-like string
        PURCHASE.replace("\"unit_price\":1000", "\"unit_price\":\"Infinity\""), // string where an integer belongs
        CLICK.replace("1764400000000", "1e400"),                                // overflowing float
        r#"{"type":"view","type":"click","event_id":"k-dup-key","ts":1764400000001,"user_id":"u-9","creator_id":"c-9"}"#.into(),
        PURCHASE.into(),
    ];
    let text = lines.join("\n");
    let (dead, records) = reasons(&text);
    // The duplicated-key line decodes (one of the two values wins); the other 8 broken lines
    // are dead letters; the click and purchase still produce their commission.
    assert_eq!(dead.len(), 8, "{dead:?}");
    assert!(dead.iter().all(|r| matches!(r, DeadLetterReason::InvalidJson | DeadLetterReason::InvalidEvent)));
    assert_eq!(records, 1);
}

#[test]
fn invalid_utf8_bytes_are_dead_lettered_not_a_panic() {
    let mut d = Decoder::new(DecodeLimits::default());
    let e = d
        .decode(b"{\"type\":\"click\",\"event_id\":\"k\xc3\x28\",\"ts\":1,\"user_id\":\"u\",\"creator_id\":\"c\"}")
        .unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::InvalidJson);
}

#[test]
fn a_10_mb_message_and_100_000_items_are_rejected_by_size() {
    let mut d = Decoder::new(DecodeLimits::default());
    let huge = format!(
        r#"{{"type":"view","event_id":"v","ts":1,"user_id":"u","creator_id":"c","pad":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    assert_eq!(d.decode(huge.as_bytes()).unwrap_err().reason, DeadLetterReason::TooLarge);
    let item = r#"{"product_id":"p","quantity":1,"unit_price":1}"#;
    let many = PURCHASE.replace(
        r#"[{"product_id":"p-1","quantity":1,"unit_price":1000}]"#,
        &format!("[{}]", vec![item; 100_000].join(",")),
    );
    // Within the size limit the item limit still applies.
    let mut roomy = Decoder::new(DecodeLimits { max_message_bytes: 64 << 20, ..DecodeLimits::default() });
    let e = roomy.decode(many.as_bytes()).unwrap_err();
    assert_eq!(e.reason, DeadLetterReason::InvalidEvent);
    assert!(e.message.contains("100000 items"), "{}", e.message);
}

#[test]
fn a_click_flood_keeps_memory_bounded_by_the_per_shopper_cap() {
    let cap = 10_000;
    let mut engine = Engine::new(EngineConfig { max_touches_per_user: cap, ..EngineConfig::default() });
    let mut out: Vec<Record> = Vec::new();
    let start = 1_764_400_000_000;
    let n = 1_000_000u64;
    for i in 0..n {
        // A million clicks by one shopper within one minute of event time.
        let touch = Touch {
            kind: TouchKind::Click,
            event_id: format!("flood-{i}").into(),
            ts: start + (i * 60_000 / n) as i64,
            user_id: "u-flood".into(),
            creator_id: format!("c-{}", i % 50).into(),
            product_id: None,
            surface: None,
        };
        engine.process(Event::Touch(touch), 0, &mut out);
        assert!(engine.live_touches() <= cap);
    }
    assert_eq!(engine.live_touches(), cap);
    assert_eq!(engine.stats().touches_evicted_cap, n - cap as u64);
    assert_eq!(engine.shoppers(), 1);
}

#[test]
fn a_future_timestamp_cannot_push_the_watermark_and_make_the_rest_late() {
    let cfg = EngineConfig::default();
    let state = TaskState {
        watermarks: Watermarks::new(1, cfg.max_out_of_orderness),
        engine: Engine::new(cfg),
        positions: vec![None],
        seq: 0,
    };
    let mut task = Task::new(0, state, TaskSettings { max_future_skew: 3_600_000 });
    let mut dec = Decoder::new(DecodeLimits::default());
    let mut out = Collect::default();
    let now = 1_764_400_700_000;
    let far = CLICK.replace("1764400000000", "253402300799999").replace("k-1", "k-far");
    task.on_message(0, "clicks", 0, far.as_bytes(), now, 0, &mut dec, &mut out);
    task.on_message(0, "clicks", 1, CLICK.as_bytes(), now, 0, &mut dec, &mut out);
    task.on_message(0, "purchases", 2, PURCHASE.as_bytes(), now, 0, &mut dec, &mut out);
    assert_eq!(out.1.len(), 1);
    assert_eq!(out.1[0].reason, DeadLetterReason::FutureTimestamp);
    // The real events were not made late by the bad clock: the purchase is still pending
    // (W is 5 s behind the click) and nothing was dead-lettered as too late.
    assert_eq!(task.state.engine.stats().total(|t| t.late), 0);
    assert_eq!(task.state.engine.pending(), 1);
}

#[test]
fn an_empty_input_replays_to_nothing() {
    let (sink, summary) = replay_texts(&Config::default(), &["", "\n\n"]);
    assert!(sink.records.is_empty() && sink.dead_letters.is_empty());
    assert_eq!(summary.stats.events_in, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Fuzz the decoder with arbitrary bytes and with mutations of a valid event: it never
    /// panics, and whatever it accepts the engine takes without panicking either.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..200, flip in any::<u8>()) {
        let mut d = Decoder::new(DecodeLimits::default());
        let mut engine = Engine::new(EngineConfig::default());
        let mut out: Vec<Record> = Vec::new();
        let mut mutated = PURCHASE.as_bytes().to_vec();
        let at = cut % mutated.len();
        mutated[at] = flip;
        for input in [bytes.as_slice(), mutated.as_slice(), &PURCHASE.as_bytes()[..cut.min(PURCHASE.len())]] {
            if let Ok(event) = d.decode(input) {
                engine.process(event, 0, &mut out);
            }
        }
        engine.advance_watermark(i64::MAX, &mut out);
        engine.finish(&mut out);
    }
}

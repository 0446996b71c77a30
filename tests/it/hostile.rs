//! Hostile input: whatever arrives, nothing panics, nothing valid is lost, memory stays
//! bounded, and every input is processed, a duplicate, or dead-lettered.

use attrib::codec::{DecodeLimits, Decoder};
use attrib::config::Config;
use attrib::engine::{Engine, EngineConfig};
use attrib::model::{DeadLetterReason, Event, Record, SourcePos, Touch, TouchKind};
use attrib::replay::{replay, replay_texts, Input, MemorySink, Summary};
use std::io;

use crate::checkpoint::{pipeline, Collect};
use proptest::prelude::*;

const PURCHASE: &str = r#"{"type":"purchase","event_id":"o-1","ts":1764400600000,"user_id":"u-1","order_id":"ord-1","currency":"USD","items":[{"product_id":"p-1","quantity":1,"unit_price":1000}]}"#;
const CLICK: &str =
    r#"{"type":"click","event_id":"k-1","ts":1764400000000,"user_id":"u-1","creator_id":"c-1","product_id":"p-1"}"#;

/// Replays one input of raw bytes; checks that every input is accounted for.
fn replay_bytes(config: &Config, bytes: &[u8]) -> (MemorySink, Summary) {
    let mut sink = MemorySink::default();
    let input = Input { name: "hostile".into(), reader: io::Cursor::new(bytes) };
    let summary = replay(config, vec![input], &mut sink).expect("in-memory replay");
    let s = &summary.stats;
    assert_eq!(s.events_in, s.accounted(), "events in = processed + duplicates + dead-lettered");
    (sink, summary)
}

fn roomy() -> Config {
    Config::from_toml("[limits]\nmax_message_bytes = 67108864").expect("valid config")
}

/// A valid click, one hostile line, a valid purchase: the hostile line is the one dead
/// letter, with exactly this reason and message, and the click still pays.
fn assert_dead_letter(config: &Config, name: &str, hostile: &[u8], reason: DeadLetterReason, needle: &str) {
    let mut text = format!("{CLICK}\n").into_bytes();
    text.extend_from_slice(hostile);
    text.extend_from_slice(format!("\n{PURCHASE}\n").as_bytes());
    let (sink, summary) = replay_bytes(config, &text);
    let dead: Vec<_> = sink.dead_letters.iter().map(|d| (d.reason, d.error.as_str())).collect();
    assert_eq!(dead.len(), 1, "{name}: {dead:?}");
    assert_eq!(dead[0].0, reason, "{name}: {dead:?}");
    assert!(dead[0].1.contains(needle), "{name}: {:?} should contain {needle:?}", dead[0].1);
    assert_eq!(sink.dead_letters[0].source, SourcePos::File { file: "hostile".into(), line: 2 }, "{name}");
    let s = &summary.stats;
    assert_eq!((s.events_in, s.total(|t| t.processed)), (3, 2), "{name}");
    assert_eq!(sink.records.len(), 1, "{name}: the valid click and purchase still pay");
}

/// Another purchase with `item` as its only item.
fn purchase_with(item: &str) -> String {
    PURCHASE
        .replace("o-1", "o-2")
        .replace("ord-1", "ord-2")
        .replace(r#"{"product_id":"p-1","quantity":1,"unit_price":1000}"#, item)
}

#[test]
fn each_hostile_line_is_dead_lettered_with_its_exact_reason() {
    use DeadLetterReason::{InvalidEvent, InvalidJson, TooLarge, TooLate};
    let click = |ts: &str| CLICK.replace("1764400000000", ts).replace("k-1", "k-2").into_bytes();
    let deep = format!("{{\"type\":\"view\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, DeadLetterReason, &str)> = vec![
        (
            "invalid UTF-8",
            b"{\"type\":\"click\",\"event_id\":\"k\xc3\x28\",\"ts\":1,\"user_id\":\"u\",\"creator_id\":\"c\"}".to_vec(),
            InvalidJson,
            "invalid JSON: InvalidUtf8",
        ),
        ("truncated JSON", CLICK.as_bytes()[..40].to_vec(), InvalidJson, "invalid JSON: "),
        ("a lone brace", b"{".to_vec(), InvalidJson, "invalid JSON: "),
        ("deeply nested arrays", deep.into_bytes(), InvalidJson, "invalid JSON: nesting deeper than 32 levels"),
        ("not an object", b"[1,2]".to_vec(), InvalidEvent, "event must be a JSON object"),
        ("null", b"null".to_vec(), InvalidEvent, "event must be a JSON object"),
        ("an empty object", b"{}".to_vec(), InvalidEvent, "missing field `type`"),
        (
            "ts beyond u64",
            click("99999999999999999999999"),
            InvalidEvent,
            "field `ts`: 99999999999999999999999 is beyond the 64-bit number range",
        ),
        (
            "ts beyond i64",
            click("18446744073709551615"),
            InvalidEvent,
            "field `ts`: must be an integer, got beyond the 64-bit integer range",
        ),
        (
            "ts below i64",
            click("-9223372036854775809"),
            InvalidEvent,
            "field `ts`: -9223372036854775809 is beyond the 64-bit number range",
        ),
        ("ts an overflowing float", click("1e400"), InvalidEvent, "field `ts`: 1e400 is beyond the 64-bit number range"),
        (
            "ts a float",
            click("1.7644e12"),
            InvalidEvent,
            "field `ts`: must be an integer, got a number with a fraction or exponent",
        ),
        (
            "ts a whole float",
            click("1764400000000.0"),
            InvalidEvent,
            "field `ts`: must be an integer, got a number with a fraction",
        ),
        ("ts \"NaN\"", click("\"NaN\""), InvalidEvent, "field `ts`: \"NaN\" is not an RFC 3339 timestamp"),
        ("ts bare NaN", click("NaN"), InvalidJson, "invalid JSON: "),
        ("ts negative", click("-1"), InvalidEvent, "field `ts`: -1 is outside 1970-01-01 .. 9999-12-31"),
        ("ts after 9999", click("253402300800000"), InvalidEvent, "field `ts`: 253402300800000 is outside"),
        ("ts far in the past", click("0"), TooLate, "event time 0 is behind the watermark"),
        (
            "quantity a float",
            purchase_with(r#"{"product_id":"p","quantity":2.0,"unit_price":1}"#).into_bytes(),
            InvalidEvent,
            "field `items[0].quantity`: must be an integer, got a number with a fraction or exponent",
        ),
        (
            "quantity beyond u64",
            purchase_with(r#"{"product_id":"p","quantity":99999999999999999999,"unit_price":1}"#).into_bytes(),
            InvalidEvent,
            "field `quantity`: 99999999999999999999 is beyond the 64-bit number range",
        ),
        (
            "unit_price beyond i64",
            purchase_with(r#"{"product_id":"p","quantity":1,"unit_price":9223372036854775808}"#).into_bytes(),
            InvalidEvent,
            "field `items[0].unit_price`: must be an integer, got beyond the 64-bit integer range",
        ),
        (
            "unit_price \"Infinity\"",
            purchase_with(r#"{"product_id":"p","quantity":1,"unit_price":"Infinity"}"#).into_bytes(),
            InvalidEvent,
            "field `items[0].unit_price`: must be an integer, got not an integer",
        ),
        (
            "unit_price \"NaN\"",
            purchase_with(r#"{"product_id":"p","quantity":1,"unit_price":"NaN"}"#).into_bytes(),
            InvalidEvent,
            "field `items[0].unit_price`: must be an integer, got not an integer",
        ),
        (
            "gross overflows i64",
            purchase_with(r#"{"product_id":"p","quantity":2,"unit_price":4611686018427387904}"#).into_bytes(),
            InvalidEvent,
            "field `items[0]`: quantity 2 * unit_price 4611686018427387904 overflows a 64-bit integer",
        ),
        (
            "duplicated key type",
            br#"{"type":"view","type":"click","event_id":"k-dup","ts":1764400000001,"user_id":"u-9","creator_id":"c-9"}"#
                .to_vec(),
            InvalidEvent,
            "field `type`: given more than once",
        ),
        (
            "duplicated key unit_price",
            purchase_with(r#"{"product_id":"p","quantity":1,"unit_price":1000,"unit_price":1}"#).into_bytes(),
            InvalidEvent,
            "field `items[0].unit_price`: given more than once",
        ),
        (
            "an id over 256 bytes",
            CLICK.replace("\"k-1\"", &format!("\"{}\"", "k".repeat(257))).into_bytes(),
            InvalidEvent,
            "field `event_id`: must be 1 to 256 bytes (limits.max_id_bytes), got 257 bytes",
        ),
        (
            "a 10 MB message",
            format!(
                r#"{{"type":"view","event_id":"v","ts":1,"user_id":"u","creator_id":"c","pad":"{}"}}"#,
                "x".repeat(10 << 20)
            )
            .into_bytes(),
            TooLarge,
            "message of 10485837 bytes is over the limit of 1048576 bytes",
        ),
    ];
    let config = Config::default();
    for (name, line, reason, needle) in &cases {
        assert_dead_letter(&config, name, line, *reason, needle);
    }
}

#[test]
fn a_purchase_with_100_000_items_is_too_large_or_over_the_item_limit() {
    let item = r#"{"product_id":"p","quantity":1,"unit_price":1}"#;
    let many = purchase_with(&vec![item; 100_000].join(","));
    assert!(many.len() > 1 << 20);
    let too_large = "over the limit of 1048576 bytes";
    assert_dead_letter(&Config::default(), "100,000 items", many.as_bytes(), DeadLetterReason::TooLarge, too_large);
    // Within the size limit the item limit still applies.
    assert_dead_letter(
        &roomy(),
        "100,000 items, roomy",
        many.as_bytes(),
        DeadLetterReason::InvalidEvent,
        "field `items`: 100000 items, over the limit of 1000 (limits.max_items_per_purchase)",
    );
    let mut d = Decoder::new(DecodeLimits { max_message_bytes: 64 << 20, ..DecodeLimits::default() });
    assert!(d.decode(purchase_with(&vec![item; 1000].join(",")).as_bytes()).is_ok(), "exactly the limit is fine");
}

#[test]
fn a_10_mb_bracket_bomb_costs_one_scan_not_a_parse() {
    // Past the size limit it is too large; let in, the depth pre-check stops it after 33
    // bytes, before simd-json sees it.
    let bomb = "[".repeat(10 << 20);
    let config = Config::default();
    assert_dead_letter(&config, "bracket bomb", bomb.as_bytes(), DeadLetterReason::TooLarge, "over the limit");
    let depth = "nesting deeper than 32 levels";
    assert_dead_letter(&roomy(), "bracket bomb, roomy", bomb.as_bytes(), DeadLetterReason::InvalidJson, depth);
    let objects = format!("{}{}", r#"{"a":"#.repeat(1 << 20), "}".repeat(1 << 20));
    assert_dead_letter(&roomy(), "object bomb", objects.as_bytes(), DeadLetterReason::InvalidJson, depth);
}

#[test]
fn the_depth_limit_follows_the_config() {
    let config = Config::from_toml("[limits]\nmax_json_depth = 4").expect("valid config");
    // The event object, `x` and two more levels: 4 deep is fine, 5 is not.
    let view = |depth: usize| {
        format!(
            r#"{{"type":"view","event_id":"v{depth}","ts":1764400000001,"user_id":"u","creator_id":"c","x":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    let (sink, summary) = replay_bytes(&config, format!("{}\n{}\n", view(4), view(5)).as_bytes());
    assert_eq!(sink.dead_letters.len(), 1);
    assert_eq!(sink.dead_letters[0].reason, DeadLetterReason::InvalidJson);
    assert_eq!(sink.dead_letters[0].error, "invalid JSON: nesting deeper than 4 levels (limits.max_json_depth)");
    assert_eq!(sink.dead_letters[0].source, SourcePos::File { file: "hostile".into(), line: 2 });
    assert_eq!(summary.stats.total(|t| t.processed), 1);
}

#[test]
fn a_far_future_timestamp_in_replay_makes_the_rest_too_late() {
    // Replay has no wall clock (SPEC §5), so nothing stops a far-future event from moving
    // the watermark: what follows it in the same input is too late, and counted. (The
    // Kafka worker dead-letters it as future_timestamp instead: see below.)
    let far = CLICK.replace("1764400000000", "253402300799999").replace("k-1", "k-far");
    let (sink, summary) = replay_bytes(&Config::default(), format!("{far}\n{CLICK}\n{PURCHASE}\n").as_bytes());
    let dead: Vec<_> = sink.dead_letters.iter().map(|d| d.reason).collect();
    assert_eq!(dead, [DeadLetterReason::TooLate, DeadLetterReason::TooLate]);
    assert_eq!(summary.stats.total(|t| t.processed), 1);
    assert!(sink.records.is_empty());
}

#[test]
fn a_click_flood_keeps_memory_bounded_by_the_per_shopper_cap() {
    let cap = 10_000;
    // Within the lateness horizon a shopper holds up to `cap` more touches (state::Cap).
    let limit = 2 * cap;
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
        engine.stats_mut().events_in += 1;
        engine.process(&Event::Touch(touch), 0, &mut out);
        assert!(engine.live_touches() <= limit);
        if i % 1000 == 999 {
            engine.advance_watermark(start + (i * 60_000 / n) as i64 - 5_000, &mut out);
        }
    }
    assert_eq!(engine.live_touches(), limit);
    // Every click past the cap pushed the oldest out of reach: counted.
    assert_eq!(engine.stats().touches_evicted_cap, n - cap as u64);
    assert_eq!(engine.shoppers(), 1);
    // The flood's newest click still earns the sale.
    let mut dec = Decoder::new(DecodeLimits::default());
    let purchase = PURCHASE.replace("u-1", "u-flood").replace("1764400600000", "1764400060000");
    engine.stats_mut().events_in += 1;
    engine.process(&dec.decode(purchase.as_bytes()).unwrap(), 0, &mut out);
    engine.finish(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].touch_event_id.as_str(), out[0].creator_id.as_str()), ("flood-999999", "c-49"));
    let s = engine.stats();
    assert_eq!(s.events_in, s.accounted(), "events in = processed + duplicates + dead-lettered");
    assert_eq!(s.total(|t| t.processed), n + 1);
}

#[test]
fn a_future_timestamp_cannot_push_the_watermark_and_make_the_rest_late() {
    let mut task = pipeline(1);
    let mut out = Collect::default();
    let now = 1_764_400_700_000;
    let far = CLICK.replace("1764400000000", "253402300799999").replace("k-1", "k-far");
    task.on_message(0, far.as_bytes(), || kafka("clicks", 0), Some(now), 0, &mut out);
    task.on_message(0, CLICK.as_bytes(), || kafka("clicks", 1), Some(now), 0, &mut out);
    task.on_message(0, PURCHASE.as_bytes(), || kafka("purchases", 2), Some(now), 0, &mut out);
    assert_eq!(out.1.len(), 1);
    assert_eq!(out.1[0].reason, DeadLetterReason::FutureTimestamp);
    // The real events were not made late by the bad clock: the purchase is still pending
    // (W is 5 s behind the click) and nothing was dead-lettered as too late.
    assert_eq!(task.engine().stats().total(|t| t.late), 0);
    assert_eq!(task.engine().pending(), 1);
}

#[test]
fn an_empty_input_replays_to_nothing() {
    let (sink, summary) = replay_texts(&Config::default(), &["", "\n\n"]);
    assert!(sink.records.is_empty() && sink.dead_letters.is_empty());
    assert_eq!(summary.stats.events_in, 0);
}

#[test]
fn an_empty_kafka_message_is_bad_json() {
    // A file's blank line is no event, but an empty Kafka value (or one of blanks) is a
    // message that must be accounted for.
    let mut task = pipeline(1);
    let mut out = Collect::default();
    task.on_message(0, b"", || kafka("clicks", 0), Some(1_764_400_000_000), 0, &mut out);
    task.on_message(0, b"  \n", || kafka("clicks", 1), Some(1_764_400_000_000), 0, &mut out);
    let dead: Vec<_> = out.1.iter().map(|d| (d.reason, d.error.as_str())).collect();
    assert_eq!(
        dead,
        [
            (DeadLetterReason::InvalidJson, "invalid JSON: Eof at character 0"),
            (DeadLetterReason::InvalidJson, "invalid JSON: Eof at character 0")
        ]
    );
    let s = task.engine().stats();
    assert_eq!((s.events_in, s.accounted()), (2, 2));
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
                engine.process(&event, 0, &mut out);
            }
        }
        engine.advance_watermark(i64::MAX, &mut out);
        engine.finish(&mut out);
    }
}

/// Found by the fuzzing of issue 6: `Stats::money` adds commissions in i64, which
/// overflows (a panic with overflow checks, a wrapped total in the summary and metrics in
/// release) once valid but huge commissions add up past i64::MAX.
#[test]
fn regression_money_totals_overflow_with_huge_prices() {
    // Each purchase is valid (quantity * unit_price fits in i64), but eleven commissions
    // of 10 % of i64::MAX add up past it.
    let mut lines = vec![CLICK.to_string()];
    for i in 0..11 {
        lines.push(
            PURCHASE
                .replace("o-1", &format!("o-{i}"))
                .replace("ord-1", &format!("ord-{i}"))
                .replace("\"unit_price\":1000", "\"unit_price\":9223372036854775807"),
        );
    }
    let (sink, summary) = replay_bytes(&Config::default(), lines.join("\n").as_bytes());
    assert_eq!(sink.records.len(), 11);
    let paid: i128 = sink.records.iter().map(|r| i128::from(r.commission_minor)).sum();
    assert!(paid > i128::from(i64::MAX));
    let total = summary.stats.money.values().next().expect("USD").0;
    assert!(total > 0, "the total must not wrap: {total}");
}

/// Found by `scripts/fuzz.sh` (engine target, fuzz/artifacts/engine/crash-6b2a2f54…):
/// the ledger adds up the excess units of a refund in i64, which overflows (a panic with
/// overflow checks, a wrapped `refund.excess_units` counter in release) when a refund of
/// an attributed order asks for more than i64::MAX units in total.
#[test]
fn regression_refund_excess_units_overflow() {
    let huge = r#"{"product_id":"p-x","quantity":9223372036854775807}"#;
    let refund = format!(
        r#"{{"type":"refund","event_id":"r-1","ts":1764400700000,"user_id":"u-1","order_id":"ord-1","items":[{huge},{huge}]}}"#
    );
    let (sink, summary) = replay_bytes(&Config::default(), format!("{CLICK}\n{PURCHASE}\n{refund}\n").as_bytes());
    assert_eq!(sink.records.len(), 1, "the commission; nothing of the order is refunded");
    assert_eq!(summary.stats.refund_applied, 1);
    assert!(summary.stats.refund_excess_units >= i64::MAX as u64, "saturates, never wraps");
}

fn kafka(topic: &str, offset: i64) -> attrib::model::SourcePos {
    attrib::model::SourcePos::Kafka { topic: topic.into(), partition: 0, offset }
}

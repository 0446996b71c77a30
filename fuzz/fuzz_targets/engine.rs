//! Arbitrary sequences of events (arbitrary times, ids, amounts, configs) through the
//! decoder and the engine, driven like a replay of several inputs: nothing panics, every
//! input is processed, a duplicate or dead-lettered, the money adds up, reversals never
//! exceed what was paid, and a snapshot restored midway gives exactly the same output.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use attrib::codec::DecodeLimits;
use attrib::engine::plan::{CommissionPlan, Rule};
use attrib::engine::state::Cap;
use attrib::engine::{Engine, EngineConfig};
use attrib::model::{DeadLetter, Millis, Model, Record, RecordKind, RecordView, SourcePos};
use attrib::pipeline::{Pipeline, Processing, Sink};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// 2025-11-29: event times cluster around here so windows and lateness matter.
const BASE: Millis = 1_764_400_000_000;

#[derive(Arbitrary, Debug)]
struct Case {
    cfg: Cfg,
    inputs: u8,
    snapshot_at: u16,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Cfg {
    model: u8,
    click: Span,
    view: Span,
    half_life: Span,
    self_attribution: bool,
    live: Option<(Option<Span>, Option<Span>)>,
    out_of_orderness: Span,
    lateness: Span,
    refund_window: Span,
    max_touches: u8,
    default_rate: u16,
    lock_period: Option<Span>,
    shadows: u8,
    rules: Vec<RuleSpec>,
}

#[derive(Arbitrary, Debug)]
struct RuleSpec {
    product: Option<u8>,
    creator: Option<u8>,
    category: Option<u8>,
    rate: u16,
    from: Option<Ts>,
    until: Option<Ts>,
}

/// A duration: mostly realistic, sometimes anything a config could hold.
#[derive(Arbitrary, Debug)]
enum Span {
    Secs(u16),
    Hours(u16),
    Days(u8),
    Any(i64),
}

impl Span {
    fn millis(&self) -> Millis {
        match *self {
            Span::Secs(s) => Millis::from(s) * 1000,
            Span::Hours(h) => Millis::from(h) * 3_600_000,
            Span::Days(d) => Millis::from(d) * 86_400_000,
            Span::Any(v) => v & Millis::MAX,
        }
    }
}

/// An event time: near the base, minutes away, or any integer at all.
#[derive(Arbitrary, Debug)]
enum Ts {
    Secs(i16),
    Minutes(i32),
    Any(i64),
}

impl Ts {
    fn millis(&self) -> Millis {
        match *self {
            Ts::Secs(s) => BASE + Millis::from(s) * 1000,
            Ts::Minutes(m) => BASE + Millis::from(m) * 60_000,
            Ts::Any(v) => v,
        }
    }
}

/// A quantity or price: small, or any integer (negative and overflowing ones included).
#[derive(Arbitrary, Debug)]
enum Amount {
    Small(u8),
    Any(i64),
}

impl Amount {
    fn value(&self) -> i64 {
        match *self {
            Amount::Small(v) => i64::from(v),
            Amount::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Touch {
        input: u8,
        click: bool,
        id: u8,
        ts: Ts,
        user: u8,
        creator: u8,
        product: Option<u8>,
        surface: Option<u8>,
    },
    Purchase {
        input: u8,
        id: u8,
        ts: Ts,
        user: u8,
        order: u8,
        euro: bool,
        items: Vec<(u8, Amount, Amount, Option<u8>)>,
    },
    Refund {
        input: u8,
        id: u8,
        ts: Ts,
        user: u8,
        order: u8,
        items: Option<Vec<(u8, Amount)>>,
    },
    /// Any bytes as one input line.
    Raw {
        input: u8,
        bytes: Vec<u8>,
    },
    /// An input ends (a finished file no longer holds the watermark back).
    Finish {
        input: u8,
    },
    /// The driver moves the watermark itself (as the Kafka worker does for idle inputs).
    Advance(Ts),
}

/// Shoppers and creators share a namespace, so self-attribution happens.
fn party(n: u8) -> String {
    format!("x{}", n % 6)
}

fn product(n: u8) -> String {
    format!("p{}", n % 4)
}

fn engine_config(c: &Cfg) -> EngineConfig {
    let models = [Model::LastTouch, Model::FirstTouch, Model::Linear, Model::PositionBased, Model::TimeDecay];
    let rules = c
        .rules
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, r)| Rule {
            id: format!("r{i}").into(),
            product_id: r.product.map(|p| product(p).into()),
            creator_id: r.creator.map(|p| party(p).into()),
            category: r.category.map(|k| format!("k{}", k % 2).into()),
            rate_bps: u32::from(r.rate % 10_001),
            valid_from: r.from.as_ref().map(Ts::millis),
            valid_until: r.until.as_ref().map(Ts::millis),
        })
        .filter(|r| match (r.valid_from, r.valid_until) {
            (Some(from), Some(until)) => from < until, // as config validation demands
            _ => true,
        })
        .collect();
    EngineConfig {
        model: models[usize::from(c.model) % models.len()],
        click_window: c.click.millis(),
        view_window: c.view.millis(),
        half_life: c.half_life.millis().max(1),
        allow_self_attribution: c.self_attribution,
        surfaces: c
            .live
            .as_ref()
            .map(|(click, view)| ("live".into(), click.as_ref().map(Span::millis), view.as_ref().map(Span::millis)))
            .into_iter()
            .collect(),
        max_out_of_orderness: c.out_of_orderness.millis(),
        allowed_lateness: c.lateness.millis(),
        refund_window: c.refund_window.millis(),
        max_touches_per_user: usize::from(c.max_touches % 8) + 1,
        plan: CommissionPlan::new(u32::from(c.default_rate % 10_001), rules),
        // At most the refund window, as config validation demands.
        lock_period: c.lock_period.as_ref().map(|l| l.millis().min(c.refund_window.millis())),
        shadow_models: models
            .iter()
            .enumerate()
            .filter(|(i, m)| c.shadows & (1 << i) != 0 && **m != models[usize::from(c.model) % models.len()])
            .map(|(_, m)| *m)
            .collect(),
    }
}

/// The op as one input line, or `None` for the control ops.
fn line(op: &Op) -> Option<(u8, Vec<u8>)> {
    let (input, v): (u8, Value) = match op {
        Op::Touch { input, click, id, ts, user, creator, product: p, surface } => (
            *input,
            json!({
                "type": if *click { "click" } else { "view" }, "event_id": format!("e{id}"), "ts": ts.millis(),
                "user_id": party(*user), "creator_id": party(*creator), "product_id": p.map(product),
                "surface": surface.map(|s| ["live", "video", "link"][usize::from(s % 3)]),
            }),
        ),
        Op::Purchase { input, id, ts, user, order, euro, items } => (
            *input,
            json!({
                "type": "purchase", "event_id": format!("e{id}"), "ts": ts.millis(), "user_id": party(*user),
                "order_id": format!("o{}", order % 8), "currency": if *euro { "EUR" } else { "USD" },
                "items": items.iter().take(6).map(|(p, q, price, k)| json!({
                    "product_id": product(*p), "quantity": q.value(), "unit_price": price.value(),
                    "category": k.map(|k| format!("k{}", k % 2)),
                })).collect::<Vec<_>>(),
            }),
        ),
        Op::Refund { input, id, ts, user, order, items } => (
            *input,
            json!({
                "type": "refund", "event_id": format!("e{id}"), "ts": ts.millis(), "user_id": party(*user),
                "order_id": format!("o{}", order % 8),
                "items": items.as_ref().map(|items| items.iter().take(6).map(|(p, q)| json!({
                    "product_id": product(*p), "quantity": q.value(),
                })).collect::<Vec<_>>()),
            }),
        ),
        Op::Raw { input, bytes } => return Some((*input, bytes.clone())),
        Op::Finish { .. } | Op::Advance(_) => return None,
    };
    Some((input, serde_json::to_vec(&v).expect("json serialises")))
}

/// Keeps paid and shadow records apart, and counts dead letters.
#[derive(Default)]
struct Out {
    paid: Vec<Record>,
    shadow: Vec<Record>,
}

impl Sink for Out {
    fn record(&mut self, record: &RecordView<'_>, _: u64) {
        if record.shadow {
            self.shadow.push(record.to_record());
        } else {
            self.paid.push(record.to_record());
        }
    }
    fn dead_letter(&mut self, _: DeadLetter) {}
}

fn step(p: &mut Pipeline, op: &Op, n_inputs: usize, out: &mut Out) {
    match op {
        Op::Finish { input } => p.finish_input(usize::from(*input) % n_inputs, out),
        Op::Advance(ts) => p.advance_watermark(ts.millis(), out),
        _ => {
            let (input, raw) = line(op).expect("an event op");
            let i = usize::from(input) % n_inputs;
            if p.watermarks().is_finished(i) {
                return; // a finished input reads nothing more
            }
            p.on_message(i, &raw, || SourcePos::File { file: "f".into(), line: 0 }, None, 0, out);
        }
    }
}

fuzz_target!(|case: Case| {
    if case.ops.len() > 400 {
        return;
    }
    let cfg = engine_config(&case.cfg);
    let n_inputs = usize::from(case.inputs % 3) + 1;
    // What one shopper may hold (state::Cap: the cap, plus touches newer than the horizon).
    let max_touches = Cap { max: cfg.max_touches_per_user, horizon: 0 }.limit();
    let processing = Processing { engine: cfg, limits: DecodeLimits::default(), max_future_skew: 0 };
    let mut state = Pipeline::new(processing, n_inputs);
    let mut out = Out::default();
    let split = usize::from(case.snapshot_at) % (case.ops.len() + 1);
    let mut twin = None;
    for (k, op) in case.ops.iter().enumerate() {
        if k == split {
            twin = Some((snapshot(&state), out.paid.len(), out.shadow.len()));
        }
        step(&mut state, op, n_inputs, &mut out);
        assert!(state.engine().live_touches() <= max_touches * state.engine().shoppers().max(1));
    }
    let (mut twin, from, from_shadow) = twin.unwrap_or_else(|| (snapshot(&state), out.paid.len(), out.shadow.len()));
    state.finish(&mut out);
    let mut twin_out = Out::default();
    for op in &case.ops[split..] {
        step(&mut twin, op, n_inputs, &mut twin_out);
    }
    twin.finish(&mut twin_out);
    assert!(out.paid[from..] == twin_out.paid[..], "a restored snapshot gives different records");
    assert!(out.shadow[from_shadow..] == twin_out.shadow[..], "a restored snapshot gives different shadow records");
    assert_eq!(state.engine().stats(), twin.engine().stats(), "a restored snapshot counts differently");

    let stats = state.engine().stats();
    assert_eq!(stats.events_in, stats.accounted(), "every input processed, a duplicate or dead-lettered");
    assert_eq!(state.engine().pending(), 0);
    check_records(&out.paid, Some(stats));
    for model in [Model::LastTouch, Model::FirstTouch, Model::Linear, Model::PositionBased, Model::TimeDecay] {
        let of: Vec<Record> = out.shadow.iter().filter(|r| r.model == model).cloned().collect();
        check_records(&of, None);
    }
});

/// The pipeline through its snapshot bytes, as the worker's checkpoints carry it.
fn snapshot(p: &Pipeline) -> Pipeline {
    let snap = p.engine().snapshot();
    let processing = p.processing().clone();
    let engine = Engine::restore(processing.engine.clone(), &snap.globals, snap.shoppers.iter().map(|(_, b)| b.as_slice()))
        .expect("a snapshot restores");
    Pipeline::from_parts(processing, engine, p.watermarks().clone())
}

fn check_records(out: &[Record], stats: Option<&attrib::engine::Stats>) {
    // Per (purchase, item): the shares of every credited creator sum to the gross.
    let mut items: BTreeMap<(&str, Millis, u32), (i64, i64)> = BTreeMap::new();
    // Per commission id: (commission, share, quantity) paid, and reversed so far.
    let mut paid: BTreeMap<&str, (i128, i128, i128)> = BTreeMap::new();
    let mut reversed: BTreeMap<&str, (i128, i128, i128)> = BTreeMap::new();
    let mut totals: BTreeMap<_, (i128, i128)> = BTreeMap::new();
    let mut locked = std::collections::BTreeSet::new();
    for r in out {
        assert!(r.rate_bps <= 10_000);
        // A time_decay touch ~31 half-lives old weighs 0 and is still credited (README).
        assert!(r.weight <= r.total_weight && (r.weight >= 1 || r.model == Model::TimeDecay), "{r:?}");
        assert!(r.touch_ts <= r.purchase_ts);
        match r.kind {
            RecordKind::Commission => {
                assert!(0 <= r.share_minor && r.share_minor <= r.gross_minor, "{r:?}");
                let expect = (i128::from(r.share_minor) * i128::from(r.rate_bps) + 5000) / 10_000;
                assert_eq!(i128::from(r.commission_minor), expect, "round half up: {r:?}");
                let e = items.entry((&r.purchase_event_id, r.purchase_ts, r.item_index)).or_default();
                e.0 += r.share_minor;
                e.1 = r.gross_minor;
                let p = paid.entry(&r.commission_id).or_default();
                p.0 += i128::from(r.commission_minor);
                p.1 += i128::from(r.share_minor);
                p.2 += i128::from(r.quantity);
                totals.entry(r.currency).or_default().0 += i128::from(r.commission_minor);
            }
            RecordKind::Reversal => {
                assert!(r.share_minor <= 0 && r.commission_minor <= 0 && r.quantity >= 1, "{r:?}");
                let original = r.original_commission_id.as_deref().expect("a reversal names its commission");
                let p = paid.get(original).copied().expect("the reversed commission was written before");
                let e = reversed.entry(original).or_default();
                e.0 -= i128::from(r.commission_minor);
                e.1 -= i128::from(r.share_minor);
                e.2 += i128::from(r.quantity);
                assert!(e.0 <= p.0 && e.1 <= p.1 && e.2 <= p.2, "over-reversed {original}: {e:?} of {p:?}");
                totals.entry(r.currency).or_default().1 += i128::from(r.commission_minor);
            }
            RecordKind::Lock => {
                // A lock pays the commission net of every reversal before it.
                let original = r.original_commission_id.as_deref().expect("a lock names its commission");
                let p = paid.get(original).copied().expect("the locked commission was written before");
                let e = reversed.get(original).copied().unwrap_or_default();
                assert_eq!(i128::from(r.commission_minor), p.0 - e.0, "lock of {original}");
                assert_eq!(i128::from(r.share_minor), p.1 - e.1, "lock of {original}");
                assert_eq!(i128::from(r.quantity), p.2 - e.2, "lock of {original}");
                assert!(locked.insert(original), "{original} locked twice");
            }
            RecordKind::Adjustment => panic!("the engine writes no adjustments"),
        }
        if let Some(original) = r.original_commission_id.as_deref().filter(|_| r.kind == RecordKind::Reversal) {
            assert!(!locked.contains(original), "{original} reversed after its lock");
        }
    }
    for (key, (shares, gross)) in items {
        assert_eq!(shares, gross, "shares of {key:?} do not sum to the gross");
    }
    let Some(stats) = stats else { return };
    let count = |k| out.iter().filter(|r| r.kind == k).count() as u64;
    assert_eq!(stats.records_commission, count(RecordKind::Commission));
    assert_eq!(stats.records_reversal, count(RecordKind::Reversal));
    assert_eq!(stats.records_lock, count(RecordKind::Lock));
    // The totals saturate at the i64 bounds (commissions are >= 0, reversals <= 0, so a
    // saturated running sum is the clamped exact sum).
    let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    for (currency, (commission, reversal)) in totals {
        let (c, r) = stats.money.get(&currency).copied().unwrap_or_default();
        assert_eq!((i128::from(c), i128::from(r)), (clamp(commission), clamp(reversal)), "money totals for {currency}");
    }
}

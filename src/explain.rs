//! `attrib explain` (SPEC 8.4): why a purchase paid whom it paid, item by item.
//!
//! Explain replays the inputs through the same [`Pipeline`] as `attrib replay` (same
//! decoding, reading order, watermarks, duplicates and lateness) and watches one
//! purchase. When the engine attributes it, the engine hands its state to
//! [`Output::attributing`](crate::engine::Output::attributing) (a no-op for every other
//! sink), and explain judges each touch with the engine's own pieces:
//! [`EligibleWindows::eligibility`], [`split_eligible`], [`credit`], [`credits_for`],
//! [`split_steps`], [`CommissionPlan::matching`] and [`commission_for`]. The credits are
//! then checked against the records the engine wrote for the purchase, so explain can
//! never tell a story that differs from what replay pays.
//!
//! Touches the engine never had when it attributed the purchase are judged from what
//! the engine did with them as they arrived: a repeat is `duplicate`; one dead-lettered
//! as too late, or one that arrived after the purchase was already attributed (late
//! within `allowed_lateness`, or behind a watermark that had passed the purchase), is
//! `too_late`; one stored but not among the newest `max_touches_per_user` at or before
//! the purchase (still in state or already dropped) is `dropped_by_cap` (expiry never
//! drops a touch inside the longest lookback of a purchase that is still to be
//! attributed).
//!
//! Decisions where the spec is silent: touches listed are the shopper's touches with
//! `T - longest window <= ts <= T`, in `(ts, event_id)` order, each repeat on its own
//! line; a touch that lost has `"weight": 0`; the precedence of verdicts is `duplicate`,
//! `too_late`, `dropped_by_cap`, then the eligibility rules in the spec's order
//! (`outside_window`, `other_product`, `self_attribution`), then
//! `view_beaten_by_click`, then the model (`credited` or `not_chosen_by_model`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead};

use serde::Serialize;

use crate::codec::Decoder;
use crate::config::Config;
use crate::engine::attribution::{credit, credits_for, split_eligible, Eligibility};
use crate::engine::money::{commission_for, split_steps, SplitSteps};
use crate::engine::plan::DEFAULT_RULE_ID;
use crate::engine::state::STOREFRONT;
use crate::engine::{Attributing, UnitKey};
use crate::model::{DeadLetter, Event, Millis, Model, Record, RecordKind, RecordView, SourcePos, TouchKind};
use crate::pipeline::{Pipeline, Processing, Sink};
use crate::replay::{next_input, trim_line, Input};

/// Why explain could not explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reading input: {0}")]
    Io(#[from] io::Error),
    #[error("unknown purchase: no purchase has event_id {id:?} in the input{}", seen_as.as_ref().map(|t| format!(" (that id is a {t})")).unwrap_or_default())]
    UnknownPurchase { id: String, seen_as: Option<String> },
    #[error("purchase {id:?} is ambiguous: shoppers {users:?} each have a purchase with that event_id; pick one with --user")]
    Ambiguous { id: String, users: Vec<String> },
    #[error("purchase {id:?} of shopper {user:?} repeats order_id {order_id:?} of a purchase of the same shopper that was already final: a duplicate order, it paid nothing")]
    DuplicateOrder { id: String, user: String, order_id: String },
    #[error("explain disagrees with the engine on purchase {id:?}: {detail} (a bug: please report it)")]
    Mismatch { id: String, detail: String },
}

/// What [`explain`] looks for.
#[derive(Clone, Debug)]
pub struct Request {
    pub purchase_event_id: String,
    /// The shopper, when several share the purchase's event id.
    pub user_id: Option<String>,
}

/// The answer: `--json` prints exactly the SPEC 8.4 fields; the rest is for people.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub purchase_event_id: String,
    pub order_id: String,
    /// Whether the purchase became final (and was attributed). When not, `items` is empty
    /// and `not_final` says why.
    #[serde(rename = "final")]
    pub is_final: bool,
    pub items: Vec<ItemExplanation>,
    #[serde(skip)]
    pub user_id: String,
    #[serde(skip)]
    pub purchase_ts: Millis,
    #[serde(skip)]
    pub currency: String,
    #[serde(skip)]
    pub model: Model,
    /// The longest window (the lookback), and the windows that make it up.
    #[serde(skip)]
    pub lookback: Millis,
    #[serde(skip)]
    pub windows: String,
    #[serde(skip)]
    pub not_final: Option<String>,
}

/// One item of the purchase.
#[derive(Clone, Debug, Serialize)]
pub struct ItemExplanation {
    pub item_index: usize,
    pub touches: Vec<TouchVerdict>,
    pub credits: Vec<CreditLine>,
    #[serde(skip)]
    pub product_id: String,
    #[serde(skip)]
    pub category: Option<String>,
    #[serde(skip)]
    pub quantity: i64,
    #[serde(skip)]
    pub unit_price: i64,
    #[serde(skip)]
    pub gross: i64,
    /// The split, when any touch was credited.
    #[serde(skip)]
    pub split: Option<SplitSteps>,
}

/// One touch and what became of it for this item.
#[derive(Clone, Debug, Serialize)]
pub struct TouchVerdict {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: TouchKind,
    pub ts: Millis,
    pub creator_id: String,
    pub verdict: Verdict,
    /// The model's weight when credited, else 0.
    pub weight: u64,
    #[serde(skip)]
    pub product_id: Option<String>,
    #[serde(skip)]
    pub surface: Option<String>,
    /// Why, in words (the window it missed, the product it promotes, ...).
    #[serde(skip)]
    pub why: String,
}

/// The verdict on one touch (SPEC 8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Credited,
    OutsideWindow,
    OtherProduct,
    SelfAttribution,
    ViewBeatenByClick,
    NotChosenByModel,
    DroppedByCap,
    TooLate,
    Duplicate,
}

impl Verdict {
    /// The SPEC word.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Credited => "credited",
            Verdict::OutsideWindow => "outside_window",
            Verdict::OtherProduct => "other_product",
            Verdict::SelfAttribution => "self_attribution",
            Verdict::ViewBeatenByClick => "view_beaten_by_click",
            Verdict::NotChosenByModel => "not_chosen_by_model",
            Verdict::DroppedByCap => "dropped_by_cap",
            Verdict::TooLate => "too_late",
            Verdict::Duplicate => "duplicate",
        }
    }
}

/// One credited creator on one item.
#[derive(Clone, Debug, Serialize)]
pub struct CreditLine {
    pub creator_id: String,
    pub weight: u64,
    pub share_minor: i64,
    pub rate_bps: u32,
    pub rule_id: String,
    pub commission_minor: i64,
    /// The rules that applied and lost: `(id, score, rate_bps)`, in the order they
    /// would have won.
    #[serde(skip)]
    pub other_rules: Vec<(String, u8, u32)>,
    /// The score of the winning rule (`None`: the default rate).
    #[serde(skip)]
    pub rule_score: Option<u8>,
}

/// What the engine did with one of the shopper's touches as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    Stored,
    Duplicate,
    TooLate,
}

/// One of the shopper's touches, as read.
#[derive(Clone, Debug)]
struct Logged {
    event_id: String,
    kind: TouchKind,
    ts: Millis,
    creator_id: String,
    product_id: Option<String>,
    surface: Option<String>,
    arrival: Arrival,
    /// Handled after the purchase was attributed.
    after: bool,
}

/// A verdict on a touch in state, per item.
type StateVerdict = (Verdict, u64, String);

/// One item: verdicts on the touches in state by event id, the credits, the split.
type JudgedItem = (HashMap<String, StateVerdict>, Vec<CreditLine>, Option<SplitSteps>);

/// The purchase as the engine attributed it.
struct Attributed {
    lookback_from: Millis,
    items: Vec<JudgedItem>,
    /// `(creator, count of credited touches, latest credited touch id)` per item, from
    /// the engine's [`credits_for`], to check against the records.
    engine_credits: Vec<Vec<(String, u64, u32, String)>>,
}

/// Watches the pipeline for the purchase.
struct Watch {
    event_id: String,
    user_id: String,
    /// The purchase's records are being written.
    inside: bool,
    finalized: bool,
    attributed: Option<Attributed>,
    records: Vec<Record>,
}

impl Sink for Watch {
    fn record(&mut self, record: &RecordView<'_>, _tag: u64) {
        if self.inside && !record.shadow && record.kind == RecordKind::Commission {
            self.records.push(record.to_record());
        }
    }

    fn dead_letter(&mut self, _dead_letter: DeadLetter) {}

    fn unit(&mut self, key: &UnitKey<'_>, _on_arrival: bool) {
        let ours = key.class == 1 && key.event_id == self.event_id && key.user_id == self.user_id;
        self.inside = ours && !self.finalized;
        self.finalized |= ours;
    }

    fn attributing(&mut self, a: &Attributing<'_>) {
        if self.inside && self.attributed.is_none() {
            self.attributed = Some(judge(a));
        }
    }
}

/// Judges every touch in state for every item, with the engine's own functions.
fn judge(a: &Attributing<'_>) -> Attributed {
    let (p, cfg, sh, w) = (a.purchase, a.config, a.shoppers, a.windows);
    let range = w.range(a.touches);
    let window = &a.touches[range];
    let mut items = Vec::new();
    let mut engine_credits = Vec::new();
    for item in &p.items {
        let product = sh.products.get(&item.product_id).unwrap_or(STOREFRONT);
        let allow_self = cfg.allow_self_attribution;
        let eligibility = |t: &crate::engine::state::StoredTouch| w.eligibility(t, product, allow_self);
        let (clicks, views) = split_eligible(window, |t| eligibility(t) == Eligibility::Eligible);
        let chosen = if clicks.is_empty() { &views } else { &clicks };
        let ts: Vec<Millis> = chosen.iter().map(|t| t.ts).collect();
        let weights = if chosen.is_empty() { Vec::new() } else { credit(cfg.model, &ts, p.ts, cfg.half_life) };
        let mut verdicts: HashMap<String, StateVerdict> = HashMap::new();
        for t in window {
            let id = sh.touch_id(t).to_string();
            let floor = w.floor(t).unwrap_or(p.ts);
            let v = match eligibility(t) {
                Eligibility::OutsideWindow => (
                    Verdict::OutsideWindow,
                    0,
                    format!("its {} window starts at {}", t.kind().as_str(), format_ts(floor)),
                ),
                Eligibility::OtherProduct => {
                    (Verdict::OtherProduct, 0, format!("promotes {}", sh.products.name(t.product)))
                }
                Eligibility::SelfAttribution => (Verdict::SelfAttribution, 0, "the creator is the shopper".to_string()),
                Eligibility::Eligible if t.kind() == TouchKind::View && !clicks.is_empty() => {
                    (Verdict::ViewBeatenByClick, 0, format!("{} eligible click(s)", clicks.len()))
                }
                Eligibility::Eligible => {
                    let at = chosen.iter().position(|c| std::ptr::eq(*c, t));
                    match at.and_then(|i| weights.iter().find(|x| x.0 == i)) {
                        Some(&(_, weight)) => (Verdict::Credited, weight, String::new()),
                        None => (Verdict::NotChosenByModel, 0, format!("{} picks others", cfg.model.as_str())),
                    }
                }
            };
            verdicts.insert(id, v);
        }
        let found = credits_for(cfg.model, a.touches, w, product, allow_self, cfg.half_life, p.ts);
        engine_credits.push(
            found
                .iter()
                .map(|c| {
                    (sh.creators.name(c.creator).to_string(), c.weight, c.count, sh.touch_id(&c.latest).to_string())
                })
                .collect(),
        );
        let creator_weights: Vec<u64> = found.iter().map(|c| c.weight).collect();
        let split = split_steps(item.gross(), &creator_weights);
        let mut credits = Vec::new();
        if let Some(s) = &split {
            for (c, &share) in found.iter().zip(&s.shares) {
                let creator_id = sh.creators.name(c.creator);
                let category = item.category.as_deref();
                let mut matched = cfg.plan.matching(&item.product_id, creator_id, category, p.ts);
                let winner = matched.next();
                let (rate_bps, rule_id) = cfg.plan.rate_for(&item.product_id, creator_id, category, p.ts);
                credits.push(CreditLine {
                    creator_id: creator_id.to_string(),
                    weight: c.weight,
                    share_minor: share,
                    rate_bps,
                    rule_id: rule_id.to_string(),
                    commission_minor: commission_for(share, rate_bps),
                    other_rules: matched.map(|r| (r.id.to_string(), r.specificity(), r.rate_bps)).collect(),
                    rule_score: winner.map(|r| r.specificity()),
                });
            }
        }
        items.push((verdicts, credits, split));
    }
    Attributed { lookback_from: w.oldest(), items, engine_credits }
}

/// Explains one purchase of `inputs` (opened twice: once to find the purchase's
/// shopper, once to replay).
pub fn explain<R: BufRead>(
    config: &Config,
    open: impl Fn() -> io::Result<Vec<Input<R>>>,
    req: &Request,
) -> Result<Explanation, ExplainError> {
    let processing = Processing::from_config(config);
    let (user_id, order_id) = find(&processing, open()?, req)?;
    let inputs = open()?;
    let mut pipeline = Pipeline::new(processing.clone(), inputs.len());
    let mut readers: Vec<(Input<R>, u64)> = inputs.into_iter().map(|i| (i, 0)).collect();
    let mut watch = Watch {
        event_id: req.purchase_event_id.clone(),
        user_id: user_id.clone(),
        inside: false,
        finalized: false,
        attributed: None,
        records: Vec::new(),
    };
    let mut log: Vec<Logged> = Vec::new();
    // What became of the purchase's own first copy, if not accepted.
    let mut purchase_arrival: Option<Arrival> = None;
    let mut line = Vec::with_capacity(4096);
    while let Some(i) = next_input(pipeline.watermarks(), readers.len()) {
        let (input, line_no) = &mut readers[i];
        line.clear();
        if input.reader.read_until(b'\n', &mut line)? == 0 {
            pipeline.finish_input(i, &mut watch);
            continue;
        }
        *line_no += 1;
        let raw = trim_line(&line);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = pipeline.decode(raw);
        let ours = match &decoded {
            Ok(e) if e.user_id() == user_id => Some(e.event_type()),
            _ => None,
        };
        let before = ours.map(|t| pipeline.engine().stats().by_type[t as usize]);
        let after_final = watch.finalized;
        let (name, n) = (&input.name, *line_no);
        pipeline.on_decoded(
            i,
            decoded.as_ref(),
            raw,
            || SourcePos::File { file: name.clone(), line: n },
            None,
            0,
            &mut watch,
        );
        let (Some(ty), Some(before), Ok(event)) = (ours, before, &decoded) else { continue };
        let now = pipeline.engine().stats().by_type[ty as usize];
        let arrival = if now.duplicate_event > before.duplicate_event {
            Arrival::Duplicate
        } else if now.too_late > before.too_late {
            Arrival::TooLate
        } else {
            Arrival::Stored
        };
        match event {
            Event::Touch(t) => log.push(Logged {
                event_id: t.event_id.to_string(),
                kind: t.kind,
                ts: t.ts,
                creator_id: t.creator_id.to_string(),
                product_id: t.product_id.as_ref().map(|p| p.to_string()),
                surface: t.surface.as_ref().map(|s| s.to_string()),
                arrival,
                after: after_final,
            }),
            Event::Purchase(p) if p.event_id == req.purchase_event_id && purchase_arrival.is_none() => {
                purchase_arrival = Some(arrival);
            }
            _ => {}
        }
    }
    pipeline.finish(&mut watch);

    let cfg = &processing.engine;
    let purchase = find_purchase(&processing, open()?, &req.purchase_event_id, &user_id)?;
    let mut out = Explanation {
        purchase_event_id: req.purchase_event_id.clone(),
        order_id,
        is_final: watch.finalized,
        items: Vec::new(),
        user_id: user_id.clone(),
        purchase_ts: purchase.ts,
        currency: purchase.currency.to_string(),
        model: cfg.model,
        lookback: cfg.max_window(),
        windows: describe_windows(cfg),
        not_final: None,
    };
    if !watch.finalized {
        out.not_final = Some(match purchase_arrival {
            Some(Arrival::TooLate) => {
                "it was dead-lettered as too_late (behind the watermark by more than allowed_lateness)".into()
            }
            Some(Arrival::Duplicate) => {
                "its event_id repeats an earlier event of the same shopper, so it was ignored as a duplicate".into()
            }
            _ => "it never became final".into(),
        });
        return Ok(out);
    }
    let Some(attributed) = watch.attributed else {
        return Err(ExplainError::DuplicateOrder {
            id: req.purchase_event_id.clone(),
            user: user_id,
            order_id: out.order_id,
        });
    };
    // Which copy of each id is the one in state: the last stored before attribution.
    let mut last_stored: HashMap<&str, usize> = HashMap::new();
    for (i, l) in log.iter().enumerate() {
        if l.arrival == Arrival::Stored && !l.after {
            last_stored.insert(&l.event_id, i);
        }
    }
    let in_lookback: Vec<usize> =
        (0..log.len()).filter(|&i| log[i].ts >= attributed.lookback_from && log[i].ts <= purchase.ts).collect();
    for (index, (item, (verdicts, credits, split))) in purchase.items.iter().zip(attributed.items).enumerate() {
        let mut touches: Vec<TouchVerdict> = Vec::new();
        for &i in &in_lookback {
            let l = &log[i];
            let (verdict, weight, why) = match l.arrival {
                Arrival::Duplicate => (Verdict::Duplicate, 0, "a repeat of an event already seen".to_string()),
                Arrival::TooLate => (Verdict::TooLate, 0, "dead-lettered as too_late".to_string()),
                Arrival::Stored if l.after => {
                    (Verdict::TooLate, 0, "arrived after the purchase was attributed".to_string())
                }
                Arrival::Stored => match verdicts.get(&l.event_id) {
                    Some(v) if last_stored.get(l.event_id.as_str()) == Some(&i) => v.clone(),
                    _ => {
                        (Verdict::DroppedByCap, 0, format!("over max_touches_per_user ({})", cfg.max_touches_per_user))
                    }
                },
            };
            touches.push(TouchVerdict {
                event_id: l.event_id.clone(),
                kind: l.kind,
                ts: l.ts,
                creator_id: l.creator_id.clone(),
                verdict,
                weight,
                product_id: l.product_id.clone(),
                surface: l.surface.clone(),
                why,
            });
        }
        // Stable: repeats of one id keep their arrival order.
        touches.sort_by(|a, b| (a.ts, a.event_id.as_bytes()).cmp(&(b.ts, b.event_id.as_bytes())));
        out.items.push(ItemExplanation {
            item_index: index,
            touches,
            credits,
            product_id: item.product_id.to_string(),
            category: item.category.as_ref().map(|c| c.to_string()),
            quantity: item.quantity,
            unit_price: item.unit_price,
            gross: item.gross(),
            split,
        });
    }
    check(&out, &attributed.engine_credits, &watch.records)?;
    Ok(out)
}

/// The credits must be exactly the engine's records, and the credited touches exactly
/// the engine's credited touches.
fn check(
    out: &Explanation,
    engine_credits: &[Vec<(String, u64, u32, String)>],
    records: &[Record],
) -> Result<(), ExplainError> {
    let fail = |detail: String| Err(ExplainError::Mismatch { id: out.purchase_event_id.clone(), detail });
    let mine: Vec<(usize, &str, u64, i64, u32, &str, i64)> = out
        .items
        .iter()
        .flat_map(|it| {
            it.credits.iter().map(move |c| {
                (
                    it.item_index,
                    c.creator_id.as_str(),
                    c.weight,
                    c.share_minor,
                    c.rate_bps,
                    c.rule_id.as_str(),
                    c.commission_minor,
                )
            })
        })
        .collect();
    let theirs: Vec<(usize, &str, u64, i64, u32, &str, i64)> = records
        .iter()
        .map(|r| {
            (
                r.item_index as usize,
                &*r.creator_id,
                r.weight,
                r.share_minor,
                r.rate_bps,
                &*r.rule_id,
                r.commission_minor,
            )
        })
        .collect();
    if mine != theirs {
        return fail(format!("credits {mine:?} but records {theirs:?}"));
    }
    for (item, engine) in out.items.iter().zip(engine_credits) {
        for (creator, weight, count, latest) in engine {
            let credited: Vec<&TouchVerdict> =
                item.touches.iter().filter(|t| t.verdict == Verdict::Credited && &t.creator_id == creator).collect();
            let sum: u64 = credited.iter().map(|t| t.weight).sum();
            if sum != *weight
                || credited.len() != *count as usize
                || credited.last().map(|t| &t.event_id) != Some(latest)
            {
                return fail(format!(
                    "item {}: creator {creator} has weight {weight} from {count} touches (latest {latest}), the touches say {sum} from {}",
                    item.item_index,
                    credited.len()
                ));
            }
        }
        let credited = item.touches.iter().filter(|t| t.verdict == Verdict::Credited).count();
        if credited != engine.iter().map(|c| c.2 as usize).sum::<usize>() {
            return fail(format!("item {}: credited touches of creators the engine did not credit", item.item_index));
        }
    }
    Ok(())
}

/// First pass: the purchase's shopper and order id.
fn find<R: BufRead>(
    processing: &Processing,
    inputs: Vec<Input<R>>,
    req: &Request,
) -> Result<(String, String), ExplainError> {
    let id = &req.purchase_event_id;
    let mut users: Vec<(String, String)> = Vec::new();
    let mut seen_as = None;
    scan(processing, inputs, |e| {
        if e.event_id() != id.as_str() {
            return;
        }
        match e {
            Event::Purchase(p) => {
                if req.user_id.as_deref().is_none_or(|u| u == &*p.user_id) && !users.iter().any(|u| u.0 == *p.user_id) {
                    users.push((p.user_id.to_string(), p.order_id.to_string()));
                }
            }
            other => {
                seen_as.get_or_insert_with(|| other.event_type().as_str().to_string());
            }
        }
    })?;
    match users.len() {
        0 => Err(ExplainError::UnknownPurchase { id: id.clone(), seen_as }),
        1 => Ok(users.remove(0)),
        _ => Err(ExplainError::Ambiguous { id: id.clone(), users: users.into_iter().map(|u| u.0).collect() }),
    }
}

/// The purchase itself (its first copy).
fn find_purchase<R: BufRead>(
    processing: &Processing,
    inputs: Vec<Input<R>>,
    id: &str,
    user: &str,
) -> Result<crate::model::Purchase, ExplainError> {
    let mut found = None;
    scan(processing, inputs, |e| {
        if let Event::Purchase(p) = e {
            if found.is_none() && &*p.event_id == id && &*p.user_id == user {
                found = Some(p.clone());
            }
        }
    })?;
    found.ok_or_else(|| ExplainError::UnknownPurchase { id: id.to_string(), seen_as: None })
}

fn scan<R: BufRead>(processing: &Processing, inputs: Vec<Input<R>>, mut f: impl FnMut(&Event)) -> io::Result<()> {
    let mut decoder = Decoder::new(processing.limits);
    let mut line = Vec::with_capacity(4096);
    for mut input in inputs {
        loop {
            line.clear();
            if input.reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if let Ok(e) = decoder.decode(trim_line(&line)) {
                f(&e);
            }
        }
    }
    Ok(())
}

fn describe_windows(cfg: &crate::engine::EngineConfig) -> String {
    let d = |ms: Millis| humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string();
    let mut s = format!("click {}, view {}", d(cfg.click_window), d(cfg.view_window));
    for (name, c, v) in &cfg.surfaces {
        let _ =
            write!(s, "; {name}: click {}, view {}", d(c.unwrap_or(cfg.click_window)), d(v.unwrap_or(cfg.view_window)));
    }
    s
}

/// An event time as RFC 3339 (UTC, milliseconds).
pub fn format_ts(ms: Millis) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        }
        Err(_) => ms.to_string(),
    }
}

/// Explains from files.
pub fn explain_files(
    config: &Config,
    files: &[std::path::PathBuf],
    req: &Request,
) -> Result<Explanation, ExplainError> {
    explain(config, || crate::replay::open_files(files), req)
}

/// Explains from in-memory JSONL texts (one per input): for tests.
pub fn explain_texts(config: &Config, texts: &[&str], req: &Request) -> Result<Explanation, ExplainError> {
    explain(
        config,
        || {
            Ok(texts
                .iter()
                .enumerate()
                .map(|(i, t)| Input { name: format!("input-{i}"), reader: io::Cursor::new(t.as_bytes()) })
                .collect())
        },
        req,
    )
}

impl Explanation {
    /// The `--json` form (SPEC 8.4): one object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an explanation serialises")
    }

    /// The human form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "purchase {} (order {}, shopper {}) at {}",
            self.purchase_event_id,
            self.order_id,
            self.user_id,
            format_ts(self.purchase_ts)
        );
        if let Some(why) = &self.not_final {
            let _ = writeln!(s, "NOT FINAL: {why}; it paid nothing.");
            return s;
        }
        let _ = writeln!(
            s,
            "model {}; windows {}; lookback {} (touches from {})",
            self.model.as_str(),
            self.windows,
            humantime::format_duration(std::time::Duration::from_millis(self.lookback.max(0) as u64)),
            format_ts(self.purchase_ts.saturating_sub(self.lookback))
        );
        for item in &self.items {
            let _ = writeln!(
                s,
                "\nitem {}: {} x{} @ {} = {} {}{}",
                item.item_index,
                item.product_id,
                item.quantity,
                item.unit_price,
                item.gross,
                self.currency,
                item.category.as_ref().map(|c| format!(" (category {c})")).unwrap_or_default()
            );
            if item.touches.is_empty() {
                let _ = writeln!(s, "  no touches of the shopper in the lookback");
            } else {
                let mut rows = vec![["ts", "type", "event", "creator", "product", "surface", "verdict", "why"]
                    .map(String::from)
                    .to_vec()];
                for t in &item.touches {
                    let verdict = if t.verdict == Verdict::Credited {
                        format!("CREDITED weight {}", t.weight)
                    } else {
                        t.verdict.as_str().to_string()
                    };
                    rows.push(vec![
                        format_ts(t.ts),
                        t.kind.as_str().into(),
                        t.event_id.clone(),
                        t.creator_id.clone(),
                        t.product_id.clone().unwrap_or("(storefront)".into()),
                        t.surface.clone().unwrap_or("-".into()),
                        verdict,
                        t.why.clone(),
                    ]);
                }
                table(&mut s, "  ", &rows);
            }
            let Some(split) = &item.split else {
                let _ = writeln!(s, "  unattributed: no credited touch, no record");
                continue;
            };
            let _ = writeln!(
                s,
                "  split {} by weight, W = {}: base = floor({} * w / W), remainder = {} * w mod W",
                item.gross, split.total_weight, item.gross, item.gross
            );
            let mut rows =
                vec![["creator", "weight", "base", "remainder", "leftover", "share", "rate", "rule", "commission"]
                    .map(String::from)
                    .to_vec()];
            for (i, c) in item.credits.iter().enumerate() {
                let bonus = split.leftover_to.iter().position(|&x| x == i);
                rows.push(vec![
                    c.creator_id.clone(),
                    c.weight.to_string(),
                    split.base[i].to_string(),
                    split.remainder[i].to_string(),
                    bonus.map(|k| format!("+1 (#{})", k + 1)).unwrap_or("-".into()),
                    c.share_minor.to_string(),
                    format!("{} bps", c.rate_bps),
                    c.rule_id.clone(),
                    c.commission_minor.to_string(),
                ]);
            }
            table(&mut s, "  ", &rows);
            let _ = writeln!(
                s,
                "  leftover {} unit(s) to the largest remainders (ties: first credited touch first); commission = (share * rate + 5000) / 10000",
                split.leftover
            );
            for c in &item.credits {
                let rule = match c.rule_score {
                    Some(score) => format!("rule {:?} (score {score}) sets {} bps", c.rule_id, c.rate_bps),
                    None => format!("no rule applies: {DEFAULT_RULE_ID} rate {} bps", c.rate_bps),
                };
                let others = if c.other_rules.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = c
                        .other_rules
                        .iter()
                        .map(|(id, score, rate)| format!("{id:?} (score {score}, {rate} bps)"))
                        .collect();
                    format!("; also matched {}", list.join(", "))
                };
                let _ = writeln!(s, "  {}: {rule}{others}", c.creator_id);
            }
        }
        s
    }
}

/// Left-aligned columns.
fn table(s: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}

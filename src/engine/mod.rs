//! The attribution engine: events and watermarks in, records out (SPEC §2–§5).
//!
//! Synchronous and pure: time comes only from events, and the engine knows nothing of
//! files or Kafka. Drivers ([`crate::replay`], the Kafka worker, tests, benchmarks) feed
//! it with [`Engine::process`] and [`Engine::advance_watermark`] and receive records
//! through an [`Output`].
//!
//! Life of a purchase: it waits in `pending` until the watermark passes it (`W > ts`),
//! then final events are handled in `(ts, event_id)` order: each item is attributed to
//! the shopper's eligible touches, the gross is split and commissions computed, and the
//! order goes into the ledger for refunds.

pub mod attribution;
pub mod ledger;
pub mod money;
pub mod plan;
pub mod state;
pub mod watermark;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use compact_str::format_compact;
use serde::{Deserialize, Serialize};

use self::ledger::{Credit, Ledger, Line, Order, RefundOutcome};
use self::plan::CommissionPlan;
use self::state::{id_hash, Inserted, StoredTouch, TouchStore, UserTouches, STOREFRONT};
use crate::model::{
    Currency, DeadLetterReason, Event, EventType, Item, Millis, Model, Purchase, Record, RecordKind, Refund, Str,
    TouchKind,
};

/// Engine settings, validated (see [`crate::config`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub model: Model,
    pub click_window: Millis,
    pub view_window: Millis,
    pub half_life: Millis,
    pub allow_self_attribution: bool,
    /// Per-surface `(name, click_window, view_window)` overrides.
    pub surfaces: Vec<(Str, Option<Millis>, Option<Millis>)>,
    pub max_out_of_orderness: Millis,
    pub allowed_lateness: Millis,
    pub refund_window: Millis,
    pub max_touches_per_user: usize,
    pub plan: CommissionPlan,
}

impl Default for EngineConfig {
    fn default() -> Self {
        const DAY: Millis = 86_400_000;
        EngineConfig {
            model: Model::LastTouch,
            click_window: 7 * DAY,
            view_window: DAY,
            half_life: DAY,
            allow_self_attribution: false,
            surfaces: Vec::new(),
            max_out_of_orderness: 5_000,
            allowed_lateness: 3_600_000,
            refund_window: 30 * DAY,
            max_touches_per_user: 10_000,
            plan: CommissionPlan::new(1000, Vec::new()),
        }
    }
}

impl EngineConfig {
    /// `[click, view]` window per surface index; index 0 is the default.
    fn window_table(&self) -> Vec<[Millis; 2]> {
        std::iter::once([self.click_window, self.view_window])
            .chain(
                self.surfaces.iter().map(|(_, c, v)| [c.unwrap_or(self.click_window), v.unwrap_or(self.view_window)]),
            )
            .collect()
    }

    /// The longest window of all, overrides included.
    pub fn max_window(&self) -> Millis {
        self.window_table().iter().flatten().copied().max().unwrap_or(0)
    }
}

/// Receives the engine's records. `tag` is the opaque value given to
/// [`Engine::process`] with the purchase or refund that produced the record.
pub trait Output {
    /// One commission or reversal record.
    fn record(&mut self, record: Record, tag: u64);
}

impl Output for Vec<Record> {
    fn record(&mut self, record: Record, _tag: u64) {
        self.push(record);
    }
}

/// What became of one event handed to [`Engine::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (touch) or queued / handled (purchase, refund). `late`: behind the watermark.
    Accepted { late: bool },
    /// A repeat of an event already seen; ignored.
    Duplicate,
    /// Too far behind the watermark; the caller dead-letters it as `too_late`.
    TooLate,
}

/// Counters per event type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    /// Valid events of this type handed to the engine.
    pub read: u64,
    pub processed: u64,
    pub duplicate_event: u64,
    pub duplicate_order: u64,
    pub late: u64,
    pub too_late: u64,
}

/// Everything the engine counts. Drivers add what happens before the engine
/// (`events_in`, decode dead letters) through [`Stats::dead_letter`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Inputs seen by the driver (every non-blank line or message).
    pub events_in: u64,
    pub by_type: [TypeStats; 4],
    /// Dead letters by reason, indexed like [`DeadLetterReason::ALL`].
    pub dead_letter: [u64; 6],
    pub purchases_attributed: u64,
    pub purchases_unattributed: u64,
    pub items_attributed: u64,
    pub items_unattributed: u64,
    pub refund_applied: u64,
    pub refund_unknown_order: u64,
    pub refund_unattributed_order: u64,
    pub refund_expired: u64,
    pub refund_excess_units: u64,
    pub records_commission: u64,
    pub records_reversal: u64,
    pub touches_evicted_cap: u64,
    /// Per currency: (commission total, reversal total), minor units; a summary figure,
    /// saturating at the i64 bounds (each record's own amounts are exact).
    pub money: BTreeMap<Currency, (i64, i64)>,
}

impl Stats {
    /// Counts one dead letter.
    pub fn dead_letter(&mut self, reason: DeadLetterReason) {
        self.dead_letter[reason as usize] += 1;
    }

    fn of(&mut self, t: EventType) -> &mut TypeStats {
        &mut self.by_type[t as usize]
    }

    /// Sum of a per-type counter over all types.
    pub fn total(&self, f: impl Fn(&TypeStats) -> u64) -> u64 {
        self.by_type.iter().map(f).sum()
    }

    /// Every input is processed, a duplicate, or dead-lettered.
    pub fn accounted(&self) -> u64 {
        self.total(|t| t.processed + t.duplicate_event + t.duplicate_order) + self.dead_letter.iter().sum::<u64>()
    }

    /// Flat named counters (the names used by golden scenarios and metrics).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        m.insert("events_in".into(), self.events_in);
        m.insert("processed".into(), self.total(|t| t.processed));
        m.insert("duplicate_event".into(), self.total(|t| t.duplicate_event));
        m.insert("duplicate_order".into(), self.total(|t| t.duplicate_order));
        m.insert("late".into(), self.total(|t| t.late));
        for r in DeadLetterReason::ALL {
            m.insert(format!("dead_letter.{}", r.as_str()), self.dead_letter[r as usize]);
        }
        for t in EventType::ALL {
            m.insert(format!("events.{}", t.as_str()), self.by_type[t as usize].read);
        }
        m.insert("purchases.attributed".into(), self.purchases_attributed);
        m.insert("purchases.unattributed".into(), self.purchases_unattributed);
        m.insert("items.attributed".into(), self.items_attributed);
        m.insert("items.unattributed".into(), self.items_unattributed);
        m.insert("refund.applied".into(), self.refund_applied);
        m.insert("refund.unknown_order".into(), self.refund_unknown_order);
        m.insert("refund.unattributed_order".into(), self.refund_unattributed_order);
        m.insert("refund.expired".into(), self.refund_expired);
        m.insert("refund.excess_units".into(), self.refund_excess_units);
        m.insert("records.commission".into(), self.records_commission);
        m.insert("records.reversal".into(), self.records_reversal);
        m.insert("touches.evicted_cap".into(), self.touches_evicted_cap);
        m
    }
}

/// A purchase or refund waiting for the watermark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Final {
    Purchase(Purchase),
    Refund(Refund),
}

/// One creator's credit on one item.
struct CreatorCredit<'a> {
    creator: u32,
    weight: u64,
    latest: &'a StoredTouch,
    count: u32,
}

impl<'a> CreatorCredit<'a> {
    /// The whole item to one touch (weight 1).
    fn single(touch: &'a StoredTouch) -> CreatorCredit<'a> {
        CreatorCredit { creator: touch.creator, weight: 1, latest: touch, count: 1 }
    }
}

/// The attribution engine for one partition of shoppers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Engine {
    cfg: EngineConfig,
    /// `[click, view]` window by surface index.
    windows: Vec<[Millis; 2]>,
    /// Longest window plus allowed lateness: how long touches are kept.
    touch_retention: Millis,
    /// Longest window of any kind and surface.
    max_window: Millis,
    /// Longest click window of any surface.
    max_click_window: Millis,
    watermark: Millis,
    touches: TouchStore,
    pending: BTreeMap<(Millis, Str), (Final, u64)>,
    /// Event id hashes of purchases and refunds seen, until they are too late to repeat.
    seen_ids: HashSet<u128, ahash::RandomState>,
    seen_expiry: BinaryHeap<Reverse<(Millis, u128)>>,
    ledger: Ledger,
    stats: Stats,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: EngineConfig) -> Engine {
        let windows = cfg.window_table();
        let ledger = Ledger::new(cfg.refund_window.saturating_add(cfg.allowed_lateness));
        let max_window = cfg.max_window();
        let max_click_window = windows.iter().map(|w| w[0]).max().unwrap_or(0);
        let touch_retention = max_window.saturating_add(cfg.allowed_lateness);
        Engine {
            cfg,
            windows,
            touch_retention,
            max_window,
            max_click_window,
            watermark: Millis::MIN,
            touches: TouchStore::default(),
            pending: BTreeMap::new(),
            seen_ids: HashSet::default(),
            seen_expiry: BinaryHeap::new(),
            ledger,
            stats: Stats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The current watermark (`Millis::MIN` before the first advance).
    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters, for drivers to add what happens before the engine.
    pub fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Touches in state.
    pub fn live_touches(&self) -> usize {
        self.touches.live()
    }

    /// Shoppers with touches in state.
    pub fn shoppers(&self) -> usize {
        self.touches.shoppers()
    }

    /// Purchases and refunds waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Orders in the ledger.
    pub fn ledger_len(&self) -> usize {
        self.ledger.len()
    }

    /// Takes one valid event. `tag` is handed back with the records it produces.
    pub fn process(&mut self, event: Event, tag: u64, out: &mut impl Output) -> Outcome {
        let ts = event.ts();
        let ty = event.event_type();
        let late = ts < self.watermark;
        let hash = id_hash(event.event_id());
        self.stats.of(ty).read += 1;
        let outcome = match event {
            Event::Touch(touch) => {
                if ts < self.watermark.saturating_sub(self.touch_retention) {
                    Outcome::TooLate
                } else if self.seen_ids.contains(&hash) {
                    Outcome::Duplicate
                } else {
                    let surface = self.surface_index(touch.surface.as_deref());
                    match self.touches.insert(touch, hash, surface, self.cfg.max_touches_per_user) {
                        Inserted::Duplicate => Outcome::Duplicate,
                        Inserted::Stored { evicted } => {
                            self.stats.touches_evicted_cap += evicted as u64;
                            self.stats.of(ty).processed += 1;
                            Outcome::Accepted { late }
                        }
                    }
                }
            }
            Event::Purchase(_) | Event::Refund(_) => {
                if ts < self.watermark.saturating_sub(self.cfg.allowed_lateness) {
                    Outcome::TooLate
                } else if self.is_seen(hash) {
                    Outcome::Duplicate
                } else {
                    let (id, fin) = match event {
                        Event::Purchase(p) => (p.event_id.clone(), Final::Purchase(p)),
                        Event::Refund(r) => (r.event_id.clone(), Final::Refund(r)),
                        Event::Touch(_) => unreachable!("matched above"),
                    };
                    self.seen_ids.insert(hash);
                    self.seen_expiry.push(Reverse((ts, hash)));
                    if late {
                        // Behind the watermark: final on arrival.
                        self.finalize(fin, tag, out);
                    } else {
                        self.pending.insert((ts, id), (fin, tag));
                    }
                    Outcome::Accepted { late }
                }
            }
        };
        match outcome {
            Outcome::Accepted { late: true } => self.stats.of(ty).late += 1,
            Outcome::Duplicate => self.stats.of(ty).duplicate_event += 1,
            Outcome::TooLate => {
                self.stats.of(ty).too_late += 1;
                self.stats.dead_letter(DeadLetterReason::TooLate);
            }
            Outcome::Accepted { late: false } => {}
        }
        outcome
    }

    /// Moves the watermark to `w` (never backwards): purchases and refunds with `ts < w`
    /// become final, in `(ts, event_id)` order, then state older than needed is dropped.
    pub fn advance_watermark(&mut self, w: Millis, out: &mut impl Output) {
        if w <= self.watermark {
            return;
        }
        self.watermark = w;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 >= w {
                break;
            }
            let (fin, tag) = entry.remove();
            self.finalize(fin, tag, out);
        }
        self.touches.expire_before(w.saturating_sub(self.touch_retention));
        let id_bound = w.saturating_sub(self.cfg.allowed_lateness);
        while let Some(Reverse((ts, _))) = self.seen_expiry.peek() {
            if *ts >= id_bound {
                break;
            }
            if let Some(Reverse((_, id))) = self.seen_expiry.pop() {
                self.seen_ids.remove(&id);
            }
        }
        // Purchases and refunds still to come have ts >= id_bound; orders older than the
        // ledger's horizon before that can never be looked up again.
        let horizon = self.cfg.refund_window.saturating_add(self.cfg.allowed_lateness);
        self.ledger.expire_before(id_bound.saturating_sub(horizon));
    }

    /// End of input: every pending event becomes final, in `(ts, event_id)` order.
    pub fn finish(&mut self, out: &mut impl Output) {
        while let Some((_, (fin, tag))) = self.pending.pop_first() {
            self.finalize(fin, tag, out);
        }
    }

    /// Any stored event (touch, purchase or refund) has this event id hash.
    fn is_seen(&self, hash: u128) -> bool {
        self.seen_ids.contains(&hash) || self.touches.contains_id(hash)
    }

    fn surface_index(&self, surface: Option<&str>) -> u16 {
        surface.and_then(|s| self.cfg.surfaces.iter().position(|(name, _, _)| name == s)).map_or(0, |i| i as u16 + 1)
    }

    fn finalize(&mut self, fin: Final, tag: u64, out: &mut impl Output) {
        match fin {
            Final::Purchase(p) => self.finalize_purchase(p, tag, out),
            Final::Refund(r) => self.finalize_refund(r, tag, out),
        }
    }

    fn finalize_purchase(&mut self, p: Purchase, tag: u64, out: &mut impl Output) {
        if self.ledger.is_duplicate(&p.order_id, p.ts) {
            self.stats.of(EventType::Purchase).duplicate_order += 1;
            return;
        }
        let mut lines = Vec::with_capacity(p.items.len());
        let mut any = false;
        for (index, item) in p.items.iter().enumerate() {
            let records = self.attribute_item(&p, index as u32, item);
            if records.is_empty() {
                self.stats.items_unattributed += 1;
            } else {
                self.stats.items_attributed += 1;
                any = true;
            }
            let mut credits = Vec::with_capacity(records.len());
            for rec in records {
                self.count_record(&rec);
                credits.push(Credit { original: rec.clone(), reversed_share: 0, reversed_commission: 0 });
                out.record(rec, tag);
            }
            lines.push(Line { product_id: item.product_id.clone(), quantity: item.quantity, refunded: 0, credits });
        }
        if any {
            self.stats.purchases_attributed += 1;
        } else {
            self.stats.purchases_unattributed += 1;
        }
        self.stats.of(EventType::Purchase).processed += 1;
        self.ledger.insert(p.order_id, Order { purchase_ts: p.ts, lines: any.then_some(lines) });
    }

    /// The commission records for one item: empty when it is unattributed.
    fn attribute_item(&self, p: &Purchase, index: u32, item: &Item) -> Vec<Record> {
        let Some(user) = self.touches.touches_of(&p.user_id) else { return Vec::new() };
        let credits = self.credits_for(user, item, p.ts);
        if credits.is_empty() {
            return Vec::new();
        }
        let weights: Vec<u64> = credits.iter().map(|c| c.weight).collect();
        let gross = item.gross();
        let Some(shares) = money::split_largest_remainder(gross, &weights) else { return Vec::new() };
        let total_weight: u64 = weights.iter().sum();
        credits
            .iter()
            .zip(shares)
            .map(|(c, share)| {
                let creator_id = self.touches.creators.name(c.creator).clone();
                let (rate_bps, rule_id) =
                    self.cfg.plan.rate_for(&item.product_id, &creator_id, item.category.as_deref(), p.ts);
                Record {
                    commission_id: format_compact!("{}:{}:{}", p.event_id, index, creator_id),
                    kind: RecordKind::Commission,
                    order_id: p.order_id.clone(),
                    purchase_event_id: p.event_id.clone(),
                    item_index: index,
                    product_id: item.product_id.clone(),
                    quantity: item.quantity,
                    user_id: p.user_id.clone(),
                    creator_id,
                    model: self.cfg.model,
                    weight: c.weight,
                    total_weight,
                    touch_event_id: Str::from(user.event_id(c.latest)),
                    touch_type: c.latest.kind(),
                    touch_ts: c.latest.ts,
                    touch_count: c.count,
                    purchase_ts: p.ts,
                    gross_minor: gross,
                    share_minor: share,
                    rate_bps,
                    rule_id: rule_id.into(),
                    commission_minor: money::commission_for(share, rate_bps),
                    currency: p.currency,
                    original_commission_id: None,
                    refund_event_id: None,
                    lock_ts: None,
                    revision: None,
                    shadow: false,
                }
            })
            .collect()
    }

    /// Eligible touches → model → weights summed per creator, creators in order of their
    /// first credited touch.
    fn credits_for<'a>(&self, user: &'a UserTouches, item: &Item, t: Millis) -> Vec<CreatorCredit<'a>> {
        let touches = user.touches();
        // A product nobody touched can only match storefront touches.
        let product = self.touches.products.get(&item.product_id).unwrap_or(STOREFRONT);
        // The earliest eligible time per surface and kind (index 1: click), so the test
        // per touch is one lookup and three compares.
        let floors: Vec<[Millis; 2]> =
            self.windows.iter().map(|w| [t.saturating_sub(w[1]), t.saturating_sub(w[0])]).collect();
        let allow_self = self.cfg.allow_self_attribution;
        let eligible = |touch: &StoredTouch| {
            let is_click = touch.kind() == TouchKind::Click;
            touch.ts >= floors[touch.surface as usize][usize::from(is_click)]
                && (touch.product == STOREFRONT || touch.product == product)
                && (allow_self || !touch.is_self())
        };
        let from = touches.partition_point(|x| x.ts < t.saturating_sub(self.max_window));
        let to = touches.partition_point(|x| x.ts <= t);
        let (a, b) = slices(touches, from, to);
        match self.cfg.model {
            Model::LastTouch => {
                // Walk back from the purchase: the first eligible click is the answer; the
                // first eligible view is, if no click turns up within any click window.
                let click_floor = t.saturating_sub(self.max_click_window);
                let mut last_view = None;
                for touch in b.iter().rev().chain(a.iter().rev()) {
                    if touch.ts < click_floor && last_view.is_some() {
                        break;
                    }
                    if eligible(touch) {
                        match touch.kind() {
                            TouchKind::Click => return vec![CreatorCredit::single(touch)],
                            TouchKind::View if last_view.is_none() => last_view = Some(touch),
                            TouchKind::View => {}
                        }
                    }
                }
                return last_view.map(CreatorCredit::single).into_iter().collect();
            }
            Model::FirstTouch => {
                // Walk forward: the first eligible click is the answer; the first eligible
                // view is, if there is no eligible click at all.
                let mut first_view = None;
                for touch in a.iter().chain(b.iter()) {
                    if eligible(touch) {
                        match touch.kind() {
                            TouchKind::Click => return vec![CreatorCredit::single(touch)],
                            TouchKind::View if first_view.is_none() => first_view = Some(touch),
                            TouchKind::View => {}
                        }
                    }
                }
                return first_view.map(CreatorCredit::single).into_iter().collect();
            }
            Model::Linear | Model::PositionBased | Model::TimeDecay => {}
        }
        let mut clicks: Vec<&StoredTouch> = Vec::new();
        let mut views: Vec<&StoredTouch> = Vec::new();
        for touch in a.iter().chain(b.iter()) {
            if eligible(touch) {
                match touch.kind() {
                    TouchKind::Click => clicks.push(touch),
                    TouchKind::View if clicks.is_empty() => views.push(touch),
                    TouchKind::View => {}
                }
            }
        }
        // Clicks beat views.
        let eligible = if clicks.is_empty() { views } else { clicks };
        if eligible.is_empty() {
            return Vec::new();
        }
        let ts: Vec<Millis> = eligible.iter().map(|x| x.ts).collect();
        let mut credits: Vec<CreatorCredit<'a>> = Vec::new();
        // Creator -> index in `credits`; a linear search is cheaper for a few touches, but
        // a heavy shopper's window holds thousands of touches by hundreds of creators.
        let mut index: HashMap<u32, usize, ahash::RandomState> = HashMap::default();
        let few = eligible.len() <= 16;
        for (i, weight) in attribution::credit(self.cfg.model, &ts, t, self.cfg.half_life) {
            let touch = eligible[i];
            let found = if few {
                credits.iter().position(|c| c.creator == touch.creator)
            } else {
                index.get(&touch.creator).copied()
            };
            match found {
                Some(at) => {
                    let c = &mut credits[at];
                    c.weight += weight;
                    c.latest = touch;
                    c.count += 1;
                }
                None => {
                    if !few {
                        index.insert(touch.creator, credits.len());
                    }
                    credits.push(CreatorCredit { creator: touch.creator, weight, latest: touch, count: 1 });
                }
            }
        }
        credits
    }

    fn finalize_refund(&mut self, r: Refund, tag: u64, out: &mut impl Output) {
        let mut emitted = Vec::new();
        let outcome =
            self.ledger.refund(&r.order_id, &r.event_id, r.ts, r.items.as_deref(), self.cfg.refund_window, |rec| {
                emitted.push(rec)
            });
        match outcome {
            RefundOutcome::Applied { excess_units } => {
                self.stats.refund_applied += 1;
                self.stats.refund_excess_units = self.stats.refund_excess_units.saturating_add(excess_units as u64);
            }
            RefundOutcome::UnknownOrder => self.stats.refund_unknown_order += 1,
            RefundOutcome::UnattributedOrder => self.stats.refund_unattributed_order += 1,
            RefundOutcome::Expired => self.stats.refund_expired += 1,
        }
        self.stats.of(EventType::Refund).processed += 1;
        for rec in emitted {
            self.count_record(&rec);
            out.record(rec, tag);
        }
    }

    fn count_record(&mut self, rec: &Record) {
        let totals = self.stats.money.entry(rec.currency).or_default();
        match rec.kind {
            RecordKind::Commission => {
                self.stats.records_commission += 1;
                totals.0 = totals.0.saturating_add(rec.commission_minor);
            }
            RecordKind::Reversal => {
                self.stats.records_reversal += 1;
                totals.1 = totals.1.saturating_add(rec.commission_minor);
            }
            RecordKind::Lock | RecordKind::Adjustment => {}
        }
    }
}

/// The touches `from..to` of a deque as its two contiguous parts.
fn slices(
    touches: &std::collections::VecDeque<StoredTouch>,
    from: usize,
    to: usize,
) -> (&[StoredTouch], &[StoredTouch]) {
    let (a, b) = touches.as_slices();
    let split = a.len();
    (&a[from.min(split)..to.min(split)], &b[from.max(split) - split..to.max(split) - split])
}

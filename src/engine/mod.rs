//! The attribution engine: events and watermarks in, records out (SPEC §2–§5, 8.1–8.3).
//!
//! Synchronous and pure: time comes only from events, and the engine knows nothing of
//! files or Kafka. Drivers (the [`crate::pipeline`], and through it replay, the Kafka
//! worker, tests and benchmarks) feed it with [`Engine::process`] and
//! [`Engine::advance_watermark`] and receive records through an [`Output`].
//!
//! Life of a purchase: it waits in `pending` until the watermark passes it (`W > ts`),
//! then final events are handled in `(ts, event_id, user_id)` order: each item is
//! attributed to the shopper's eligible touches under the paid model (and each shadow
//! model), the gross is split and commissions computed, and the order goes into the
//! shopper's ledger for refunds and locks. Locks (SPEC 8.2) are handled in the same
//! time order, each before any event at or after its lock time.
//!
//! Everything a shopper owns lives in its slot (see [`state`]): ids are duplicates only
//! for the same shopper, so shoppers can be split over engines (parallel replay, Kafka
//! partitions) without changing a record.

pub mod attribution;
pub mod checkpoint;
pub mod intern;
pub mod ledger;
pub mod money;
pub mod plan;
pub mod state;
pub mod watermark;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::attribution::{credits_for, EligibleTouches, EligibleWindows};
use self::ledger::{Credit, Line, Order, RefundOutcome};
use self::plan::CommissionPlan;
use self::state::{id_hash, Cap, Inserted, NewTouch, Retention, Shoppers, StoredTouch, STOREFRONT};
use crate::model::{
    Currency, DeadLetterReason, Event, EventType, Millis, Model, Purchase, RecordKind, RecordView, Refund, Str,
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
    /// `commission.lock_period` (SPEC 8.2); `None`: nothing locks.
    #[serde(default)]
    pub lock_period: Option<Millis>,
    /// `attribution.shadow_models` (SPEC 8.3).
    #[serde(default)]
    pub shadow_models: Vec<Model>,
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
            lock_period: None,
            shadow_models: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// The longest window of all, overrides included.
    pub fn max_window(&self) -> Millis {
        self.surfaces
            .iter()
            .flat_map(|(_, c, v)| [c.unwrap_or(self.click_window), v.unwrap_or(self.view_window)])
            .chain([self.click_window, self.view_window])
            .max()
            .unwrap_or(0)
    }

    fn retention(&self) -> Retention {
        Retention {
            touches: self.max_window().saturating_add(self.allowed_lateness),
            ids: self.allowed_lateness,
            // Orders are looked up until `refund_window + allowed_lateness` after their
            // purchase, by events that are at most `allowed_lateness` behind W.
            orders: self.refund_window.saturating_add(self.allowed_lateness).saturating_add(self.allowed_lateness),
        }
    }

    /// Every model computed: the paid one first, then the shadows.
    fn models(&self) -> impl Iterator<Item = (Model, bool)> + '_ {
        std::iter::once((self.model, false)).chain(self.shadow_models.iter().map(|&m| (m, true)))
    }
}

/// Where a group of records comes from, in the order a single engine writes them: the
/// key by which outputs of engines that split the shoppers are merged back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnitKey<'a> {
    /// Event time of the event, or lock time of the lock.
    pub time: Millis,
    /// 0: a lock (handled before events at its time), 1: an event.
    pub class: u8,
    /// The purchase's time (locks), else the event's.
    pub at: Millis,
    /// The event's id (the purchase's for locks).
    pub event_id: &'a str,
    pub user_id: &'a str,
}

/// A purchase about to be attributed, with the state it is attributed against: what
/// `attrib explain` looks at (see [`Output::attributing`]).
pub struct Attributing<'a> {
    pub purchase: &'a Purchase,
    /// The shopper's touches in state, in `(ts, event_id)` order.
    pub touches: &'a [StoredTouch],
    /// Names of interned creators and products, and touch event ids.
    pub shoppers: &'a Shoppers,
    /// The windows at the purchase time.
    pub windows: &'a EligibleWindows,
    pub config: &'a EngineConfig,
}

/// Receives the engine's records. `tag` is the opaque value given to
/// [`Engine::process`] with the purchase or refund that produced the record (0 for locks).
pub trait Output {
    /// One record (paid, or a shadow model's when `record.shadow`).
    fn record(&mut self, record: &RecordView<'_>, tag: u64);
    /// Marks the start of the records of one final event or lock. `on_arrival`: a late
    /// event handled as it arrived, not by a watermark move.
    fn unit(&mut self, _key: &UnitKey<'_>, _on_arrival: bool) {}
    /// A final purchase (not a duplicate order) is about to be attributed; its records
    /// follow. Only `attrib explain` listens.
    #[inline]
    fn attributing(&mut self, _purchase: &Attributing<'_>) {}
}

impl Output for Vec<crate::model::Record> {
    fn record(&mut self, record: &RecordView<'_>, _tag: u64) {
        self.push(record.to_record());
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
    pub refund_after_lock: u64,
    pub refund_excess_units: u64,
    pub records_commission: u64,
    pub records_reversal: u64,
    pub records_lock: u64,
    /// Records of shadow models (never paid).
    pub records_shadow: u64,
    pub touches_evicted_cap: u64,
    /// Per currency: (commission total, reversal total), minor units; a summary figure,
    /// saturating at the i64 bounds (each record's own amounts are exact).
    pub money: BTreeMap<Currency, (i64, i64)>,
    /// Per currency: the amounts of lock records (what was locked for payout).
    pub locked: BTreeMap<Currency, i64>,
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

    /// Adds another engine's counters (engines that split the shoppers of one input).
    pub fn merge(&mut self, o: &Stats) {
        self.events_in += o.events_in;
        for (a, b) in self.by_type.iter_mut().zip(&o.by_type) {
            a.read += b.read;
            a.processed += b.processed;
            a.duplicate_event += b.duplicate_event;
            a.duplicate_order += b.duplicate_order;
            a.late += b.late;
            a.too_late += b.too_late;
        }
        for (a, b) in self.dead_letter.iter_mut().zip(&o.dead_letter) {
            *a += b;
        }
        self.purchases_attributed += o.purchases_attributed;
        self.purchases_unattributed += o.purchases_unattributed;
        self.items_attributed += o.items_attributed;
        self.items_unattributed += o.items_unattributed;
        self.refund_applied += o.refund_applied;
        self.refund_unknown_order += o.refund_unknown_order;
        self.refund_unattributed_order += o.refund_unattributed_order;
        self.refund_expired += o.refund_expired;
        self.refund_after_lock += o.refund_after_lock;
        self.refund_excess_units = self.refund_excess_units.saturating_add(o.refund_excess_units);
        self.records_commission += o.records_commission;
        self.records_reversal += o.records_reversal;
        self.records_lock += o.records_lock;
        self.records_shadow += o.records_shadow;
        self.touches_evicted_cap += o.touches_evicted_cap;
        for (c, (p, r)) in &o.money {
            let t = self.money.entry(*c).or_default();
            t.0 = t.0.saturating_add(*p);
            t.1 = t.1.saturating_add(*r);
        }
        for (c, l) in &o.locked {
            let t = self.locked.entry(*c).or_default();
            *t = t.saturating_add(*l);
        }
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
        m.insert("refund.after_lock".into(), self.refund_after_lock);
        m.insert("refund.excess_units".into(), self.refund_excess_units);
        m.insert("records.commission".into(), self.records_commission);
        m.insert("records.reversal".into(), self.records_reversal);
        m.insert("records.lock".into(), self.records_lock);
        m.insert("records.shadow".into(), self.records_shadow);
        m.insert("touches.evicted_cap".into(), self.touches_evicted_cap);
        m
    }
}

/// A purchase or refund waiting for the watermark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Final {
    Purchase(Purchase),
    Refund(Refund),
}

#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub slot: u32,
    pub fin: Final,
    pub tag: u64,
}

/// `(ts, event_id, user_id)`: the order in which final events are handled.
pub(crate) type PendingKey = (Millis, Str, Str);
/// `(lock_ts, purchase_ts, purchase_event_id, user_id)`.
pub(crate) type LockKey = (Millis, Millis, Str, Str);

/// Most surface names the engine tells apart (window overrides), across config changes.
pub const MAX_SURFACES: usize = 255;

/// The attribution engine for one set of shoppers.
#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    /// Surface names ever configured (index + 1 is a touch's surface; 0: none or
    /// another surface). Append-only, so stored touches keep their meaning when the
    /// config changes.
    surfaces: Vec<Str>,
    /// `[click, view]` window by surface index.
    windows: Vec<[Millis; 2]>,
    retention: Retention,
    max_window: Millis,
    max_click_window: Millis,
    watermark: Millis,
    /// Largest event time handed to [`Engine::process`] (locks at the end of input).
    max_ts: Millis,
    shoppers: Shoppers,
    pending: BTreeMap<PendingKey, Pending>,
    locks: BTreeMap<LockKey, u32>,
    stats: Stats,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: EngineConfig) -> Engine {
        let mut e = Engine {
            cfg: EngineConfig::default(),
            surfaces: Vec::new(),
            windows: Vec::new(),
            retention: Retention { touches: 0, ids: 0, orders: 0 },
            max_window: 0,
            max_click_window: 0,
            watermark: Millis::MIN,
            max_ts: Millis::MIN,
            shoppers: Shoppers::default(),
            pending: BTreeMap::new(),
            locks: BTreeMap::new(),
            stats: Stats::default(),
        };
        e.set_config(cfg);
        e
    }

    /// Applies a new config from now on (SPEC 8.1): purchases and refunds that become
    /// final from here are handled under it; what was written is never rewritten, and
    /// reversals and locks take back amounts at the rates of the commissions they touch.
    pub fn set_config(&mut self, cfg: EngineConfig) {
        for (name, _, _) in &cfg.surfaces {
            if !self.surfaces.contains(name) && self.surfaces.len() < MAX_SURFACES {
                self.surfaces.push(name.clone());
            }
        }
        let default = [cfg.click_window, cfg.view_window];
        self.windows = std::iter::once(default)
            .chain(self.surfaces.iter().map(|name| match cfg.surfaces.iter().find(|s| s.0 == *name) {
                Some((_, c, v)) => [c.unwrap_or(cfg.click_window), v.unwrap_or(cfg.view_window)],
                None => default,
            }))
            .collect();
        self.max_window = cfg.max_window();
        self.max_click_window = self.windows.iter().map(|w| w[0]).max().unwrap_or(0);
        let retention = cfg.retention();
        let requeue = retention != self.retention;
        self.retention = retention;
        self.cfg = cfg;
        if requeue {
            self.shoppers.requeue_all(&self.retention);
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
        self.shoppers.live()
    }

    /// Shoppers in state (with touches, ids or orders).
    pub fn shoppers(&self) -> usize {
        self.shoppers.len()
    }

    /// Purchases and refunds waiting for the watermark.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Orders in the ledgers.
    pub fn ledger_len(&self) -> usize {
        self.shoppers.slots().map(|s| self.shoppers.get(s).cold.as_ref().map_or(0, |c| c.orders().len())).sum()
    }

    /// The surface index of a touch's `surface` (0: none or not configured).
    fn surface_index(&self, surface: Option<&str>) -> u8 {
        surface.and_then(|s| self.surfaces.iter().position(|n| n == s)).map_or(0, |i| i as u8 + 1)
    }

    /// An event time seen by the driver but handled elsewhere (another engine's shopper):
    /// it still counts as the input's largest event time, which decides the locks at the
    /// end of a replay (SPEC 8.2), so engines that split the shoppers lock alike.
    pub fn observe_ts(&mut self, ts: Millis) {
        self.max_ts = self.max_ts.max(ts);
    }

    /// Takes one valid event. `tag` is handed back with the records it produces.
    pub fn process(&mut self, event: &Event, tag: u64, out: &mut impl Output) -> Outcome {
        let ts = event.ts();
        let ty = event.event_type();
        let late = ts < self.watermark;
        self.stats.of(ty).read += 1;
        self.max_ts = self.max_ts.max(ts);
        let outcome = match event {
            Event::Touch(touch) => {
                if ts < self.watermark.saturating_sub(self.retention.touches) {
                    Outcome::TooLate
                } else {
                    let slot = self.shoppers.find_or_insert(&touch.user_id);
                    let seen = self.shoppers.get(slot).cold.as_ref().is_some_and(|c| !c.seen.is_empty())
                        && self.shoppers.has_seen(slot, id_hash(&touch.event_id));
                    if seen {
                        Outcome::Duplicate
                    } else {
                        let new = NewTouch {
                            kind: touch.kind,
                            event_id: &touch.event_id,
                            ts,
                            creator_id: &touch.creator_id,
                            product_id: touch.product_id.as_deref(),
                            surface: self.surface_index(touch.surface.as_deref()),
                        };
                        let cap = Cap {
                            max: self.cfg.max_touches_per_user,
                            horizon: self.watermark.saturating_sub(self.cfg.allowed_lateness),
                        };
                        match self.shoppers.insert_touch(slot, &new, cap, &self.retention) {
                            Inserted::Duplicate => Outcome::Duplicate,
                            Inserted::Stored { over_cap } => {
                                self.stats.touches_evicted_cap += u64::from(over_cap);
                                self.stats.of(ty).processed += 1;
                                Outcome::Accepted { late }
                            }
                        }
                    }
                }
            }
            Event::Purchase(_) | Event::Refund(_) => {
                if ts < self.watermark.saturating_sub(self.cfg.allowed_lateness) {
                    Outcome::TooLate
                } else {
                    let (user_id, event_id) = (event.user_id(), event.event_id());
                    let slot = self.shoppers.find_or_insert(user_id);
                    let hash = id_hash(event_id);
                    if self.shoppers.has_seen(slot, hash) || self.shoppers.has_touch_id(slot, event_id) {
                        Outcome::Duplicate
                    } else {
                        let fin = match event {
                            Event::Purchase(p) => Final::Purchase(p.clone()),
                            Event::Refund(r) => Final::Refund(r.clone()),
                            Event::Touch(_) => unreachable!("matched above"),
                        };
                        self.shoppers.get_mut(slot).cold_mut().add_seen(ts, hash, &self.retention);
                        self.shoppers.requeue(slot, &self.retention);
                        if late {
                            // Behind the watermark: final on arrival.
                            self.finalize(slot, fin, tag, true, out);
                        } else {
                            self.shoppers.get_mut(slot).cold_mut().pending += 1;
                            let key = (ts, Str::from(event_id), Str::from(user_id));
                            self.pending.insert(key, Pending { slot, fin, tag });
                        }
                        Outcome::Accepted { late }
                    }
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
    /// become final and commissions with `lock_ts <= w` lock, in time order (a lock
    /// before the events at its time); then state older than needed is dropped.
    pub fn advance_watermark(&mut self, w: Millis, out: &mut impl Output) {
        if w <= self.watermark {
            return;
        }
        self.watermark = w;
        self.drain(Some(w), w, out);
        self.shoppers.expire(w, &self.retention);
    }

    /// End of input: every pending event becomes final, in order, and commissions lock
    /// whose lock time the largest event time of the input has reached.
    pub fn finish(&mut self, out: &mut impl Output) {
        self.drain(None, self.max_ts, out);
    }

    /// Handles pending events with `ts < events_before` (all when `None`) and locks with
    /// `lock_ts <= locks_until`, merged in time order.
    fn drain(&mut self, events_before: Option<Millis>, locks_until: Millis, out: &mut impl Output) {
        loop {
            let event =
                self.pending.first_key_value().map(|(k, _)| k.0).filter(|&t| events_before.is_none_or(|w| t < w));
            let lock = self.locks.first_key_value().map(|(k, _)| k.0).filter(|&l| l <= locks_until);
            match (event, lock) {
                (None, None) => break,
                (Some(t), Some(l)) if l <= t => self.fire_lock(out),
                (None, Some(_)) => self.fire_lock(out),
                (Some(_), _) => {
                    let Some(((_, _, _), p)) = self.pending.pop_first() else { break };
                    if let Some(c) = self.shoppers.get_mut(p.slot).cold.as_mut() {
                        c.pending -= 1;
                    }
                    self.finalize(p.slot, p.fin, p.tag, false, out);
                    self.shoppers.maybe_remove(p.slot);
                }
            }
        }
    }

    fn fire_lock(&mut self, out: &mut impl Output) {
        let Some(((lock_ts, purchase_ts, purchase_event_id, user_id), slot)) = self.locks.pop_first() else { return };
        out.unit(
            &UnitKey { time: lock_ts, class: 0, at: purchase_ts, event_id: &purchase_event_id, user_id: &user_id },
            false,
        );
        let (shopper, creators) = self.shoppers.get_mut_with_creators(slot);
        let Some(cold) = shopper.cold.as_mut() else { return };
        let Some(order) = cold
            .orders_mut()
            .iter_mut()
            .find(|o| o.purchase_ts == purchase_ts && o.purchase_event_id == purchase_event_id)
        else {
            return;
        };
        let stats = &mut self.stats;
        order.lock(&shopper.user_id, creators, |rec| {
            count_record(stats, rec);
            out.record(rec, 0);
        });
        // The order was kept for its lock; now it may expire with the rest.
        cold.reindex(&self.retention);
        self.shoppers.requeue(slot, &self.retention);
    }

    fn finalize(&mut self, slot: u32, fin: Final, tag: u64, on_arrival: bool, out: &mut impl Output) {
        let (ts, event_id) = match &fin {
            Final::Purchase(p) => (p.ts, &p.event_id),
            Final::Refund(r) => (r.ts, &r.event_id),
        };
        let user_id = self.shoppers.get(slot).user_id.clone();
        out.unit(&UnitKey { time: ts, class: 1, at: ts, event_id, user_id: &user_id }, on_arrival);
        match fin {
            Final::Purchase(p) => self.finalize_purchase(slot, &p, tag, out),
            Final::Refund(r) => self.finalize_refund(slot, &r, tag, out),
        }
    }

    /// The order this shopper's event at `ts` can still see under `order_id`.
    fn known_order(&self, slot: u32, order_id: &str, ts: Millis) -> Option<usize> {
        let horizon = self.cfg.refund_window.saturating_add(self.cfg.allowed_lateness);
        let cold = self.shoppers.get(slot).cold.as_ref()?;
        let hash = ledger::order_hash(order_id);
        cold.orders_with_hash(hash)
            .rev()
            .find(|&i| cold.orders()[i].order_id == order_id)
            .filter(|&i| ts.saturating_sub(cold.orders()[i].purchase_ts) <= horizon)
    }

    fn finalize_purchase(&mut self, slot: u32, p: &Purchase, tag: u64, out: &mut impl Output) {
        if self.known_order(slot, &p.order_id, p.ts).is_some() {
            self.stats.of(EventType::Purchase).duplicate_order += 1;
            return;
        }
        let windows = EligibleWindows::new(
            &self.windows,
            self.max_window,
            self.max_click_window,
            p.ts,
            self.cfg.max_touches_per_user,
        );
        out.attributing(&Attributing {
            purchase: p,
            touches: self.shoppers.get(slot).touches.as_slice(),
            shoppers: &self.shoppers,
            windows: &windows,
            config: &self.cfg,
        });
        let mut lines: Vec<Line> = Vec::with_capacity(p.items.len());
        let mut paid_attributed = false;
        let mut any = false;
        {
            let sh = &mut self.shoppers;
            let shopper = sh.get(slot);
            for item in &p.items {
                let product = sh.products.get(&item.product_id).unwrap_or(STOREFRONT);
                let gross = item.gross();
                let touches = shopper.touches.as_slice();
                let allow_self = self.cfg.allow_self_attribution;
                // With shadow models, the eligible touches are found once per item and
                // every model credits them; alone, the paid model finds its own.
                let shared = (!self.cfg.shadow_models.is_empty())
                    .then(|| EligibleTouches::find(touches, &windows, product, allow_self));
                let mut credits = Vec::with_capacity(
                    shared.as_ref().map_or(0, |e| self.cfg.models().map(|(m, _)| e.credit_count(m)).sum()),
                );
                let mut paid_item = false;
                for (model, shadow) in self.cfg.models() {
                    let found = match &shared {
                        Some(eligible) => eligible.credits(model, p.ts, self.cfg.half_life),
                        None => credits_for(model, touches, &windows, product, allow_self, self.cfg.half_life, p.ts),
                    };
                    credits.reserve(found.len());
                    let weights: Vec<u64> = found.iter().map(|c| c.weight).collect();
                    let Some(shares) = money::split_largest_remainder(gross, &weights) else { continue };
                    let total_weight: u64 = weights.iter().sum();
                    for (c, share) in found.iter().zip(shares) {
                        let creator_id = sh.creators.name(c.creator);
                        let (rate_bps, rule_id) =
                            self.cfg.plan.rate_for(&item.product_id, creator_id, item.category.as_deref(), p.ts);
                        credits.push(Credit {
                            creator: c.creator,
                            model,
                            shadow,
                            weight: c.weight,
                            total_weight,
                            touch_event_id: Str::from(sh.touch_id(&c.latest)),
                            touch_type: c.latest.kind(),
                            touch_ts: c.latest.ts,
                            touch_count: c.count,
                            share,
                            rate_bps,
                            rule_id: rule_id.into(),
                            commission: money::commission_for(share, rate_bps),
                            reversed_share: 0,
                            reversed_commission: 0,
                        });
                        paid_item |= !shadow;
                    }
                }
                if paid_item {
                    self.stats.items_attributed += 1;
                } else {
                    self.stats.items_unattributed += 1;
                }
                paid_attributed |= paid_item;
                any |= !credits.is_empty();
                lines.push(Line {
                    product_id: item.product_id.clone(),
                    quantity: item.quantity,
                    refunded: 0,
                    gross,
                    credits,
                });
            }
            for line in &lines {
                for c in &line.credits {
                    sh.creators.retain(c.creator);
                }
            }
        }
        if !any {
            lines.clear();
        }
        let lock_ts = self.cfg.lock_period.filter(|_| any).map(|l| p.ts.saturating_add(l));
        let order = Order {
            order_id: p.order_id.clone(),
            order_hash: ledger::order_hash(&p.order_id),
            purchase_event_id: p.event_id.clone(),
            purchase_ts: p.ts,
            currency: p.currency,
            paid_attributed,
            lock_ts,
            locked: false,
            lines,
        };
        {
            let sh = &self.shoppers;
            let user_id = &sh.get(slot).user_id;
            for (index, line) in order.lines.iter().enumerate() {
                for c in &line.credits {
                    let rec = order.commission_view(index, c, user_id, &sh.creators);
                    count_record(&mut self.stats, &rec);
                    out.record(&rec, tag);
                }
            }
        }
        if paid_attributed {
            self.stats.purchases_attributed += 1;
        } else {
            self.stats.purchases_unattributed += 1;
        }
        self.stats.of(EventType::Purchase).processed += 1;
        if let Some(lock_ts) = lock_ts {
            let user_id = self.shoppers.get(slot).user_id.clone();
            self.locks.insert((lock_ts, p.ts, p.event_id.clone(), user_id), slot);
        }
        // A repeated order id past the horizon is a new order: the old one is forgotten.
        let sh = &mut self.shoppers;
        let cold = sh.get_mut(slot).cold_mut();
        let hash = ledger::order_hash(&p.order_id);
        // An old order still awaiting its lock stays until the lock is written.
        let old = cold.orders_with_hash(hash).find(|&i| {
            let o = &cold.orders()[i];
            o.order_id == p.order_id && !o.awaits_lock()
        });
        if let Some(i) = old {
            let old = cold.remove_order(i);
            cold.reindex(&self.retention);
            old.release(&mut sh.creators);
            sh.orders -= 1;
        }
        sh.orders += 1;
        sh.get_mut(slot).cold_mut().add_order(order, &self.retention);
        sh.requeue(slot, &self.retention);
    }

    fn finalize_refund(&mut self, slot: u32, r: &Refund, tag: u64, out: &mut impl Output) {
        let outcome = match self.known_order(slot, &r.order_id, r.ts) {
            None => RefundOutcome::UnknownOrder,
            Some(i) => {
                let refund_window = self.cfg.refund_window;
                let (shopper, creators) = self.shoppers.get_mut_with_creators(slot);
                let user_id = &shopper.user_id;
                let order = &mut shopper.cold.as_mut().expect("known order").orders_mut()[i];
                let stats = &mut self.stats;
                order.refund(&r.event_id, r.ts, r.items.as_deref(), refund_window, user_id, creators, |rec| {
                    count_record(stats, rec);
                    out.record(rec, tag);
                })
            }
        };
        match outcome {
            RefundOutcome::Applied { excess_units } => {
                self.stats.refund_applied += 1;
                self.stats.refund_excess_units = self.stats.refund_excess_units.saturating_add(excess_units as u64);
            }
            RefundOutcome::UnknownOrder => self.stats.refund_unknown_order += 1,
            RefundOutcome::UnattributedOrder => self.stats.refund_unattributed_order += 1,
            RefundOutcome::Expired => self.stats.refund_expired += 1,
            RefundOutcome::AfterLock => self.stats.refund_after_lock += 1,
        }
        self.stats.of(EventType::Refund).processed += 1;
    }
}

fn count_record(stats: &mut Stats, rec: &RecordView<'_>) {
    if rec.shadow {
        stats.records_shadow += 1;
        return;
    }
    match rec.kind {
        RecordKind::Commission => {
            stats.records_commission += 1;
            let totals = stats.money.entry(rec.currency).or_default();
            totals.0 = totals.0.saturating_add(rec.commission_minor);
        }
        RecordKind::Reversal => {
            stats.records_reversal += 1;
            let totals = stats.money.entry(rec.currency).or_default();
            totals.1 = totals.1.saturating_add(rec.commission_minor);
        }
        RecordKind::Lock => {
            stats.records_lock += 1;
            let total = stats.locked.entry(rec.currency).or_default();
            *total = total.saturating_add(rec.commission_minor);
        }
        RecordKind::Adjustment => {}
    }
}

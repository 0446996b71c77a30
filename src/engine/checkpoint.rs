//! The engine's state as bytes: one record per shopper and one for the rest, so a
//! checkpoint can write only the shoppers that changed (the Kafka worker's state
//! topic), and a restore can load them in any order.
//!
//! Records are `postcard` (serde, varints) behind a one-byte layout version
//! ([`LAYOUT`]). Creators and products are written by name (interned ids are
//! per-engine), pending events with their shopper, and the lock queue is rebuilt from
//! the orders. The config is not state (SPEC 8.1): the caller keeps it beside.

use serde::{Deserialize, Serialize};

use super::ledger::{Credit, Line, Order};
use super::state::{Cap, NewTouch, STOREFRONT};
use super::{Engine, Final, Pending, Stats};
use crate::model::{Currency, Millis, Model, Purchase, Refund, Str, TouchKind};

/// Layout version of shopper and global records. A record with another version is
/// refused with [`CheckpointError::Layout`], never misread.
pub const LAYOUT: u8 = 2;

/// A record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("state layout {found} is not the layout {LAYOUT} this release reads")]
    Layout { found: u8 },
    #[error("empty state record")]
    Empty,
    #[error("corrupt state record: {0}")]
    Corrupt(String),
}

#[derive(Serialize, Deserialize)]
struct TouchRec {
    ts: Millis,
    click: bool,
    event_id: Str,
    creator: Str,
    product: Option<Str>,
    surface: u8,
}

#[derive(Serialize, Deserialize)]
struct CreditRec {
    creator: Str,
    model: Model,
    shadow: bool,
    weight: u64,
    total_weight: u64,
    touch_event_id: Str,
    touch_type: TouchKind,
    touch_ts: Millis,
    touch_count: u32,
    share: i64,
    rate_bps: u32,
    rule_id: Str,
    commission: i64,
    reversed_share: i64,
    reversed_commission: i64,
}

#[derive(Serialize, Deserialize)]
struct LineRec {
    product_id: Str,
    quantity: i64,
    refunded: i64,
    gross: i64,
    credits: Vec<CreditRec>,
}

#[derive(Serialize, Deserialize)]
struct OrderRec {
    order_id: Str,
    purchase_event_id: Str,
    purchase_ts: Millis,
    currency: Currency,
    paid_attributed: bool,
    lock_ts: Option<Millis>,
    locked: bool,
    lines: Vec<LineRec>,
}

#[derive(Serialize, Deserialize)]
enum PendingRec {
    Purchase(Purchase, u64),
    Refund(Refund, u64),
}

#[derive(Serialize, Deserialize)]
struct ShopperRec {
    user_id: Str,
    touches: Vec<TouchRec>,
    seen: Vec<(Millis, u128)>,
    orders: Vec<OrderRec>,
    pending: Vec<PendingRec>,
}

#[derive(Serialize, Deserialize)]
struct GlobalRec {
    watermark: Millis,
    max_ts: Millis,
    surfaces: Vec<Str>,
    stats: Stats,
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    let mut out = vec![LAYOUT];
    // Plain data into a Vec: cannot fail.
    out.extend(postcard::to_stdvec(value).expect("state records serialise"));
    out
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CheckpointError> {
    match bytes.split_first() {
        None => Err(CheckpointError::Empty),
        Some((&LAYOUT, body)) => postcard::from_bytes(body).map_err(|e| CheckpointError::Corrupt(e.to_string())),
        Some((&found, _)) => Err(CheckpointError::Layout { found }),
    }
}

/// A whole engine state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub globals: Vec<u8>,
    /// `(user_id, record)` per shopper.
    pub shoppers: Vec<(Str, Vec<u8>)>,
}

/// What changed since the last [`Engine::take_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub globals: Vec<u8>,
    /// `(user_id, record)` of every shopper changed (or new).
    pub upserts: Vec<(Str, Vec<u8>)>,
    /// Shoppers whose state is gone.
    pub removed: Vec<Str>,
}

impl Engine {
    /// Pending events by shopper.
    fn pending_by_slot(&self) -> std::collections::HashMap<u32, Vec<&Pending>> {
        let mut by: std::collections::HashMap<u32, Vec<&Pending>> = std::collections::HashMap::new();
        for p in self.pending.values() {
            by.entry(p.slot).or_default().push(p);
        }
        by
    }

    /// The record of shopper `slot`, with its pending events.
    fn encode_shopper(&self, slot: u32, pending: &[&Pending]) -> Vec<u8> {
        let sh = &self.shoppers;
        let s = sh.get(slot);
        let touches = s
            .touches
            .as_slice()
            .iter()
            .map(|t| TouchRec {
                ts: t.ts,
                click: t.kind() == TouchKind::Click,
                event_id: sh.touch_id(t).into(),
                creator: sh.creators.name(t.creator).into(),
                product: (t.product != STOREFRONT).then(|| sh.products.name(t.product).into()),
                surface: t.surface,
            })
            .collect();
        let (seen, orders) = match &s.cold {
            None => (Vec::new(), Vec::new()),
            Some(c) => (
                c.seen.clone(),
                c.orders()
                    .iter()
                    .map(|o| OrderRec {
                        order_id: o.order_id.clone(),
                        purchase_event_id: o.purchase_event_id.clone(),
                        purchase_ts: o.purchase_ts,
                        currency: o.currency,
                        paid_attributed: o.paid_attributed,
                        lock_ts: o.lock_ts,
                        locked: o.locked,
                        lines: o
                            .lines
                            .iter()
                            .map(|l| LineRec {
                                product_id: l.product_id.clone(),
                                quantity: l.quantity,
                                refunded: l.refunded,
                                gross: l.gross,
                                credits: l
                                    .credits
                                    .iter()
                                    .map(|c| CreditRec {
                                        creator: sh.creators.name(c.creator).into(),
                                        model: c.model,
                                        shadow: c.shadow,
                                        weight: c.weight,
                                        total_weight: c.total_weight,
                                        touch_event_id: c.touch_event_id.clone(),
                                        touch_type: c.touch_type,
                                        touch_ts: c.touch_ts,
                                        touch_count: c.touch_count,
                                        share: c.share,
                                        rate_bps: c.rate_bps,
                                        rule_id: c.rule_id.clone(),
                                        commission: c.commission,
                                        reversed_share: c.reversed_share,
                                        reversed_commission: c.reversed_commission,
                                    })
                                    .collect(),
                            })
                            .collect(),
                    })
                    .collect(),
            ),
        };
        let pending = pending
            .iter()
            .map(|p| match &p.fin {
                Final::Purchase(x) => PendingRec::Purchase(x.clone(), p.tag),
                Final::Refund(x) => PendingRec::Refund(x.clone(), p.tag),
            })
            .collect();
        encode(&ShopperRec { user_id: s.user_id.clone(), touches, seen, orders, pending })
    }

    /// Loads one shopper record (a shopper not yet in this engine).
    fn load_shopper(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let rec: ShopperRec = decode(bytes)?;
        if rec.user_id.is_empty() {
            return Err(CheckpointError::Corrupt("shopper record without a user id".into()));
        }
        let slot = self.shoppers.find_or_insert(&rec.user_id);
        if !self.shoppers.get(slot).touches.is_empty() || self.shoppers.get(slot).cold.is_some() {
            return Err(CheckpointError::Corrupt(format!("shopper {:?} loaded twice", rec.user_id)));
        }
        for t in &rec.touches {
            let new = NewTouch {
                kind: if t.click { TouchKind::Click } else { TouchKind::View },
                event_id: &t.event_id,
                ts: t.ts,
                creator_id: &t.creator,
                product_id: t.product.as_deref(),
                surface: t.surface,
            };
            // Capped when they were written: every one is kept.
            self.shoppers.insert_touch(slot, &new, Cap::NONE, &self.retention);
        }
        if !rec.seen.is_empty() || !rec.orders.is_empty() || !rec.pending.is_empty() {
            let mut orders = Vec::with_capacity(rec.orders.len());
            for o in rec.orders {
                let mut lines = Vec::with_capacity(o.lines.len());
                for l in o.lines {
                    let credits = l
                        .credits
                        .into_iter()
                        .map(|c| Credit {
                            creator: self.shoppers.creators.acquire(&c.creator),
                            model: c.model,
                            shadow: c.shadow,
                            weight: c.weight,
                            total_weight: c.total_weight,
                            touch_event_id: c.touch_event_id,
                            touch_type: c.touch_type,
                            touch_ts: c.touch_ts,
                            touch_count: c.touch_count,
                            share: c.share,
                            rate_bps: c.rate_bps,
                            rule_id: c.rule_id,
                            commission: c.commission,
                            reversed_share: c.reversed_share,
                            reversed_commission: c.reversed_commission,
                        })
                        .collect();
                    lines.push(Line {
                        product_id: l.product_id,
                        quantity: l.quantity,
                        refunded: l.refunded,
                        gross: l.gross,
                        credits,
                    });
                }
                if let (Some(lock_ts), false) = (o.lock_ts, o.locked) {
                    self.locks.insert((lock_ts, o.purchase_ts, o.purchase_event_id.clone(), rec.user_id.clone()), slot);
                }
                orders.push(Order {
                    order_hash: super::ledger::order_hash(&o.order_id),
                    order_id: o.order_id,
                    purchase_event_id: o.purchase_event_id,
                    purchase_ts: o.purchase_ts,
                    currency: o.currency,
                    paid_attributed: o.paid_attributed,
                    lock_ts: o.lock_ts,
                    locked: o.locked,
                    lines,
                });
            }
            let pending = rec.pending.len() as u32;
            self.shoppers.orders += orders.len();
            for p in rec.pending {
                let (key, fin, tag) = match p {
                    PendingRec::Purchase(x, tag) => ((x.ts, x.event_id.clone()), Final::Purchase(x), tag),
                    PendingRec::Refund(x, tag) => ((x.ts, x.event_id.clone()), Final::Refund(x), tag),
                };
                self.pending.insert((key.0, key.1, rec.user_id.clone()), Pending { slot, fin, tag });
            }
            let cold = self.shoppers.get_mut(slot).cold_mut();
            cold.seen = rec.seen;
            cold.set_orders(orders);
            cold.pending = pending;
            cold.reindex(&self.retention);
        }
        self.shoppers.requeue(slot, &self.retention);
        self.shoppers.maybe_remove(slot);
        Ok(())
    }

    fn encode_globals(&self) -> Vec<u8> {
        encode(&GlobalRec {
            watermark: self.watermark,
            max_ts: self.max_ts,
            surfaces: self.surfaces.clone(),
            stats: self.stats.clone(),
        })
    }

    /// The whole state.
    pub fn snapshot(&self) -> Snapshot {
        let pending = self.pending_by_slot();
        Snapshot {
            globals: self.encode_globals(),
            shoppers: self
                .shoppers
                .slots()
                .map(|s| {
                    let p = pending.get(&s).map_or(&[][..], Vec::as_slice);
                    (self.shoppers.get(s).user_id.clone(), self.encode_shopper(s, p))
                })
                .collect(),
        }
    }

    /// An engine from a [`Snapshot`] (or from the latest record of every key of a
    /// compacted changelog), running under `cfg`.
    pub fn restore<'a>(
        cfg: super::EngineConfig,
        globals: &[u8],
        shoppers: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Engine, CheckpointError> {
        let g: GlobalRec = decode(globals)?;
        let mut engine = Engine::new(super::EngineConfig::default());
        engine.surfaces = g.surfaces;
        engine.set_config(cfg);
        engine.watermark = g.watermark;
        engine.max_ts = g.max_ts;
        engine.stats = g.stats;
        for bytes in shoppers {
            engine.load_shopper(bytes)?;
        }
        engine.shoppers.take_dirty();
        Ok(engine)
    }

    /// Starts (or stops) tracking which shoppers change, for [`Engine::take_changes`].
    pub fn track_changes(&mut self, on: bool) {
        self.shoppers.track_changes(on);
    }

    /// The records of every shopper changed or removed since the last call, and the
    /// global record: an incremental checkpoint, costing what changed, not what is kept.
    pub fn take_changes(&mut self) -> Changes {
        let (dirty, removed) = self.shoppers.take_dirty();
        let pending = if self.pending.is_empty() { Default::default() } else { self.pending_by_slot() };
        let mut upserts = Vec::with_capacity(dirty.len());
        for slot in dirty {
            let s = self.shoppers.get(slot);
            if !s.user_id.is_empty() {
                let p = pending.get(&slot).map_or(&[][..], Vec::as_slice);
                upserts.push((s.user_id.clone(), self.encode_shopper(slot, p)));
            }
        }
        // A shopper removed and then back again is an upsert, not a removal.
        let removed = removed.into_iter().filter(|u| self.shoppers.find(u).is_none()).collect();
        Changes { globals: self.encode_globals(), upserts, removed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_layout_is_refused_not_misread() {
        assert_eq!(decode::<GlobalRec>(&[1, 0, 0]).err(), Some(CheckpointError::Layout { found: 1 }));
        assert_eq!(decode::<GlobalRec>(&[]).err(), Some(CheckpointError::Empty));
        assert!(matches!(decode::<GlobalRec>(&[LAYOUT, 0xff]), Err(CheckpointError::Corrupt(_))));
    }
}

//! The order ledger (SPEC §4, 8.2): a shopper's final purchases with compact credits,
//! remembered for refunds, locks and duplicate-order detection.
//!
//! A credit keeps what a reversal or a lock needs to rebuild its record (the creator,
//! the touch it names, weights, share, rate, rule, commission) and what has been
//! reversed so far; the rest of the record comes from its order and line.

use super::intern::Interner;
use super::money::reversed_to_date;
use crate::model::{Currency, Millis, Model, RecordKind, RecordView, RefundItem, Str, TouchKind};

/// One credited creator on one line, for one model, with what was reversed so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    /// Interned creator id (one reference held).
    pub creator: u32,
    pub model: Model,
    /// Written by a shadow model (SPEC 8.3).
    pub shadow: bool,
    pub weight: u64,
    pub total_weight: u64,
    pub touch_event_id: Str,
    pub touch_type: TouchKind,
    pub touch_ts: Millis,
    pub touch_count: u32,
    pub share: i64,
    pub rate_bps: u32,
    pub rule_id: Str,
    pub commission: i64,
    pub reversed_share: i64,
    pub reversed_commission: i64,
}

/// One purchase line as the ledger keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub product_id: Str,
    pub quantity: i64,
    pub refunded: i64,
    pub gross: i64,
    /// Every model's credits (paid first); empty for an unattributed line.
    pub credits: Vec<Credit>,
}

/// A final purchase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub order_id: Str,
    /// [`order_hash`] of `order_id`: compared before the id itself.
    pub order_hash: u64,
    pub purchase_event_id: Str,
    pub purchase_ts: Millis,
    pub currency: Currency,
    /// The paid model credited at least one item.
    pub paid_attributed: bool,
    /// When its commissions lock (SPEC 8.2), fixed when the purchase became final.
    pub lock_ts: Option<Millis>,
    pub locked: bool,
    /// Empty when no model credited anything (kept to name the refund outcome).
    pub lines: Vec<Line>,
}

impl Default for Order {
    fn default() -> Self {
        Order {
            order_id: Str::default(),
            order_hash: 0,
            purchase_event_id: Str::default(),
            purchase_ts: 0,
            currency: Currency(*b"XXX"),
            paid_attributed: false,
            lock_ts: None,
            locked: false,
            lines: Vec::new(),
        }
    }
}

/// What a refund did for the paid model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Reversals written; `excess_units` could not be matched to unrefunded units.
    Applied {
        excess_units: i64,
    },
    UnknownOrder,
    UnattributedOrder,
    Expired,
    /// At or after the order's lock time, or after its lock was written: reverses nothing.
    AfterLock,
}

/// The hash an order id is looked up by.
pub fn order_hash(order_id: &str) -> u64 {
    super::intern::hash_bytes(order_id.as_bytes())
}

impl Order {
    /// The watermark up to which the ledger keeps this order: `orders` (the ledger's
    /// retention) after its purchase, and in any case until its lock is written (a config
    /// change may shorten the retention below a lock period fixed earlier, SPEC 8.1).
    pub fn kept_until(&self, orders: Millis) -> Millis {
        let kept = self.purchase_ts.saturating_add(orders);
        match self.lock_ts {
            Some(lock_ts) if !self.locked => kept.max(lock_ts),
            _ => kept,
        }
    }

    /// Whether its lock record is still to be written.
    pub fn awaits_lock(&self) -> bool {
        self.lock_ts.is_some() && !self.locked
    }

    /// Releases the creator references its credits hold.
    pub fn release(&self, creators: &mut Interner) {
        for line in &self.lines {
            for c in &line.credits {
                creators.release(c.creator);
            }
        }
    }

    /// The commission record of credit `c` on line `index`.
    pub fn commission_view<'a>(
        &'a self,
        index: usize,
        c: &'a Credit,
        user_id: &'a str,
        creators: &'a Interner,
    ) -> RecordView<'a> {
        let line = &self.lines[index];
        RecordView {
            kind: RecordKind::Commission,
            order_id: &self.order_id,
            purchase_event_id: &self.purchase_event_id,
            item_index: index as u32,
            product_id: &line.product_id,
            quantity: line.quantity,
            user_id,
            creator_id: creators.name(c.creator),
            model: c.model,
            weight: c.weight,
            total_weight: c.total_weight,
            touch_event_id: &c.touch_event_id,
            touch_type: c.touch_type,
            touch_ts: c.touch_ts,
            touch_count: c.touch_count,
            purchase_ts: self.purchase_ts,
            gross_minor: line.gross,
            share_minor: c.share,
            rate_bps: c.rate_bps,
            rule_id: &c.rule_id,
            commission_minor: c.commission,
            currency: self.currency,
            refund_event_id: None,
            lock_ts: None,
            revision: None,
            shadow: c.shadow,
        }
    }

    /// Applies a refund, calling `emit` with each reversal record in line order.
    ///
    /// Each refund item's units are taken from the order's lines with that product, in
    /// item order, each up to its unrefunded quantity; no items means every unrefunded
    /// unit. Every credited creator of every line the refund touches gets one reversal
    /// that brings its reversed totals to `reversed_to_date` of the line's refunded
    /// units. `refund_window` decides `Expired`; a locked order, or a refund at or after
    /// its `lock_ts`, reverses nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn refund(
        &mut self,
        refund_event_id: &str,
        refund_ts: Millis,
        items: Option<&[RefundItem]>,
        refund_window: Millis,
        user_id: &str,
        creators: &Interner,
        mut emit: impl FnMut(&RecordView<'_>),
    ) -> RefundOutcome {
        if self.lines.is_empty() {
            return RefundOutcome::UnattributedOrder;
        }
        if self.locked || self.lock_ts.is_some_and(|l| refund_ts >= l) {
            return if self.paid_attributed { RefundOutcome::AfterLock } else { RefundOutcome::UnattributedOrder };
        }
        if refund_ts > self.purchase_ts.saturating_add(refund_window) {
            return if self.paid_attributed { RefundOutcome::Expired } else { RefundOutcome::UnattributedOrder };
        }
        let mut units = vec![0i64; self.lines.len()];
        let mut excess_units: i64 = 0;
        match items {
            None => {
                for (u, line) in units.iter_mut().zip(self.lines.iter()) {
                    *u = line.quantity - line.refunded;
                }
            }
            Some(items) => {
                for item in items {
                    let mut wanted = item.quantity;
                    for (u, line) in units.iter_mut().zip(self.lines.iter()) {
                        if wanted == 0 {
                            break;
                        }
                        if line.product_id == item.product_id {
                            let take = wanted.min(line.quantity - line.refunded - *u);
                            *u += take;
                            wanted -= take;
                        }
                    }
                    excess_units = excess_units.saturating_add(wanted);
                }
            }
        }
        for (index, &u) in units.iter().enumerate() {
            if u == 0 {
                continue;
            }
            self.lines[index].refunded += u;
            for ci in 0..self.lines[index].credits.len() {
                let line = &mut self.lines[index];
                let c = &mut line.credits[ci];
                let share_to_date = reversed_to_date(c.share, line.refunded, line.quantity);
                let commission_to_date = reversed_to_date(c.commission, line.refunded, line.quantity);
                let share_delta = share_to_date - c.reversed_share;
                let commission_delta = commission_to_date - c.reversed_commission;
                c.reversed_share = share_to_date;
                c.reversed_commission = commission_to_date;
                let c = &self.lines[index].credits[ci];
                let mut rec = self.commission_view(index, c, user_id, creators);
                rec.kind = RecordKind::Reversal;
                rec.quantity = u;
                rec.share_minor = -share_delta;
                rec.commission_minor = -commission_delta;
                rec.refund_event_id = Some(refund_event_id);
                emit(&rec);
            }
        }
        if self.paid_attributed {
            RefundOutcome::Applied { excess_units }
        } else {
            RefundOutcome::UnattributedOrder
        }
    }

    /// Locks the order (SPEC 8.2): one lock record per credit, with the units not
    /// refunded and the amounts net of every reversal so far.
    pub fn lock(&mut self, user_id: &str, creators: &Interner, mut emit: impl FnMut(&RecordView<'_>)) {
        let Some(lock_ts) = self.lock_ts else { return };
        if self.locked {
            return;
        }
        self.locked = true;
        for (index, line) in self.lines.iter().enumerate() {
            for c in &line.credits {
                let mut rec = self.commission_view(index, c, user_id, creators);
                rec.kind = RecordKind::Lock;
                rec.quantity = line.quantity - line.refunded;
                rec.share_minor = c.share - c.reversed_share;
                rec.commission_minor = c.commission - c.reversed_commission;
                rec.lock_ts = Some(lock_ts);
                emit(&rec);
            }
        }
    }
}

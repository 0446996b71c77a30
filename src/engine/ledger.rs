//! The order ledger (SPEC §4): final purchases, remembered for refunds and for
//! duplicate-order detection until `refund_window` (plus allowed lateness) has passed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use super::money::reversed_to_date;
use crate::model::{Millis, Record, RecordKind, RefundItem, Str};

/// One credited creator on one line, with what has been reversed so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub original: Record,
    pub reversed_share: i64,
    pub reversed_commission: i64,
}

/// One purchase line as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Str,
    pub quantity: i64,
    pub refunded: i64,
    /// Empty for an unattributed line.
    pub credits: Vec<Credit>,
}

/// A final purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub purchase_ts: Millis,
    /// `None`: no item was attributed; kept only to name the refund outcome.
    pub lines: Option<Vec<Line>>,
}

/// What a refund did to the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Reversals written; `excess_units` could not be matched to unrefunded units.
    Applied {
        excess_units: i64,
    },
    UnknownOrder,
    UnattributedOrder,
    Expired,
}

/// Final purchases by order id.
///
/// An order is remembered for `horizon` (refund window + allowed lateness) of event time
/// after its purchase. Whether an order is known is decided by that age alone, never by
/// whether eviction has run yet, so the answer does not depend on arrival order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    horizon: Millis,
    orders: HashMap<Str, Order, ahash::RandomState>,
    expiry: BinaryHeap<Reverse<(Millis, Str)>>,
}

impl Ledger {
    /// An empty ledger remembering orders for `horizon` after their purchase.
    pub fn new(horizon: Millis) -> Ledger {
        Ledger { horizon, ..Ledger::default() }
    }

    fn known(&self, order_id: &str, ts: Millis) -> Option<&Order> {
        self.orders.get(order_id).filter(|o| ts.saturating_sub(o.purchase_ts) <= self.horizon)
    }

    /// A purchase at `ts` with this order id repeats a final purchase still remembered.
    pub fn is_duplicate(&self, order_id: &str, ts: Millis) -> bool {
        self.known(order_id, ts).is_some()
    }

    /// Remembers a final purchase (replacing a forgotten one with the same id).
    pub fn insert(&mut self, order_id: Str, order: Order) {
        self.expiry.push(Reverse((order.purchase_ts, order_id.clone())));
        self.orders.insert(order_id, order);
    }

    /// Drops orders bought before `bound`; callers pass a bound past which no future
    /// lookup can still see them.
    pub fn expire_before(&mut self, bound: Millis) {
        while let Some(Reverse((ts, _))) = self.expiry.peek() {
            if *ts >= bound {
                break;
            }
            if let Some(Reverse((ts, order_id))) = self.expiry.pop() {
                // The id may have been reused by a later purchase: keep that one.
                if self.orders.get(&order_id).is_some_and(|o| o.purchase_ts == ts) {
                    self.orders.remove(&order_id);
                }
            }
        }
    }

    /// Orders remembered.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// No order remembered.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Applies a refund, calling `emit` with each reversal record in line order.
    ///
    /// Each refund item's units are taken from the order's lines with that product, in
    /// item order, each up to its unrefunded quantity; no items means every unrefunded
    /// unit. Every credited creator of every line the refund touches gets one reversal
    /// that brings its reversed totals to `reversed_to_date` of the line's refunded units.
    pub fn refund(
        &mut self,
        order_id: &str,
        refund_event_id: &Str,
        refund_ts: Millis,
        items: Option<&[RefundItem]>,
        refund_window: Millis,
        mut emit: impl FnMut(Record),
    ) -> RefundOutcome {
        if self.known(order_id, refund_ts).is_none() {
            return RefundOutcome::UnknownOrder;
        }
        let Some(order) = self.orders.get_mut(order_id) else { return RefundOutcome::UnknownOrder };
        let Some(lines) = order.lines.as_mut() else { return RefundOutcome::UnattributedOrder };
        if refund_ts > order.purchase_ts.saturating_add(refund_window) {
            return RefundOutcome::Expired;
        }
        let mut units = vec![0i64; lines.len()];
        let mut excess_units: i64 = 0;
        match items {
            None => {
                for (u, line) in units.iter_mut().zip(lines.iter()) {
                    *u = line.quantity - line.refunded;
                }
            }
            Some(items) => {
                for item in items {
                    let mut wanted = item.quantity;
                    for (u, line) in units.iter_mut().zip(lines.iter()) {
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
        for (item_index, (line, &u)) in lines.iter_mut().zip(units.iter()).enumerate() {
            if u == 0 {
                continue;
            }
            line.refunded += u;
            for credit in &mut line.credits {
                let share_to_date = reversed_to_date(credit.original.share_minor, line.refunded, line.quantity);
                let commission_to_date =
                    reversed_to_date(credit.original.commission_minor, line.refunded, line.quantity);
                let mut rec = credit.original.clone();
                rec.commission_id =
                    compact_str::format_compact!("{}:{}:{}", refund_event_id, item_index, rec.creator_id);
                rec.kind = RecordKind::Reversal;
                rec.quantity = u;
                rec.share_minor = -(share_to_date - credit.reversed_share);
                rec.commission_minor = -(commission_to_date - credit.reversed_commission);
                rec.original_commission_id = Some(credit.original.commission_id.clone());
                rec.refund_event_id = Some(refund_event_id.clone());
                credit.reversed_share = share_to_date;
                credit.reversed_commission = commission_to_date;
                emit(rec);
            }
        }
        RefundOutcome::Applied { excess_units }
    }
}

//! The attribution models (SPEC §2): which eligible touches are credited, with what weight.

use std::collections::HashMap;

use super::state::{StoredTouch, STOREFRONT};
use crate::model::{Millis, Model, TouchKind};

/// The earliest eligible touch time per surface and kind for one purchase time, so the
/// test per touch is one lookup and three compares.
pub struct EligibleWindows {
    /// `[view floor, click floor]` by surface index.
    floors: Vec<[Millis; 2]>,
    /// Oldest time any touch can be eligible, and any click.
    oldest: Millis,
    oldest_click: Millis,
    purchase_ts: Millis,
    /// `max_touches_per_user`: only the newest this many touches at or before the purchase count.
    cap: usize,
}

impl EligibleWindows {
    /// Floors for a purchase at `t`, from `[click, view]` windows by surface index, with
    /// touch cap `cap`.
    pub fn new(
        windows: &[[Millis; 2]],
        max_window: Millis,
        max_click_window: Millis,
        t: Millis,
        cap: usize,
    ) -> EligibleWindows {
        EligibleWindows {
            floors: windows.iter().map(|w| [t.saturating_sub(w[1]), t.saturating_sub(w[0])]).collect(),
            oldest: t.saturating_sub(max_window),
            oldest_click: t.saturating_sub(max_click_window),
            purchase_ts: t,
            cap,
        }
    }

    /// Whether the touch lies inside its own window (kind and surface).
    #[inline]
    pub fn in_window(&self, touch: &StoredTouch) -> bool {
        let is_click = touch.kind() == TouchKind::Click;
        touch.ts <= self.purchase_ts
            && self.floors.get(touch.surface as usize).is_some_and(|f| touch.ts >= f[usize::from(is_click)])
    }

    /// Whether the touch is eligible for an item of `product` (SPEC §2), and if not, the
    /// first rule it fails, checked in the spec's order: window, product, self.
    #[inline]
    pub fn eligibility(&self, touch: &StoredTouch, product: u32, allow_self: bool) -> Eligibility {
        if !self.in_window(touch) {
            Eligibility::OutsideWindow
        } else if touch.product != STOREFRONT && touch.product != product {
            Eligibility::OtherProduct
        } else if !allow_self && touch.is_self() {
            Eligibility::SelfAttribution
        } else {
            Eligibility::Eligible
        }
    }

    /// The earliest time at which this touch (by kind and surface) is inside its window.
    pub fn floor(&self, touch: &StoredTouch) -> Option<Millis> {
        let is_click = touch.kind() == TouchKind::Click;
        self.floors.get(touch.surface as usize).map(|f| f[usize::from(is_click)])
    }

    /// The oldest time any touch can be eligible: the purchase time minus the longest
    /// window (the longest lookback).
    pub fn oldest(&self) -> Millis {
        self.oldest
    }

    /// The touches that can be eligible at all: `oldest ..= purchase_ts`, and of those at
    /// or before the purchase the newest `cap` only (SPEC 5: beyond the cap the oldest go
    /// first). The store keeps every touch that this range can need whatever the arrival
    /// order ([`Cap`](super::state::Cap)), so the range does not depend on it either.
    pub fn range(&self, touches: &[StoredTouch]) -> std::ops::Range<usize> {
        let to = touches.partition_point(|x| x.ts <= self.purchase_ts);
        let from = touches.partition_point(|x| x.ts < self.oldest).max(to.saturating_sub(self.cap));
        from..to.max(from)
    }
}

/// Whether a touch is eligible for an item (SPEC §2), or the first rule it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eligibility {
    Eligible,
    /// Outside the window of its kind and surface, or after the purchase.
    OutsideWindow,
    /// Promotes another product.
    OtherProduct,
    /// The creator is the shopper, and self-attribution is not allowed.
    SelfAttribution,
}

/// One creator's credit on one item.
#[derive(Clone, Copy, Debug)]
pub struct CreatorCredit {
    pub creator: u32,
    pub weight: u64,
    /// The creator's latest credited touch.
    pub latest: StoredTouch,
    pub count: u32,
}

impl CreatorCredit {
    fn single(touch: &StoredTouch) -> CreatorCredit {
        CreatorCredit { creator: touch.creator, weight: 1, latest: *touch, count: 1 }
    }
}

/// Eligible touches → model → weights summed per creator, creators in order of their
/// first credited touch. `touches` are one shopper's, in `(ts, event_id)` order;
/// `product` is the item's interned product ([`STOREFRONT`] if nobody touched it).
///
/// For one model alone: last and first touch stop at their touch instead of finding
/// every eligible one. Several models on one item share one [`EligibleTouches`] instead.
pub fn credits_for(
    model: Model,
    touches: &[StoredTouch],
    w: &EligibleWindows,
    product: u32,
    allow_self: bool,
    half_life: Millis,
    t: Millis,
) -> Vec<CreatorCredit> {
    let eligible = |touch: &StoredTouch| w.eligibility(touch, product, allow_self) == Eligibility::Eligible;
    let window = &touches[w.range(touches)];
    match model {
        Model::LastTouch => {
            // Walk back from the purchase: the first eligible click is the answer; the
            // first eligible view is, if no click turns up within any click window.
            let mut last_view = None;
            for touch in window.iter().rev() {
                if touch.ts < w.oldest_click && last_view.is_some() {
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
            for touch in window {
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
    EligibleTouches::find(touches, w, product, allow_self).into_credits(model, t, half_life)
}

/// An item's eligible touches (SPEC §2: the eligible clicks, or the eligible views if no
/// click is eligible, in touch order), with their creators grouped once, so that several
/// models (the paid one and its shadows, SPEC 8.3) credit them without finding them again.
pub struct EligibleTouches<'a> {
    touches: Vec<&'a StoredTouch>,
    ts: Vec<Millis>,
    /// Each creator once, in order of its first touch, with its latest touch and touch
    /// count and weight 0: what linear, position_based and time_decay credit (they
    /// credit every touch), before the weights.
    creators: Vec<CreatorCredit>,
    /// The index in `creators` of each touch's creator.
    creator_of: Vec<usize>,
}

impl<'a> EligibleTouches<'a> {
    /// The eligible touches for an item of `product`.
    pub fn find(touches: &'a [StoredTouch], w: &EligibleWindows, product: u32, allow_self: bool) -> Self {
        let window = &touches[w.range(touches)];
        let (clicks, views) =
            split_eligible(window, |t| w.eligibility(t, product, allow_self) == Eligibility::Eligible);
        let touches = if clicks.is_empty() { views } else { clicks };
        let mut creators: Vec<CreatorCredit> = Vec::new();
        let mut creator_of = Vec::with_capacity(touches.len());
        // Creator -> index in `creators`; a linear search is cheaper for a few touches,
        // but a heavy shopper's window holds thousands of touches by hundreds of creators.
        let mut index: HashMap<u32, usize, ahash::RandomState> = HashMap::default();
        let few = touches.len() <= 16;
        for &touch in &touches {
            let found = if few {
                creators.iter().position(|c| c.creator == touch.creator)
            } else {
                index.get(&touch.creator).copied()
            };
            let at = match found {
                Some(at) => {
                    let c = &mut creators[at];
                    c.latest = *touch;
                    c.count += 1;
                    at
                }
                None => {
                    if !few {
                        index.insert(touch.creator, creators.len());
                    }
                    creators.push(CreatorCredit { creator: touch.creator, weight: 0, latest: *touch, count: 1 });
                    creators.len() - 1
                }
            };
            creator_of.push(at);
        }
        let ts = touches.iter().map(|x| x.ts).collect();
        EligibleTouches { touches, ts, creators, creator_of }
    }

    /// The most creators `model` credits here.
    pub fn credit_count(&self, model: Model) -> usize {
        match model {
            Model::LastTouch | Model::FirstTouch => self.creators.len().min(1),
            Model::Linear | Model::PositionBased | Model::TimeDecay => self.creators.len(),
        }
    }

    /// `model`'s weights summed per creator, creators in order of their first credited
    /// touch: what [`credits_for`] gives for this item.
    pub fn credits(&self, model: Model, t: Millis, half_life: Millis) -> Vec<CreatorCredit> {
        match model {
            Model::LastTouch => self.touches.last().map(|x| CreatorCredit::single(x)).into_iter().collect(),
            Model::FirstTouch => self.touches.first().map(|x| CreatorCredit::single(x)).into_iter().collect(),
            Model::Linear | Model::PositionBased | Model::TimeDecay => {
                self.weighed(model, self.creators.clone(), t, half_life)
            }
        }
    }

    /// [`Self::credits`] for the only model that credits these touches.
    pub fn into_credits(mut self, model: Model, t: Millis, half_life: Millis) -> Vec<CreatorCredit> {
        match model {
            Model::LastTouch | Model::FirstTouch => self.credits(model, t, half_life),
            Model::Linear | Model::PositionBased | Model::TimeDecay => {
                let creators = std::mem::take(&mut self.creators);
                self.weighed(model, creators, t, half_life)
            }
        }
    }

    /// `creators` (a copy of `self.creators`) with `model`'s weights: every touch is
    /// credited, in touch order, so only the weights differ by model.
    fn weighed(
        &self,
        model: Model,
        mut creators: Vec<CreatorCredit>,
        t: Millis,
        half_life: Millis,
    ) -> Vec<CreatorCredit> {
        if self.touches.is_empty() {
            return Vec::new();
        }
        for (i, weight) in credit(model, &self.ts, t, half_life) {
            creators[self.creator_of[i]].weight += weight;
        }
        creators
    }
}

/// The eligible clicks and (while no click is found) views, in touch order.
pub fn split_eligible(
    window: &[StoredTouch],
    eligible: impl Fn(&StoredTouch) -> bool,
) -> (Vec<&StoredTouch>, Vec<&StoredTouch>) {
    let mut clicks: Vec<&StoredTouch> = Vec::new();
    let mut views: Vec<&StoredTouch> = Vec::new();
    for touch in window {
        if eligible(touch) {
            match touch.kind() {
                TouchKind::Click => clicks.push(touch),
                TouchKind::View if clicks.is_empty() => views.push(touch),
                TouchKind::View => {}
            }
        }
    }
    (clicks, views)
}

/// Credited touches and their integer weights, as `(index into eligible, weight)`.
///
/// `eligible_ts` are the event times of the eligible touches in touch order
/// (`(ts, event_id)` ascending); it must not be empty. `purchase_ts` and `half_life` are
/// only used by `time_decay`.
pub fn credit(model: Model, eligible_ts: &[Millis], purchase_ts: Millis, half_life: Millis) -> Vec<(usize, u64)> {
    let n = eligible_ts.len();
    debug_assert!(n > 0, "credit needs at least one eligible touch");
    match model {
        Model::LastTouch => vec![(n - 1, 1)],
        Model::FirstTouch => vec![(0, 1)],
        Model::Linear => (0..n).map(|i| (i, 1)).collect(),
        Model::PositionBased => match n {
            1 => vec![(0, 1)],
            2 => vec![(0, 1), (1, 1)],
            // First and last get 2(n-2) each, the n-2 middle ones 1 each: 40/20/40.
            _ => {
                let end = 2 * (n as u64 - 2);
                (0..n).map(|i| (i, if i == 0 || i == n - 1 { end } else { 1 })).collect()
            }
        },
        Model::TimeDecay => {
            eligible_ts.iter().enumerate().map(|(i, &ts)| (i, decay_weight(purchase_ts - ts, half_life))).collect()
        }
    }
}

/// `round(1e9 * 2^(-age/half_life))`, half away from zero. The weight is a ratio, not
/// money, so a float is fine here; amounts are split from these integers.
pub fn decay_weight(age: Millis, half_life: Millis) -> u64 {
    let w = (1e9 * (-(age as f64) / half_life as f64).exp2()).round();
    // age >= 0 keeps w within [0, 1e9].
    w as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Millis = 86_400_000;

    #[test]
    fn single_touch_models() {
        let ts = [1, 2, 3];
        assert_eq!(credit(Model::LastTouch, &ts, 10, DAY), vec![(2, 1)]);
        assert_eq!(credit(Model::FirstTouch, &ts, 10, DAY), vec![(0, 1)]);
        assert_eq!(credit(Model::Linear, &ts, 10, DAY), vec![(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn position_based_is_40_20_40() {
        assert_eq!(credit(Model::PositionBased, &[1], 10, DAY), vec![(0, 1)]);
        assert_eq!(credit(Model::PositionBased, &[1, 2], 10, DAY), vec![(0, 1), (1, 1)]);
        assert_eq!(credit(Model::PositionBased, &[1, 2, 3], 10, DAY), vec![(0, 2), (1, 1), (2, 2)]);
        let w: Vec<u64> = credit(Model::PositionBased, &[1, 2, 3, 4, 5], 10, DAY).into_iter().map(|x| x.1).collect();
        assert_eq!(w, vec![6, 1, 1, 1, 6]); // 6/15 = 40 %, 3/15 = 20 %
    }

    #[test]
    fn time_decay_halves_every_half_life() {
        assert_eq!(decay_weight(0, DAY), 1_000_000_000);
        assert_eq!(decay_weight(DAY, DAY), 500_000_000);
        assert_eq!(decay_weight(7 * DAY, DAY), 7_812_500);
        assert_eq!(decay_weight(DAY / 2, DAY), 707_106_781); // 1e9 / sqrt(2) = 707106781.19
        assert_eq!(decay_weight(30 * DAY, DAY), 1); // 0.93
        assert_eq!(decay_weight(31 * DAY, DAY), 0); // 0.47
    }
}

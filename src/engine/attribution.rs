//! The attribution models (SPEC §2): which eligible touches are credited, with what weight.

use crate::model::{Millis, Model};

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

//! Money arithmetic (SPEC §3 and §4). Integers only; each rounding step is written once,
//! here, and named after its rule. Products go through i128 so no input can overflow.

/// SPEC §3.2, largest remainder: splits `gross` by `weights` so the shares sum to `gross`.
///
/// `base_c = floor(gross * w_c / W)`; the leftover units go one each to the largest
/// remainders `gross * w_c mod W`; equal remainders go to the lower index (callers list
/// creators by their first credited touch, so that is the spec's tie-break). Returns
/// `None` when the weights sum to zero (nothing to split by).
pub fn split_largest_remainder(gross: i64, weights: &[u64]) -> Option<Vec<i64>> {
    // One creator (last and first touch, always): the whole gross, no remainders to rank.
    if let &[w] = weights {
        return (w > 0).then(|| vec![gross]);
    }
    split_core(gross, weights, Rank::Leftover).map(|(shares, _, _)| shares)
}

/// Every step of [`split_largest_remainder`], for `attrib explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitSteps {
    /// `W`, the sum of the weights.
    pub total_weight: i128,
    /// `floor(gross * w_c / W)` per creator.
    pub base: Vec<i64>,
    /// `gross * w_c mod W` per creator.
    pub remainder: Vec<i128>,
    /// `gross - sum(base)`.
    pub leftover: i64,
    /// The creators (indices) that got one leftover unit each, in the order they got it.
    pub leftover_to: Vec<usize>,
    /// The final shares, `base` plus the leftover units.
    pub shares: Vec<i64>,
}

/// [`split_largest_remainder`] with its steps; the same computation.
pub fn split_steps(gross: i64, weights: &[u64]) -> Option<SplitSteps> {
    let (shares, ranked, leftover) = split_core(gross, weights, Rank::All)?;
    let leftover_to: Vec<usize> = ranked.iter().take(leftover).map(|x| x.1).collect();
    let mut base = shares.clone();
    for &i in &leftover_to {
        base[i] -= 1;
    }
    let mut remainder = vec![0; weights.len()];
    for &(r, i) in &ranked {
        remainder[i] = r;
    }
    Some(SplitSteps {
        total_weight: weights.iter().map(|&w| i128::from(w)).sum(),
        base,
        remainder,
        leftover: leftover as i64,
        leftover_to,
        shares,
    })
}

/// The shares, the `(remainder, index)` pairs ranked largest first (see [`Rank`]), and
/// the leftover.
type Core = (Vec<i64>, Vec<(i128, usize)>, usize);

/// How much of the remainders [`split_core`] ranks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rank {
    /// All of them, largest first (`attrib explain` shows them).
    All,
    /// Only the `leftover` largest, at the front in any order: the creators that get a
    /// unit. The ranking is a total order (indices differ), so the set is the same.
    Leftover,
}

fn split_core(gross: i64, weights: &[u64], rank: Rank) -> Option<Core> {
    let total: i128 = weights.iter().map(|&w| i128::from(w)).sum();
    if total == 0 {
        return None;
    }
    let gross_wide = i128::from(gross);
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut assigned: i128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let product = gross_wide * i128::from(w);
        let base = product / total;
        assigned += base;
        shares.push(base);
        // `product % total` without a second i128 division.
        remainders.push((product - base * total, i));
    }
    // Fewer than `weights.len()` units: each remainder is below W.
    let leftover = (gross_wide - assigned) as usize;
    // Largest remainder first; among equals, the earlier creator.
    let order = |a: &(i128, usize), b: &(i128, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    match rank {
        Rank::All => remainders.sort_by(order),
        Rank::Leftover if leftover > 0 => _ = remainders.select_nth_unstable_by(leftover - 1, order),
        Rank::Leftover => {}
    }
    for &(_, i) in remainders.iter().take(leftover) {
        shares[i] += 1;
    }
    // Each share is at most `gross`, so it fits back into i64.
    Some((shares.into_iter().map(|s| s as i64).collect(), remainders, leftover))
}

/// SPEC §3.4, round half up: `(share * rate_bps + 5000) / 10000`.
pub fn commission_for(share: i64, rate_bps: u32) -> i64 {
    ((i128::from(share) * i128::from(rate_bps) + 5000) / 10000) as i64
}

/// SPEC §4, cumulative reversal: the total of `amount` reversed once `refunded` of the
/// line's `quantity` units are refunded, `(amount * Q + N/2) / N`. Refunding every unit
/// gives back exactly `amount`; the total never exceeds `amount`.
pub fn reversed_to_date(amount: i64, refunded: i64, quantity: i64) -> i64 {
    let n = i128::from(quantity);
    ((i128::from(amount) * i128::from(refunded) + n / 2) / n) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranking_only_the_leftover_gives_the_shares_of_the_full_ranking(
            gross in 0i64..1_000_000,
            // Small weights: many equal remainders, so ties are decided by order.
            weights in proptest::collection::vec(0u64..20, 0..40),
        ) {
            prop_assert_eq!(split_largest_remainder(gross, &weights), split_steps(gross, &weights).map(|s| s.shares));
        }
    }

    #[test]
    fn largest_remainder_sums_to_gross_and_breaks_ties_by_order() {
        // 100 over three equal weights: 33 each, one leftover; equal remainders → first.
        assert_eq!(split_largest_remainder(100, &[1, 1, 1]), Some(vec![34, 33, 33]));
        // 40/20/40 position-based with n = 3: weights 2, 1, 2.
        assert_eq!(split_largest_remainder(3998, &[2, 1, 2]), Some(vec![1599, 800, 1599]));
        // Largest remainder wins over order: 10 * [1, 2] / 3 = 3.33, 6.67 → 3, 7.
        assert_eq!(split_largest_remainder(10, &[1, 2]), Some(vec![3, 7]));
        assert_eq!(split_largest_remainder(0, &[5, 7]), Some(vec![0, 0]));
        assert_eq!(split_largest_remainder(7, &[0, 3]), Some(vec![0, 7]));
        assert_eq!(split_largest_remainder(7, &[0, 0]), None);
        assert_eq!(split_largest_remainder(7, &[]), None);
    }

    #[test]
    fn split_steps_show_bases_remainders_and_leftover_units() {
        let s = split_steps(10, &[1, 1, 1]).unwrap();
        assert_eq!((s.total_weight, s.base, s.remainder), (3, vec![3, 3, 3], vec![1, 1, 1]));
        assert_eq!((s.leftover, s.leftover_to, s.shares), (1, vec![0], vec![4, 3, 3]));
        let s = split_steps(10, &[1, 2]).unwrap();
        assert_eq!((s.base, s.remainder, s.leftover_to, s.shares), (vec![3, 6], vec![1, 2], vec![1], vec![3, 7]));
        assert_eq!(split_steps(7, &[0, 0]), None);
    }

    #[test]
    fn largest_remainder_never_overflows() {
        let s = split_largest_remainder(i64::MAX, &[1_000_000_000, 999_999_999, 3]).unwrap();
        assert_eq!(s.iter().map(|&x| i128::from(x)).sum::<i128>(), i128::from(i64::MAX));
    }

    #[test]
    fn commission_rounds_half_up() {
        assert_eq!(commission_for(3998, 1000), 400); // 399.8
        assert_eq!(commission_for(5, 1000), 1); // 0.5 → 1
        assert_eq!(commission_for(4, 1000), 0); // 0.4 → 0
        assert_eq!(commission_for(15, 1000), 2); // 1.5 → 2
        assert_eq!(commission_for(14, 1000), 1); // 1.4 → 1
        assert_eq!(commission_for(12345, 0), 0);
        assert_eq!(commission_for(12345, 10000), 12345);
        assert_eq!(commission_for(i64::MAX, 10000), i64::MAX);
    }

    #[test]
    fn reversals_are_cumulative_and_exact_at_the_end() {
        // Line of 3 units, commission 400: 1/3 → 133.33 → 133, 2/3 → 266.67 → 267, 3/3 → 400.
        assert_eq!(reversed_to_date(400, 1, 3), 133);
        assert_eq!(reversed_to_date(400, 2, 3), 267);
        assert_eq!(reversed_to_date(400, 3, 3), 400);
        // Half up: 5 * 1 / 2 = 2.5 → 3.
        assert_eq!(reversed_to_date(5, 1, 2), 3);
        assert_eq!(reversed_to_date(5, 2, 2), 5);
        for amount in [0, 1, 7, 399, 400, 12_345] {
            for n in 1..=7 {
                let mut prev = 0;
                for q in 0..=n {
                    let r = reversed_to_date(amount, q, n);
                    assert!(r >= prev && r <= amount, "monotone and bounded");
                    prev = r;
                }
                assert_eq!(prev, amount, "full refund reverses exactly");
            }
        }
    }
}

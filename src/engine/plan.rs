//! The commission plan (SPEC §3): which rate a creator earns on an item.

use serde::{Deserialize, Serialize};

use crate::model::{Millis, Str};

/// The rule id written when no rule applies.
pub const DEFAULT_RULE_ID: &str = "default";

/// One `[[commission.rules]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: Str,
    pub product_id: Option<Str>,
    pub creator_id: Option<Str>,
    pub category: Option<Str>,
    pub rate_bps: u32,
    /// Inclusive, purchase event time.
    pub valid_from: Option<Millis>,
    /// Exclusive, purchase event time.
    pub valid_until: Option<Millis>,
}

impl Rule {
    /// `4*[product_id] + 2*[creator_id] + 1*[category]`.
    pub fn specificity(&self) -> u8 {
        4 * u8::from(self.product_id.is_some())
            + 2 * u8::from(self.creator_id.is_some())
            + u8::from(self.category.is_some())
    }

    /// Whether every selector the rule names matches and `ts` lies in its validity.
    pub fn applies(&self, product_id: &str, creator_id: &str, category: Option<&str>, ts: Millis) -> bool {
        self.product_id.as_deref().is_none_or(|p| p == product_id)
            && self.creator_id.as_deref().is_none_or(|c| c == creator_id)
            && self.category.as_deref().is_none_or(|c| Some(c) == category)
            && self.valid_from.is_none_or(|from| ts >= from)
            && self.valid_until.is_none_or(|until| ts < until)
    }
}

/// The plan: a default rate and rules, most specific first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommissionPlan {
    default_rate_bps: u32,
    /// Sorted by specificity, highest first; stable, so equal scores keep config order.
    rules: Vec<Rule>,
}

impl CommissionPlan {
    /// A plan from rules in config order.
    pub fn new(default_rate_bps: u32, mut rules: Vec<Rule>) -> CommissionPlan {
        rules.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        CommissionPlan { default_rate_bps, rules }
    }

    /// The rate and rule id for this creator on this item at purchase time `ts`: the most
    /// specific applicable rule, the first listed among equals, else the default.
    pub fn rate_for(&self, product_id: &str, creator_id: &str, category: Option<&str>, ts: Millis) -> (u32, &str) {
        self.matching(product_id, creator_id, category, ts)
            .next()
            .map_or((self.default_rate_bps, DEFAULT_RULE_ID), |r| (r.rate_bps, r.id.as_str()))
    }

    /// Every applicable rule, the one that sets the rate first (see [`Self::rate_for`]),
    /// then the others in the order they would win.
    pub fn matching<'a: 'b, 'b>(
        &'a self,
        product_id: &'b str,
        creator_id: &'b str,
        category: Option<&'b str>,
        ts: Millis,
    ) -> impl Iterator<Item = &'a Rule> + 'b {
        self.rules.iter().filter(move |r| r.applies(product_id, creator_id, category, ts))
    }

    /// The rate when no rule applies.
    pub fn default_rate_bps(&self) -> u32 {
        self.default_rate_bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, product: Option<&str>, creator: Option<&str>, category: Option<&str>, rate: u32) -> Rule {
        Rule {
            id: id.into(),
            product_id: product.map(Into::into),
            creator_id: creator.map(Into::into),
            category: category.map(Into::into),
            rate_bps: rate,
            valid_from: None,
            valid_until: None,
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let plan = CommissionPlan::new(
            1000,
            vec![
                rule("cat", None, None, Some("beauty"), 1100),
                rule("creator", None, Some("c-1"), None, 1200),
                rule("creator-cat", None, Some("c-1"), Some("beauty"), 1300),
                rule("product", Some("p-1"), None, None, 1400),
            ],
        );
        assert_eq!(plan.rate_for("p-1", "c-1", Some("beauty"), 0), (1400, "product"));
        assert_eq!(plan.rate_for("p-2", "c-1", Some("beauty"), 0), (1300, "creator-cat"));
        assert_eq!(plan.rate_for("p-2", "c-1", Some("home"), 0), (1200, "creator"));
        assert_eq!(plan.rate_for("p-2", "c-2", Some("beauty"), 0), (1100, "cat"));
        assert_eq!(plan.rate_for("p-2", "c-2", None, 0), (1000, "default"));
    }

    #[test]
    fn matching_lists_the_winner_first_then_the_others_in_winning_order() {
        let plan = CommissionPlan::new(
            1000,
            vec![
                rule("cat", None, None, Some("beauty"), 1100),
                rule("other-creator", None, Some("c-2"), None, 1200),
                rule("creator", None, Some("c-1"), None, 1300),
                rule("cat-again", None, None, Some("beauty"), 1400),
            ],
        );
        let ids: Vec<&str> = plan.matching("p", "c-1", Some("beauty"), 0).map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["creator", "cat", "cat-again"]);
        assert_eq!(plan.rate_for("p", "c-1", Some("beauty"), 0), (1300, "creator"));
        assert_eq!(plan.matching("p", "c-3", None, 0).count(), 0);
    }

    #[test]
    fn equal_scores_go_to_the_first_listed() {
        let plan = CommissionPlan::new(
            1000,
            vec![rule("first", None, None, Some("beauty"), 1500), rule("second", None, None, Some("beauty"), 2000)],
        );
        assert_eq!(plan.rate_for("p", "c", Some("beauty"), 0), (1500, "first"));
    }

    #[test]
    fn validity_is_from_inclusive_until_exclusive() {
        let mut r = rule("window", None, None, None, 1500);
        r.valid_from = Some(100);
        r.valid_until = Some(200);
        let plan = CommissionPlan::new(1000, vec![r]);
        assert_eq!(plan.rate_for("p", "c", None, 99).1, "default");
        assert_eq!(plan.rate_for("p", "c", None, 100).1, "window");
        assert_eq!(plan.rate_for("p", "c", None, 199).1, "window");
        assert_eq!(plan.rate_for("p", "c", None, 200).1, "default");
    }

    #[test]
    fn a_rule_without_selectors_beats_the_default() {
        let plan = CommissionPlan::new(1000, vec![rule("all", None, None, None, 0)]);
        assert_eq!(plan.rate_for("p", "c", None, 0), (0, "all"));
    }
}

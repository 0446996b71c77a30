//! `attrib explain` (SPEC 8.4): its credits equal what replay writes, on generated
//! workloads under every model and edge configs, and each verdict on a hand-made case.

use std::collections::{BTreeMap, BTreeSet};

use attrib::config::Config;
use attrib::explain::{explain_texts, ExplainError, Explanation, Request, Verdict};
use attrib::gen::{generate, GenOptions};
use attrib::model::{Record, RecordKind};
use attrib::replay::replay_texts;

fn config(toml: &str) -> Config {
    Config::from_toml(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"))
}

fn explain(cfg: &Config, input: &str, purchase: &str) -> Result<Explanation, ExplainError> {
    explain_texts(cfg, &[input], &Request { purchase_event_id: purchase.into(), user_id: None })
}

fn workload(seed: u64) -> String {
    let opts = GenOptions {
        events: 4_000,
        seed,
        users: 150,
        creators: 25,
        products: 40,
        // ~17 h of event time: 30 m to 1 d windows cut through the touches.
        events_per_sec: 0.1,
        duplicates: 0.03,
        invalid: 0.01,
        ..GenOptions::default()
    };
    let mut text = Vec::new();
    generate(&opts, |_, line| {
        text.extend_from_slice(line);
        text.push(b'\n');
        Ok(())
    })
    .expect("generate");
    // Some invalid lines are not UTF-8; they stay invalid once replaced.
    String::from_utf8_lossy(&text).into_owned()
}

/// `(creator, weight, share, rate, rule, commission)` by item, as replay wrote them.
type Credits = BTreeMap<u32, Vec<(String, u64, i64, u32, String, i64)>>;

fn from_records(records: &[&Record]) -> Credits {
    let mut m = Credits::new();
    for r in records {
        m.entry(r.item_index).or_default().push((
            r.creator_id.to_string(),
            r.weight,
            r.share_minor,
            r.rate_bps,
            r.rule_id.to_string(),
            r.commission_minor,
        ));
    }
    m
}

fn from_explanation(e: &Explanation) -> Credits {
    let mut m = Credits::new();
    for item in &e.items {
        for c in &item.credits {
            m.entry(item.item_index as u32).or_default().push((
                c.creator_id.clone(),
                c.weight,
                c.share_minor,
                c.rate_bps,
                c.rule_id.clone(),
                c.commission_minor,
            ));
        }
    }
    m
}

/// Explains a sample of purchases (attributed and not) and compares with replay;
/// returns the verdicts seen.
fn explain_matches_replay(cfg: &Config, input: &str, sample: usize) -> BTreeSet<&'static str> {
    let (sink, _) = replay_texts(cfg, &[input]);
    let paid: Vec<&Record> = sink.records.iter().filter(|r| r.kind == RecordKind::Commission).collect();
    let attributed: BTreeSet<&str> = paid.iter().map(|r| &*r.purchase_event_id).collect();
    let mut purchases: Vec<String> = Vec::new();
    let mut unattributed: Vec<String> = Vec::new();
    for line in input.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["type"] == "purchase" {
            if let Some(id) = v["event_id"].as_str() {
                let list = if attributed.contains(id) { &mut purchases } else { &mut unattributed };
                if !list.iter().any(|p| p == id) {
                    list.push(id.to_string());
                }
            }
        }
    }
    assert!(purchases.len() >= sample, "the workload has {} attributed purchases", purchases.len());
    let step = purchases.len() / sample;
    let mut chosen: Vec<&String> = purchases.iter().step_by(step.max(1)).take(sample).collect();
    chosen.extend(unattributed.iter().take(2));
    let mut seen = BTreeSet::new();
    for id in chosen {
        let e = match explain(cfg, input, id) {
            Ok(e) => e,
            // Invalid lines can cut a purchase (its only copy) out of the input.
            Err(ExplainError::UnknownPurchase { .. }) if !attributed.contains(id.as_str()) => continue,
            Err(err) => panic!("explain {id}: {err}"),
        };
        assert!(e.is_final, "{id}: final at the end of a replay");
        let records: Vec<&Record> = paid.iter().copied().filter(|r| &*r.purchase_event_id == id).collect();
        assert_eq!(from_explanation(&e), from_records(&records), "{id}: explain credits = replay records");
        for item in &e.items {
            seen.extend(item.touches.iter().map(|t| t.verdict.as_str()));
            let credited: Vec<_> = item.touches.iter().filter(|t| t.verdict == Verdict::Credited).collect();
            for r in records.iter().filter(|r| r.item_index as usize == item.item_index) {
                let mine: Vec<_> = credited.iter().filter(|t| *t.creator_id == *r.creator_id).collect();
                assert_eq!(mine.len(), r.touch_count as usize, "{id}: touch_count of {}", r.creator_id);
                assert_eq!(mine.last().map(|t| t.event_id.as_str()), Some(&*r.touch_event_id), "{id}: latest touch");
                assert_eq!(mine.iter().map(|t| t.weight).sum::<u64>(), r.weight, "{id}: weights sum per creator");
            }
        }
    }
    seen
}

#[test]
fn explain_credits_equal_replay_for_every_model() {
    let input = workload(7);
    let mut seen = BTreeSet::new();
    for model in ["last_touch", "first_touch", "linear", "position_based", "time_decay"] {
        let cfg = config(&format!("[attribution]\nmodel = \"{model}\"\nclick_window = \"6h\"\nview_window = \"1h\"\n"));
        seen.extend(explain_matches_replay(&cfg, &input, 6));
    }
    // The sample is not trivial: touches win and lose for most reasons.
    for verdict in ["credited", "outside_window", "other_product", "view_beaten_by_click", "not_chosen_by_model"] {
        assert!(seen.contains(verdict), "no {verdict} among {seen:?}");
    }
}

#[test]
fn explain_credits_equal_replay_under_edge_configs() {
    let input = workload(11);
    let edge = [
        // Surfaces with their own windows, self-attribution allowed.
        "[attribution]\nmodel = \"position_based\"\nclick_window = \"2h\"\nview_window = \"30m\"\nallow_self_attribution = true\n\
         [attribution.surface.live]\nclick_window = \"1h\"\n[attribution.surface.showcase]\nview_window = \"3h\"\n",
        // Rules of every specificity and validity.
        "[attribution]\nmodel = \"linear\"\n[commission]\ndefault_rate_bps = 777\n\
         [[commission.rules]]\nid = \"cat\"\ncategory = \"beauty\"\nrate_bps = 1234\n\
         [[commission.rules]]\nid = \"creator\"\ncreator_id = \"c-1\"\nrate_bps = 2000\n\
         [[commission.rules]]\nid = \"product\"\nproduct_id = \"p-2\"\nrate_bps = 3000\n\
         [[commission.rules]]\nid = \"all\"\nrate_bps = 900\nvalid_until = \"2030-01-01T00:00:00Z\"\n",
        // A tight cap and lateness.
        "[attribution]\nmodel = \"time_decay\"\nhalf_life = \"2h\"\n[limits]\nmax_touches_per_user = 3\n\
         [time]\nmax_out_of_orderness = \"1s\"\nallowed_lateness = \"2s\"\n",
    ];
    let seen: Vec<BTreeSet<&str>> = edge.iter().map(|toml| explain_matches_replay(&config(toml), &input, 6)).collect();
    assert!(seen[2].contains("dropped_by_cap"), "a cap of 3 drops touches: {:?}", seen[2]);
}

fn verdicts(e: &Explanation, item: usize) -> Vec<(String, Verdict, u64)> {
    e.items[item].touches.iter().map(|t| (t.event_id.clone(), t.verdict, t.weight)).collect()
}

const T: i64 = 1_764_400_000_000;
const H: i64 = 3_600_000;

fn click(id: &str, ts: i64, creator: &str, product: Option<&str>) -> String {
    touch("click", id, ts, creator, product, None)
}

fn touch(kind: &str, id: &str, ts: i64, creator: &str, product: Option<&str>, surface: Option<&str>) -> String {
    let mut s = format!(r#"{{"type":"{kind}","event_id":"{id}","ts":{ts},"user_id":"u-1","creator_id":"{creator}""#);
    if let Some(p) = product {
        s += &format!(r#","product_id":"{p}""#);
    }
    if let Some(x) = surface {
        s += &format!(r#","surface":"{x}""#);
    }
    s + "}\n"
}

fn purchase(id: &str, ts: i64, order: &str) -> String {
    format!(
        r#"{{"type":"purchase","event_id":"{id}","ts":{ts},"user_id":"u-1","order_id":"{order}","currency":"USD","items":[{{"product_id":"p-1","quantity":1,"unit_price":1000,"category":"beauty"}}]}}"#
    ) + "\n"
}

#[test]
fn each_eligibility_verdict() {
    let cfg = config("[attribution.surface.live]\nclick_window = \"30m\"\n");
    let input = [
        click("far", T - 8 * 24 * H, "c-9", None), // before the 7 d lookback: not listed
        touch("view", "old-view", T - 2 * H * 24, "c-1", None, None), // view window 1 d
        touch("click", "live-click", T - 2 * H, "c-2", None, Some("live")), // live click 30 m
        click("other", T - 3 * H, "c-3", Some("p-2")),
        click("self", T - 4 * H, "u-1", None),
        touch("view", "beaten", T - H, "c-4", Some("p-1"), None),
        click("latest", T - 5 * H, "c-5", Some("p-1")),
        click("earlier", T - 6 * H + 1, "c-6", None),
        click("after", T + 1, "c-7", None), // after the purchase: not listed
        purchase("o-1", T, "ord-1"),
    ]
    .concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    assert_eq!(
        verdicts(&e, 0),
        [
            ("old-view".into(), Verdict::OutsideWindow, 0),
            ("earlier".into(), Verdict::NotChosenByModel, 0),
            ("latest".into(), Verdict::Credited, 1),
            ("self".into(), Verdict::SelfAttribution, 0),
            ("other".into(), Verdict::OtherProduct, 0),
            ("live-click".into(), Verdict::OutsideWindow, 0),
            ("beaten".into(), Verdict::ViewBeatenByClick, 0),
        ]
    );
    let c = &e.items[0].credits;
    assert_eq!((c.len(), c[0].creator_id.as_str(), c[0].share_minor, c[0].commission_minor), (1, "c-5", 1000, 100));
    // Allowed self-attribution credits the shopper's own click like any other.
    let cfg = config("[attribution]\nallow_self_attribution = true\nmodel = \"linear\"\n");
    let e = explain(&cfg, &input, "o-1").expect("explain");
    let self_touch = e.items[0].touches.iter().find(|t| t.event_id == "self").unwrap();
    assert_eq!((self_touch.verdict, self_touch.weight), (Verdict::Credited, 1));
}

#[test]
fn duplicate_and_cap_verdicts() {
    let cfg = config("[limits]\nmax_touches_per_user = 2\n[attribution]\nmodel = \"linear\"\n");
    let input = [
        click("k-1", T - 3 * H, "c-1", None),
        click("k-1", T - 3 * H, "c-1", None), // a redelivery
        click("k-2", T - 2 * H, "c-2", None),
        click("k-3", T - H, "c-3", None), // the cap of 2 drops k-1
        purchase("o-1", T, "ord-1"),
    ]
    .concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    assert_eq!(
        verdicts(&e, 0),
        [
            ("k-1".into(), Verdict::DroppedByCap, 0),
            ("k-1".into(), Verdict::Duplicate, 0),
            ("k-2".into(), Verdict::Credited, 1),
            ("k-3".into(), Verdict::Credited, 1),
        ]
    );
}

#[test]
fn too_late_touches_are_the_ones_that_came_after_the_purchase_was_paid() {
    let cfg = config("[time]\nmax_out_of_orderness = \"1s\"\nallowed_lateness = \"10m\"\n");
    let input = [
        click("k-1", T - H, "c-1", None),
        purchase("o-1", T, "ord-1"),
        click("later", T + 2 * H, "c-9", None), // moves the watermark: o-1 is paid
        click("late", T - 30 * 60_000, "c-2", None), // within the lookback, but the purchase is paid
        click("next", T + 10 * 24 * H, "c-9", None), // and now far behind the watermark
        click("too-late", T - 20 * 60_000, "c-3", None), // dead-lettered
    ]
    .concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    assert_eq!(
        verdicts(&e, 0),
        [
            ("k-1".into(), Verdict::Credited, 1),
            ("late".into(), Verdict::TooLate, 0),
            ("too-late".into(), Verdict::TooLate, 0),
        ]
    );
    let (sink, _) = replay_texts(&cfg, &[&input]);
    assert!(sink.dead_letters.iter().any(|d| d.payload.contains("too-late")), "replay dead-letters it too");
}

#[test]
fn rules_that_set_the_rate_and_the_others_that_matched() {
    let cfg = config(
        "[commission]\ndefault_rate_bps = 500\n\
         [[commission.rules]]\nid = \"cat\"\ncategory = \"beauty\"\nrate_bps = 1500\n\
         [[commission.rules]]\nid = \"creator\"\ncreator_id = \"c-1\"\nrate_bps = 2000\n\
         [[commission.rules]]\nid = \"nope\"\ncreator_id = \"c-2\"\nrate_bps = 9000\n",
    );
    let input = [click("k-1", T - H, "c-1", None), purchase("o-1", T, "ord-1")].concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    let c = &e.items[0].credits[0];
    assert_eq!((c.rule_id.as_str(), c.rate_bps, c.rule_score, c.commission_minor), ("creator", 2000, Some(2), 200));
    assert_eq!(c.other_rules, [("cat".to_string(), 1, 1500)]);
    assert!(e.to_text().contains("also matched \"cat\" (score 1, 1500 bps)"), "{}", e.to_text());
}

#[test]
fn split_steps_show_floors_remainders_and_leftover_units() {
    let cfg = config("[attribution]\nmodel = \"linear\"\n");
    let input = [
        click("k-1", T - 3 * H, "c-1", None),
        click("k-2", T - 2 * H, "c-2", None),
        click("k-3", T - H, "c-3", None),
        purchase("o-1", T, "ord-1"),
    ]
    .concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    let s = e.items[0].split.as_ref().expect("split");
    assert_eq!((s.total_weight, &s.base, &s.remainder), (3, &vec![333, 333, 333], &vec![1, 1, 1]));
    assert_eq!((s.leftover, &s.leftover_to, &s.shares), (1, &vec![0], &vec![334, 333, 333]));
}

#[test]
fn json_has_exactly_the_spec_fields() {
    let input = [click("k-1", T - H, "c-1", None), purchase("o-1", T, "ord-1")].concat();
    let e = explain(&Config::default(), &input, "o-1").expect("explain");
    let v: serde_json::Value = serde_json::from_str(&e.to_json()).expect("json");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&v), ["final", "items", "order_id", "purchase_event_id"]);
    assert_eq!(keys(&v["items"][0]), ["credits", "item_index", "touches"]);
    assert_eq!(keys(&v["items"][0]["touches"][0]), ["creator_id", "event_id", "ts", "type", "verdict", "weight"]);
    assert_eq!(
        keys(&v["items"][0]["credits"][0]),
        ["commission_minor", "creator_id", "rate_bps", "rule_id", "share_minor", "weight"]
    );
    assert_eq!(v["final"], true);
    assert_eq!(v["items"][0]["touches"][0]["verdict"], "credited");
    assert_eq!(v["items"][0]["touches"][0]["type"], "click");
}

#[test]
fn unknown_purchase_is_an_error_naming_the_id() {
    let input = [click("k-1", T - H, "c-1", None), purchase("o-1", T, "ord-1")].concat();
    let err = explain(&Config::default(), &input, "o-404").unwrap_err();
    assert!(err.to_string().contains("no purchase has event_id \"o-404\""), "{err}");
    let err = explain(&Config::default(), &input, "k-1").unwrap_err();
    assert!(err.to_string().contains("that id is a click"), "{err}");
}

#[test]
fn a_purchase_that_never_becomes_final_says_why() {
    let cfg = config("[time]\nmax_out_of_orderness = \"1s\"\nallowed_lateness = \"1m\"\n");
    let input =
        [click("k-1", T - H, "c-1", None), click("k-2", T + H, "c-1", None), purchase("o-1", T, "ord-1")].concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    assert!(!e.is_final && e.items.is_empty());
    assert!(e.not_final.as_deref().unwrap_or("").contains("too_late"), "{:?}", e.not_final);
    // Its id repeats an earlier event of the shopper: ignored as a duplicate.
    let input = [click("o-1", T - H, "c-1", None), purchase("o-1", T, "ord-1")].concat();
    let e = explain(&cfg, &input, "o-1").expect("explain");
    assert!(!e.is_final && e.not_final.as_deref().unwrap_or("").contains("duplicate"), "{:?}", e.not_final);
}

#[test]
fn a_duplicate_order_is_an_error() {
    let input =
        [click("k-1", T - H, "c-1", None), purchase("o-1", T, "ord-1"), purchase("o-2", T + 1, "ord-1")].concat();
    assert!(explain(&Config::default(), &input, "o-1").is_ok());
    let err = explain(&Config::default(), &input, "o-2").unwrap_err();
    assert!(matches!(err, ExplainError::DuplicateOrder { .. }), "{err}");
}

#[test]
fn explain_agrees_with_every_golden_scenario() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let mut explained = 0;
    for dir in std::fs::read_dir(&root).expect("scenarios").map(|e| e.expect("entry").path()) {
        let Ok(input) = std::fs::read_to_string(dir.join("input.jsonl")) else { continue };
        let cfg = config(&std::fs::read_to_string(dir.join("attrib.toml")).unwrap_or_default());
        let (sink, _) = replay_texts(&cfg, &[&input]);
        let ids: BTreeSet<String> = input
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "purchase")
            .filter_map(|v| v["event_id"].as_str().map(String::from))
            .collect();
        for id in ids {
            let records: Vec<&Record> = sink
                .records
                .iter()
                .filter(|r| r.kind == RecordKind::Commission && *r.purchase_event_id == *id)
                .collect();
            match explain(&cfg, &input, &id) {
                Ok(e) => {
                    assert_eq!(from_explanation(&e), from_records(&records), "{}: {id}", dir.display());
                    explained += 1;
                }
                Err(ExplainError::DuplicateOrder { .. } | ExplainError::UnknownPurchase { .. }) => {
                    assert!(records.is_empty(), "{}: {id} paid but explain fails", dir.display())
                }
                Err(e) => panic!("{}: {id}: {e}", dir.display()),
            }
        }
    }
    assert!(explained > 40, "explained {explained} purchases");
}

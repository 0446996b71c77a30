//! A brute-force reference model of SPEC §2–§5, written from the spec (not from the
//! engine): sort, dedupe, then for every purchase scan every touch. No indexes, no
//! eviction, no watermarks; the property tests only generate workloads where none of
//! that matters (no late events, far fewer than `max_touches_per_user` touches).

use std::collections::{BTreeMap, HashSet};

use attrib::model::{Currency, Model, Record, RecordKind, TouchKind};
use serde_json::{json, Value};

pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// One valid input event.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    Touch {
        id: String,
        ts: i64,
        user: String,
        click: bool,
        creator: String,
        product: Option<String>,
        surface: Option<String>,
    },
    Purchase {
        id: String,
        ts: i64,
        user: String,
        order: String,
        currency: String,
        items: Vec<Line>,
    },
    Refund {
        id: String,
        ts: i64,
        user: String,
        order: String,
        items: Option<Vec<(String, i64)>>,
    },
}

/// A purchase item.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub product: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub category: Option<String>,
}

impl Ev {
    pub fn ts(&self) -> i64 {
        match self {
            Ev::Touch { ts, .. } | Ev::Purchase { ts, .. } | Ev::Refund { ts, .. } => *ts,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Ev::Touch { id, .. } | Ev::Purchase { id, .. } | Ev::Refund { id, .. } => id,
        }
    }

    /// One JSONL line; `rfc3339` writes `ts` as an RFC 3339 string instead of ms.
    pub fn to_json(&self, rfc3339: bool) -> String {
        let ts = |t: i64| -> Value {
            if rfc3339 {
                let dt = chrono::DateTime::from_timestamp_millis(t).expect("ts in range");
                json!(dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            } else {
                json!(t)
            }
        };
        let mut v = match self {
            Ev::Touch { id, ts: t, user, click, creator, product, surface } => {
                let mut v = json!({"type": if *click { "click" } else { "view" }, "event_id": id, "ts": ts(*t),
                    "user_id": user, "creator_id": creator, "content_id": "vid-1"});
                if let Some(p) = product {
                    v["product_id"] = json!(p);
                }
                if let Some(s) = surface {
                    v["surface"] = json!(s);
                }
                v
            }
            Ev::Purchase { id, ts: t, user, order, currency, items } => {
                let items: Vec<Value> = items
                    .iter()
                    .map(|l| {
                        let mut v =
                            json!({"product_id": l.product, "quantity": l.quantity, "unit_price": l.unit_price});
                        if let Some(c) = &l.category {
                            v["category"] = json!(c);
                        }
                        v
                    })
                    .collect();
                json!({"type": "purchase", "event_id": id, "ts": ts(*t), "user_id": user, "order_id": order,
                    "currency": currency, "items": items})
            }
            Ev::Refund { id, ts: t, user, order, items } => {
                let mut v = json!({"type": "refund", "event_id": id, "ts": ts(*t), "user_id": user, "order_id": order});
                if let Some(items) = items {
                    v["items"] = items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect();
                }
                v
            }
        };
        v["ignored_extra"] = json!(1); // unknown fields are ignored
        v.to_string()
    }
}

/// A commission rule; validity bounds in ms.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: String,
    pub product: Option<String>,
    pub creator: Option<String>,
    pub category: Option<String>,
    pub rate: u32,
    pub from: Option<i64>,
    pub until: Option<i64>,
}

/// The config knobs the model understands.
#[derive(Clone, Debug, PartialEq)]
pub struct Cfg {
    pub model: Model,
    pub click_window: i64,
    pub view_window: i64,
    pub half_life: i64,
    pub allow_self: bool,
    /// `(surface, click_window, view_window)` override.
    pub surface: Option<(String, Option<i64>, Option<i64>)>,
    pub default_rate: u32,
    pub rules: Vec<Rule>,
    pub refund_window: i64,
    pub max_out_of_orderness: i64,
    /// Never matters to the model: no generated event is late.
    pub allowed_lateness: i64,
    /// `commission.lock_period` (SPEC 8.2).
    pub lock_period: Option<i64>,
}

fn rfc(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Cfg {
    /// The TOML file for this config (durations in ms; allowed lateness far beyond the span).
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[attribution]\nmodel = \"{}\"\nclick_window = \"{}ms\"\nview_window = \"{}ms\"\nhalf_life = \"{}ms\"\n\
             allow_self_attribution = {}\n",
            self.model.as_str(),
            self.click_window,
            self.view_window,
            self.half_life,
            self.allow_self
        );
        if let Some((name, c, v)) = &self.surface {
            s += &format!("[attribution.surface.{name}]\n");
            if let Some(c) = c {
                s += &format!("click_window = \"{c}ms\"\n");
            }
            if let Some(v) = v {
                s += &format!("view_window = \"{v}ms\"\n");
            }
        }
        s += &format!(
            "[time]\nmax_out_of_orderness = \"{}ms\"\nallowed_lateness = \"{}ms\"\nrefund_window = \"{}ms\"\n",
            self.max_out_of_orderness, self.allowed_lateness, self.refund_window
        );
        s += &format!("[commission]\ndefault_rate_bps = {}\n", self.default_rate);
        if let Some(l) = self.lock_period {
            s += &format!("lock_period = \"{l}ms\"\n");
        }
        for r in &self.rules {
            s += &format!("[[commission.rules]]\nid = \"{}\"\nrate_bps = {}\n", r.id, r.rate);
            for (k, v) in [("product_id", &r.product), ("creator_id", &r.creator), ("category", &r.category)] {
                if let Some(v) = v {
                    s += &format!("{k} = \"{v}\"\n");
                }
            }
            if let Some(f) = r.from {
                s += &format!("valid_from = \"{}\"\n", rfc(f));
            }
            if let Some(u) = r.until {
                s += &format!("valid_until = \"{}\"\n", rfc(u));
            }
        }
        s
    }

    /// (click, view) window of a touch on `surface`.
    fn windows(&self, surface: Option<&str>) -> (i64, i64) {
        match (&self.surface, surface) {
            (Some((name, c, v)), Some(s)) if name == s => {
                (c.unwrap_or(self.click_window), v.unwrap_or(self.view_window))
            }
            _ => (self.click_window, self.view_window),
        }
    }

    fn rate(&self, product: &str, creator: &str, category: Option<&str>, t: i64) -> (u32, String) {
        let mut best: Option<(u32, &Rule)> = None;
        for r in &self.rules {
            let ok = r.product.as_deref().is_none_or(|p| p == product)
                && r.creator.as_deref().is_none_or(|c| c == creator)
                && r.category.as_deref().is_none_or(|c| Some(c) == category)
                && r.from.is_none_or(|f| t >= f)
                && r.until.is_none_or(|u| t < u);
            let score = 4 * r.product.is_some() as u32 + 2 * r.creator.is_some() as u32 + r.category.is_some() as u32;
            if ok && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, r));
            }
        }
        best.map_or((self.default_rate, "default".into()), |(_, r)| (r.rate, r.id.clone()))
    }
}

/// What the model expects.
#[derive(Debug, Default)]
pub struct Expected {
    pub records: Vec<Record>,
    pub duplicate_event: u64,
    pub duplicate_order: u64,
    /// Refunds of attributed orders at or after their lock time (SPEC 8.2).
    pub after_lock: u64,
}

/// A final purchase in the order ledger.
struct Order {
    ts: i64,
    attributed: bool,
    lines: Vec<OLine>,
    /// `ts + lock_period` for an attributed order under a lock period.
    lock_ts: Option<i64>,
    locked: bool,
}

/// One purchase line: product, quantity, units refunded so far, its commission records.
struct OLine {
    product: String,
    n: i64,
    done: i64,
    recs: Vec<Record>,
}

/// `(x * q + n/2) / n` in i128.
fn part(x: i64, q: i64, n: i64) -> i64 {
    ((x as i128 * q as i128 + (n / 2) as i128) / n as i128) as i64
}

/// Runs the spec over `events` (in any order).
pub fn run(cfg: &Cfg, events: &[Ev]) -> Expected {
    let mut sorted: Vec<&Ev> = events.iter().collect();
    sorted.sort_by(|a, b| (a.ts(), a.id()).cmp(&(b.ts(), b.id())));
    let mut out = Expected::default();
    let mut seen = HashSet::new();
    let mut evs = Vec::new();
    for e in sorted {
        if seen.insert(e.id().to_string()) {
            evs.push(e);
        } else {
            out.duplicate_event += 1;
        }
    }
    // Eligibility depends only on ts (a purchase at T is final only after every touch
    // with ts <= T was read), so every touch, in (ts, event_id) order, is "remembered".
    let touches: Vec<&Ev> = evs.iter().copied().filter(|e| matches!(e, Ev::Touch { .. })).collect();
    let mut ledger: BTreeMap<String, Order> = BTreeMap::new();
    for e in &evs {
        // SPEC 8.2: locks are written before any event at or after their lock time.
        lock_until(&mut ledger, e.ts(), &mut out.records);
        match e {
            Ev::Touch { .. } => {}
            Ev::Purchase { ts: t, order, items, .. } => {
                if ledger.contains_key(order) {
                    out.duplicate_order += 1;
                    continue;
                }
                let mut o = Order { ts: *t, attributed: false, lines: Vec::new(), lock_ts: None, locked: false };
                for (idx, line) in items.iter().enumerate() {
                    let recs = attribute(cfg, &touches, e, idx, line);
                    o.attributed |= !recs.is_empty();
                    out.records.extend(recs.iter().cloned());
                    o.lines.push(OLine { product: line.product.clone(), n: line.quantity, done: 0, recs });
                }
                o.lock_ts = cfg.lock_period.filter(|_| o.attributed).map(|l| t + l);
                ledger.insert(order.clone(), o);
            }
            Ev::Refund { id, ts: t, order, items, .. } => {
                let Some(o) = ledger.get_mut(order) else { continue };
                if !o.attributed || *t - o.ts > cfg.refund_window + cfg.allowed_lateness {
                    continue;
                }
                if o.lock_ts.is_some_and(|l| *t >= l) {
                    out.after_lock += 1;
                    continue;
                }
                if *t > o.ts + cfg.refund_window {
                    continue;
                }
                // Units this refund takes from each line.
                let mut take: Vec<i64> = match items {
                    None => o.lines.iter().map(|l| l.n - l.done).collect(),
                    Some(_) => vec![0; o.lines.len()],
                };
                for (p, q) in items.iter().flatten() {
                    let mut left = *q;
                    for (i, l) in o.lines.iter().enumerate() {
                        if l.product == *p {
                            let k = left.min(l.n - l.done - take[i]);
                            take[i] += k;
                            left -= k;
                        }
                    }
                }
                for (l, k) in o.lines.iter_mut().zip(take) {
                    if k == 0 {
                        continue;
                    }
                    let (q0, q1) = (l.done, l.done + k);
                    l.done = q1;
                    for c in &l.recs {
                        let mut r = c.clone();
                        r.kind = RecordKind::Reversal;
                        r.commission_id = format!("{id}:{}:{}", c.item_index, c.creator_id).into();
                        r.quantity = k;
                        r.share_minor = part(c.share_minor, q0, l.n) - part(c.share_minor, q1, l.n);
                        r.commission_minor = part(c.commission_minor, q0, l.n) - part(c.commission_minor, q1, l.n);
                        r.original_commission_id = Some(c.commission_id.clone());
                        r.refund_event_id = Some(id.as_str().into());
                        out.records.push(r);
                    }
                }
            }
        }
    }
    // At the end of the input: locks the largest event time has reached (every event
    // counts, duplicates included).
    if let Some(max) = events.iter().map(Ev::ts).max() {
        lock_until(&mut ledger, max, &mut out.records);
    }
    out
}

/// Writes the lock records of every order with `lock_ts <= t` not locked yet, in
/// `(lock_ts, purchase_ts, purchase_event_id)` order: per line, per credited creator,
/// the units not refunded and the commission net of its reversals.
fn lock_until(ledger: &mut BTreeMap<String, Order>, t: i64, records: &mut Vec<Record>) {
    let mut due: Vec<(i64, i64, String, String)> = ledger
        .iter()
        .filter(|(_, o)| !o.locked && o.lock_ts.is_some_and(|l| l <= t))
        .map(|(k, o)| {
            let pid =
                o.lines.iter().flat_map(|l| &l.recs).next().map_or(String::new(), |r| r.purchase_event_id.to_string());
            (o.lock_ts.unwrap(), o.ts, pid, k.clone())
        })
        .collect();
    due.sort();
    for (lock_ts, _, _, key) in due {
        let o = ledger.get_mut(&key).unwrap();
        o.locked = true;
        for l in &o.lines {
            for c in &l.recs {
                let mut r = c.clone();
                r.kind = RecordKind::Lock;
                r.commission_id = format!("{}:lock", c.commission_id).into();
                r.quantity = l.n - l.done;
                r.share_minor = c.share_minor - part(c.share_minor, l.done, l.n);
                r.commission_minor = c.commission_minor - part(c.commission_minor, l.done, l.n);
                r.original_commission_id = Some(c.commission_id.clone());
                r.lock_ts = Some(lock_ts);
                records.push(r);
            }
        }
    }
}

/// The commission records of one purchase item (empty: unattributed).
fn attribute(cfg: &Cfg, touches: &[&Ev], purchase: &Ev, idx: usize, line: &Line) -> Vec<Record> {
    let Ev::Purchase { id: pid, ts: t, user: u, order, currency, .. } = purchase else { unreachable!() };
    let eligible = |want_click: bool| -> Vec<(&str, i64, &str)> {
        let mut v = Vec::new();
        for e in touches {
            let Ev::Touch { id, ts, user, click, creator, product, surface } = e else { unreachable!() };
            let (cw, vw) = cfg.windows(surface.as_deref());
            let window = if *click { cw } else { vw };
            if *click == want_click
                && user == u
                && t - window <= *ts
                && ts <= t
                && product.as_ref().is_none_or(|p| *p == line.product)
                && (cfg.allow_self || creator != u)
            {
                v.push((id.as_str(), *ts, creator.as_str()));
            }
        }
        v // already in (ts, event_id) order
    };
    let (mut chosen, mut kind) = (eligible(true), TouchKind::Click);
    if chosen.is_empty() {
        (chosen, kind) = (eligible(false), TouchKind::View);
    }
    let n = chosen.len();
    if n == 0 {
        return Vec::new();
    }
    // (touch, weight) pairs credited by the model.
    let credited: Vec<((&str, i64, &str), u64)> = match cfg.model {
        Model::LastTouch => vec![(chosen[n - 1], 1)],
        Model::FirstTouch => vec![(chosen[0], 1)],
        Model::Linear => chosen.iter().map(|&c| (c, 1)).collect(),
        Model::PositionBased => chosen
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                (
                    c,
                    if n <= 2 {
                        1
                    } else if i == 0 || i == n - 1 {
                        2 * (n as u64 - 2)
                    } else {
                        1
                    },
                )
            })
            .collect(),
        Model::TimeDecay => chosen
            .iter()
            .map(|&c| (c, (1e9 * (-((t - c.1) as f64) / cfg.half_life as f64).exp2()).round() as u64))
            .collect(),
    };
    // Per creator, in order of first credited touch: (creator, weight, latest touch, count).
    let mut per: Vec<(&str, u64, (&str, i64), u32)> = Vec::new();
    for ((tid, tts, c), w) in credited {
        match per.iter_mut().find(|p| p.0 == c) {
            Some(p) => {
                p.1 += w;
                p.2 = (tid, tts);
                p.3 += 1;
            }
            None => per.push((c, w, (tid, tts), 1)),
        }
    }
    let total: u64 = per.iter().map(|p| p.1).sum();
    if total == 0 {
        return Vec::new();
    }
    let gross = line.quantity * line.unit_price;
    let g = gross as i128;
    let mut shares: Vec<i64> = per.iter().map(|p| (g * p.1 as i128 / total as i128) as i64).collect();
    let mut left = gross - shares.iter().sum::<i64>();
    let mut by_rem: Vec<usize> = (0..per.len()).collect();
    by_rem.sort_by_key(|&i| std::cmp::Reverse(g * per[i].1 as i128 % total as i128)); // stable: ties keep order
    for &i in &by_rem {
        if left > 0 {
            shares[i] += 1;
            left -= 1;
        }
    }
    per.iter()
        .zip(shares)
        .map(|(&(c, w, (tid, tts), count), share)| {
            let (rate, rule) = cfg.rate(&line.product, c, line.category.as_deref(), *t);
            Record {
                commission_id: format!("{pid}:{idx}:{c}").into(),
                kind: RecordKind::Commission,
                order_id: order.as_str().into(),
                purchase_event_id: pid.as_str().into(),
                item_index: idx as u32,
                product_id: line.product.as_str().into(),
                quantity: line.quantity,
                user_id: u.as_str().into(),
                creator_id: c.into(),
                model: cfg.model,
                weight: w,
                total_weight: total,
                touch_event_id: tid.into(),
                touch_type: kind,
                touch_ts: tts,
                touch_count: count,
                purchase_ts: *t,
                gross_minor: gross,
                share_minor: share,
                rate_bps: rate,
                rule_id: rule.as_str().into(),
                commission_minor: ((share as i128 * rate as i128 + 5000) / 10000) as i64,
                currency: Currency::parse(currency).expect("valid currency"),
                original_commission_id: None,
                refund_event_id: None,
                lock_ts: None,
                revision: None,
                shadow: false,
            }
        })
        .collect()
}

//! Restatement (SPEC 8.5): what the events paid under the old config against what they
//! would pay under a new one, as adjustment records.
//!
//! One pass over the inputs: each line is read and decoded once and handed to two
//! [`Pipeline`]s, the baseline's and the new config's (when the two configs decode
//! differently, `limits` differ, each pipeline decodes for itself). Each pipeline's paid
//! records are folded into a [`Nets`]: per (shopper, purchase, item, creator), the
//! commission plus its reversals. Lock records are not counted: a lock only says which
//! part of the net was paid out ("minus nothing for locks"). Shadow records are never
//! paid, so never restated.
//!
//! Decisions where SPEC is silent:
//! - A key gets an adjustment when its net commission **or** its net share differs, so
//!   old records plus adjustments equal the new ones in both amounts (a model change can
//!   move shares without moving a rounded commission).
//! - Adjustments come in the order the new config writes its commissions, then the keys
//!   only the old config credited, in the order it wrote them: the same input and
//!   configs always give the same bytes.
//! - `quantity` is the line's quantity; the other fields come from the new commission
//!   (or the old one where the creator is no longer credited).
//! - A revision name is 1–64 characters of `A-Z a-z 0-9 . _ -`: it ends up in ids.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::Stats;
use crate::model::{Currency, DeadLetter, Record, RecordKind, RecordView, SourcePos, Str};
use crate::pipeline::{Pipeline, Processing, Sink};
use crate::replay::{Input, Lines, Step};

/// One (purchase, item, creator) of one config: its commission and its net so far.
#[derive(Clone, Debug)]
struct Net {
    commission: Record,
    share: i64,
    amount: i64,
}

/// The paid records of one config, folded to nets per key, in the order written.
#[derive(Default)]
pub struct Nets {
    index: HashMap<Box<str>, usize, ahash::RandomState>,
    nets: Vec<Net>,
    key: String,
}

fn key_into(buf: &mut String, r: &RecordView<'_>) {
    buf.clear();
    buf.push_str(r.user_id);
    buf.push('\u{0}');
    buf.push_str(r.purchase_event_id);
    buf.push('\u{0}');
    buf.push_str(itoa::Buffer::new().format(r.item_index));
    buf.push('\u{0}');
    buf.push_str(r.creator_id);
}

impl Sink for Nets {
    fn record(&mut self, r: &RecordView<'_>, _tag: u64) {
        if r.shadow {
            return;
        }
        match r.kind {
            RecordKind::Commission => {
                key_into(&mut self.key, r);
                // A commission id is written once per shopper (duplicates are dropped
                // before): a repeat would be a new order under a reused purchase id.
                match self.index.get(self.key.as_str()) {
                    Some(&i) => {
                        let n = &mut self.nets[i];
                        n.share = n.share.saturating_add(r.share_minor);
                        n.amount = n.amount.saturating_add(r.commission_minor);
                    }
                    None => {
                        self.index.insert(self.key.as_str().into(), self.nets.len());
                        self.nets.push(Net {
                            commission: r.to_record(),
                            share: r.share_minor,
                            amount: r.commission_minor,
                        });
                    }
                }
            }
            RecordKind::Reversal => {
                key_into(&mut self.key, r);
                if let Some(&i) = self.index.get(self.key.as_str()) {
                    let n = &mut self.nets[i];
                    n.share = n.share.saturating_add(r.share_minor);
                    n.amount = n.amount.saturating_add(r.commission_minor);
                }
            }
            RecordKind::Lock | RecordKind::Adjustment => {}
        }
    }

    fn dead_letter(&mut self, _: DeadLetter) {}
}

impl Nets {
    /// Net (share, commission) per key, for tests: `commission_id` → amounts.
    pub fn totals(&self) -> BTreeMap<(Str, Str), (i64, i64)> {
        self.nets
            .iter()
            .map(|n| ((n.commission.user_id.clone(), n.commission.commission_id.clone()), (n.share, n.amount)))
            .collect()
    }
}

/// Adjustments of one creator in one currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatorTotal {
    pub adjustments: u64,
    pub share_minor: i64,
    pub commission_minor: i64,
}

/// What a restatement found.
#[derive(Debug)]
pub struct Restatement {
    pub revision: String,
    /// The adjustment records, in output order.
    pub adjustments: Vec<Record>,
    /// Per (creator, currency).
    pub by_creator: BTreeMap<(Str, Currency), CreatorTotal>,
    /// Counters of the baseline and of the new config.
    pub baseline: Stats,
    pub restated: Stats,
    /// (purchase, item, creator) keys compared.
    pub keys: usize,
    pub elapsed: Duration,
}

/// Why a revision name is refused.
pub fn check_revision(revision: &str) -> Result<(), String> {
    let ok = !revision.is_empty()
        && revision.len() <= 64
        && revision.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("revision {revision:?}: 1 to 64 characters of A-Z a-z 0-9 . _ -"))
    }
}

/// Replays `inputs` once under `baseline` and `config` and compares the nets.
pub fn restate<R: BufRead>(
    baseline: &Config,
    config: &Config,
    revision: &str,
    inputs: Vec<Input<R>>,
) -> io::Result<Restatement> {
    check_revision(revision).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let start = Instant::now();
    let (old_p, new_p) = (Processing::from_config(baseline), Processing::from_config(config));
    let shared_decode = old_p.limits == new_p.limits;
    let mut lines = Lines::new(inputs);
    let mut old = Pipeline::new(old_p, lines.len());
    let mut new = Pipeline::new(new_p, lines.len());
    let (mut old_nets, mut new_nets) = (Nets::default(), Nets::default());
    // Both pipelines see the same event times, so their watermarks pick the same lines.
    while let Some(step) = lines.next(new.watermarks())? {
        match step {
            Step::End(i) => {
                old.finish_input(i, &mut old_nets);
                new.finish_input(i, &mut new_nets);
            }
            Step::Line { input, raw, name, line_no, .. } => {
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let source = || SourcePos::File { file: name.to_string(), line: line_no };
                if shared_decode {
                    let decoded = new.decode(raw);
                    old.on_decoded(input, decoded.as_ref(), raw, source, None, 0, &mut old_nets);
                    new.on_decoded(input, decoded.as_ref(), raw, source, None, 0, &mut new_nets);
                } else {
                    old.on_message(input, raw, source, None, 0, &mut old_nets);
                    new.on_message(input, raw, source, None, 0, &mut new_nets);
                }
            }
        }
    }
    old.finish(&mut old_nets);
    new.finish(&mut new_nets);
    let mut out = adjustments(&old_nets, &new_nets, revision);
    out.baseline = old.engine().stats().clone();
    out.restated = new.engine().stats().clone();
    out.elapsed = start.elapsed();
    Ok(out)
}

/// The adjustments that take `old` to `new`.
pub fn adjustments(old: &Nets, new: &Nets, revision: &str) -> Restatement {
    let mut out = Restatement {
        revision: revision.to_string(),
        adjustments: Vec::new(),
        by_creator: BTreeMap::new(),
        baseline: Stats::default(),
        restated: Stats::default(),
        keys: 0,
        elapsed: Duration::ZERO,
    };
    let mut emit = |template: &Record, share: i64, amount: i64| {
        if share == 0 && amount == 0 {
            return;
        }
        // The template is a commission, whose id is the key's base id (SPEC 8.5:
        // `purchase_event_id:item_index:creator_id:adj:NAME`).
        debug_assert_eq!(template.kind, RecordKind::Commission);
        let mut rec = template.clone();
        rec.commission_id = format!("{}:adj:{revision}", template.commission_id).into();
        rec.kind = RecordKind::Adjustment;
        rec.share_minor = share;
        rec.commission_minor = amount;
        rec.revision = Some(revision.into());
        rec.original_commission_id = None;
        rec.refund_event_id = None;
        rec.lock_ts = None;
        let t = out.by_creator.entry((rec.creator_id.clone(), rec.currency)).or_default();
        t.adjustments += 1;
        t.share_minor = t.share_minor.saturating_add(share);
        t.commission_minor = t.commission_minor.saturating_add(amount);
        out.adjustments.push(rec);
    };
    let mut keys = 0;
    for (key, &i) in sorted(&new.index) {
        keys += 1;
        let n = &new.nets[i];
        let (old_share, old_amount) = old.index.get(key).map_or((0, 0), |&j| (old.nets[j].share, old.nets[j].amount));
        emit(&n.commission, n.share.saturating_sub(old_share), n.amount.saturating_sub(old_amount));
    }
    for (key, &j) in sorted(&old.index) {
        if !new.index.contains_key(key) {
            keys += 1;
            let o = &old.nets[j];
            emit(&o.commission, o.share.saturating_neg(), o.amount.saturating_neg());
        }
    }
    out.keys = keys;
    out
}

/// The entries of an index in the order they were written.
fn sorted(index: &HashMap<Box<str>, usize, ahash::RandomState>) -> Vec<(&str, &usize)> {
    let mut v: Vec<(&str, &usize)> = index.iter().map(|(k, i)| (&**k, i)).collect();
    v.sort_unstable_by_key(|x| *x.1);
    v
}

impl std::fmt::Display for Restatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "attrib restate summary: revision {}", self.revision)?;
        writeln!(
            f,
            "  compared   {} (purchase, item, creator) keys in {:.3} s: {} adjustment(s)",
            self.keys,
            self.elapsed.as_secs_f64(),
            self.adjustments.len()
        )?;
        for (name, s) in [("baseline", &self.baseline), ("restated", &self.restated)] {
            let net: Vec<String> = s.money.iter().map(|(c, (p, r))| format!("{c} {}", p.saturating_add(*r))).collect();
            writeln!(
                f,
                "  {name:<10} commission {}, reversal {}, lock {}; net {}",
                s.records_commission,
                s.records_reversal,
                s.records_lock,
                if net.is_empty() { "none".into() } else { net.join(", ") }
            )?;
        }
        writeln!(
            f,
            "  {:<24} {:<8} {:>11} {:>16} {:>16}",
            "creator", "currency", "adjustments", "share_minor", "commission_minor"
        )?;
        for ((creator, currency), t) in &self.by_creator {
            writeln!(
                f,
                "  {:<24} {:<8} {:>11} {:>16} {:>16}",
                creator.as_str(),
                currency.to_string(),
                t.adjustments,
                t.share_minor,
                t.commission_minor
            )?;
        }
        Ok(())
    }
}

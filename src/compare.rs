//! `attrib compare`: what was paid against what each shadow model would have paid
//! (SPEC 8.3), per creator and currency, as a text table or a self-contained HTML page
//! ([`html`]).
//!
//! Inputs are record files as `attrib replay` writes them: one paid file (`--out`) and
//! one or more shadow files (`--shadow-out`, any number of models per file). Every
//! amount is **net**: commissions plus reversals plus adjustments, in minor units. Lock
//! records (SPEC 8.2) are not added (they restate a commission's net, they do not move
//! money); they tell which part of the net is locked and which is still pending.
//!
//! A record file that does not parse, a shadow record in the paid file or a paid record
//! in a shadow file is an error naming the file and line: comparing the wrong files
//! silently would give a wrong answer that looks right.

pub mod html;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::model::{Currency, Millis, Model, Record, RecordKind};

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: not a commission record: {error}", path.display())]
    Parse { path: PathBuf, line: u64, error: String },
    #[error("{}:{line}: {what}", path.display())]
    WrongFile { path: PathBuf, line: u64, what: &'static str },
}

/// Money of one creator (or one currency) under one model, in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Sum of commission records.
    pub commission: i64,
    /// Sum of reversal records (zero or negative).
    pub reversed: i64,
    /// Sum of adjustment records (SPEC 8.5).
    pub adjusted: i64,
    /// Sum of lock records: the part of the net that is locked (SPEC 8.2).
    pub locked: i64,
    /// Commission records.
    pub commissions: u64,
    /// Commissions that have a lock record.
    pub locks: u64,
}

impl Amounts {
    /// Commissions plus reversals plus adjustments.
    pub fn net(&self) -> i64 {
        self.commission.saturating_add(self.reversed).saturating_add(self.adjusted)
    }

    /// The net not yet locked.
    pub fn pending(&self) -> i64 {
        self.net().saturating_sub(self.locked)
    }

    fn add(&mut self, r: &Record) {
        match r.kind {
            RecordKind::Commission => {
                self.commission = self.commission.saturating_add(r.commission_minor);
                self.commissions += 1;
            }
            RecordKind::Reversal => self.reversed = self.reversed.saturating_add(r.commission_minor),
            RecordKind::Adjustment => self.adjusted = self.adjusted.saturating_add(r.commission_minor),
            RecordKind::Lock => {
                self.locked = self.locked.saturating_add(r.commission_minor);
                self.locks += 1;
            }
        }
    }
}

/// One creator in one currency: paid, and each shadow model in [`Comparison::models`]
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub currency: Currency,
    pub creator_id: String,
    pub paid: Amounts,
    pub shadow: Vec<Amounts>,
}

/// Paid commissions and reversals of one UTC day (by the purchase's time: a reversal
/// record carries its purchase's time, not its refund's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Day {
    pub commission: i64,
    pub reversed: i64,
}

/// Everything `attrib compare` reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The paid model(s) seen in the paid file (one, unless files were mixed).
    pub paid_models: Vec<Model>,
    /// Shadow models, in order of first appearance.
    pub models: Vec<Model>,
    /// Per currency, then creators by paid net (largest first, then by id).
    pub rows: Vec<Row>,
    /// Per currency: paid and each shadow model.
    pub totals: BTreeMap<Currency, (Amounts, Vec<Amounts>)>,
    /// Per currency and UTC day number (days since 1970-01-01): paid money.
    pub days: BTreeMap<Currency, BTreeMap<i64, Day>>,
    /// Any lock record seen (locks are on).
    pub locks_on: bool,
}

const DAY_MS: Millis = 86_400_000;

/// Calls `f` with every record of a JSONL record file (blank lines skipped).
fn for_each_record(
    path: &Path,
    mut f: impl FnMut(u64, Record) -> Result<(), CompareError>,
) -> Result<(), CompareError> {
    let io = |source| CompareError::Io { path: path.to_owned(), source };
    let reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let n = i as u64 + 1;
        let r: Record = serde_json::from_str(&line).map_err(|e| CompareError::Parse {
            path: path.to_owned(),
            line: n,
            error: e.to_string(),
        })?;
        f(n, r)?;
    }
    Ok(())
}

/// Reads the paid file and the shadow files and sums them up.
pub fn compare_files(paid: &Path, shadows: &[PathBuf]) -> Result<Comparison, CompareError> {
    let mut b = Builder::default();
    for_each_record(paid, |line, r| {
        if r.shadow {
            return Err(CompareError::WrongFile {
                path: paid.to_owned(),
                line,
                what: "a shadow record in the paid file (pass the --shadow-out file after it)",
            });
        }
        b.add(r);
        Ok(())
    })?;
    for path in shadows {
        for_each_record(path, |line, r| {
            if !r.shadow {
                return Err(CompareError::WrongFile {
                    path: path.clone(),
                    line,
                    what: "a paid record in a shadow file (the paid file goes first)",
                });
            }
            b.add(r);
            Ok(())
        })?;
    }
    Ok(b.finish())
}

/// Sums records as they come (paid and shadow mixed, told apart by `shadow`).
#[derive(Default)]
pub struct Builder {
    paid_models: Vec<Model>,
    models: Vec<Model>,
    creators: HashMap<(Currency, String), (Amounts, Vec<Amounts>)>,
    days: BTreeMap<Currency, BTreeMap<i64, Day>>,
    locks_on: bool,
}

impl Builder {
    /// Adds one record.
    pub fn add(&mut self, r: Record) {
        self.locks_on |= r.kind == RecordKind::Lock;
        let slot = if r.shadow {
            Some(self.models.iter().position(|&m| m == r.model).unwrap_or_else(|| {
                self.models.push(r.model);
                self.models.len() - 1
            }))
        } else {
            if !self.paid_models.contains(&r.model) {
                self.paid_models.push(r.model);
            }
            let day = self.days.entry(r.currency).or_default().entry(r.purchase_ts.div_euclid(DAY_MS)).or_default();
            match r.kind {
                RecordKind::Commission => day.commission = day.commission.saturating_add(r.commission_minor),
                RecordKind::Reversal => day.reversed = day.reversed.saturating_add(r.commission_minor),
                RecordKind::Lock | RecordKind::Adjustment => {}
            }
            None
        };
        let entry = self.creators.entry((r.currency, r.creator_id.to_string())).or_default();
        match slot {
            None => entry.0.add(&r),
            Some(i) => {
                if entry.1.len() <= i {
                    entry.1.resize(i + 1, Amounts::default());
                }
                entry.1[i].add(&r);
            }
        }
    }

    /// The comparison of everything added.
    pub fn finish(self) -> Comparison {
        let k = self.models.len();
        let mut totals: BTreeMap<Currency, (Amounts, Vec<Amounts>)> = BTreeMap::new();
        let mut rows: Vec<Row> = self
            .creators
            .into_iter()
            .map(|((currency, creator_id), (paid, mut shadow))| {
                shadow.resize(k, Amounts::default());
                let t = totals.entry(currency).or_insert_with(|| (Amounts::default(), vec![Amounts::default(); k]));
                sum_into(&mut t.0, &paid);
                for (t, s) in t.1.iter_mut().zip(&shadow) {
                    sum_into(t, s);
                }
                Row { currency, creator_id, paid, shadow }
            })
            .collect();
        rows.sort_by(|a, b| {
            (a.currency, std::cmp::Reverse(a.paid.net()), &a.creator_id).cmp(&(
                b.currency,
                std::cmp::Reverse(b.paid.net()),
                &b.creator_id,
            ))
        });
        Comparison {
            paid_models: self.paid_models,
            models: self.models,
            rows,
            totals,
            days: self.days,
            locks_on: self.locks_on,
        }
    }
}

fn sum_into(t: &mut Amounts, a: &Amounts) {
    t.commission = t.commission.saturating_add(a.commission);
    t.reversed = t.reversed.saturating_add(a.reversed);
    t.adjusted = t.adjusted.saturating_add(a.adjusted);
    t.locked = t.locked.saturating_add(a.locked);
    t.commissions += a.commissions;
    t.locks += a.locks;
}

impl Comparison {
    /// The name of the paid column: `paid` and its model.
    pub fn paid_label(&self) -> String {
        let models: Vec<&str> = self.paid_models.iter().map(|m| m.as_str()).collect();
        if models.is_empty() {
            "paid".into()
        } else {
            format!("paid ({})", models.join("+"))
        }
    }

    /// Rows of one currency, largest paid net first.
    pub fn rows_of(&self, currency: Currency) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.currency == currency)
    }

    /// The text table: per currency, the top `top` creators (0: all) by paid net with
    /// what each shadow model would have paid and the difference (shadow − paid), then
    /// the currency's total.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::new();
        let mut header = vec!["creator".to_string(), self.paid_label()];
        for m in &self.models {
            header.push(m.as_str().to_string());
            header.push("diff".into());
        }
        for (currency, (paid, shadow)) in &self.totals {
            let all: Vec<&Row> = self.rows_of(*currency).collect();
            let shown = if top == 0 { all.len() } else { top.min(all.len()) };
            let _ = writeln!(
                out,
                "{currency}: net commission in minor units, top {shown} of {} creators by paid (diff = model - paid)",
                all.len()
            );
            let mut lines: Vec<Vec<String>> = vec![header.clone()];
            let cells = |name: &str, p: &Amounts, s: &[Amounts]| {
                let mut v = vec![name.to_string(), p.net().to_string()];
                for a in s {
                    v.push(a.net().to_string());
                    v.push(signed(a.net().saturating_sub(p.net())));
                }
                v
            };
            for r in &all[..shown] {
                lines.push(cells(&r.creator_id, &r.paid, &r.shadow));
            }
            lines.push(cells("total", paid, shadow));
            let widths: Vec<usize> =
                (0..header.len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
            for (i, l) in lines.iter().enumerate() {
                let mut s = String::from(" ");
                for (c, cell) in l.iter().enumerate() {
                    if c == 0 {
                        let _ = write!(s, " {cell:<w$}", w = widths[c]);
                    } else {
                        let _ = write!(s, "  {cell:>w$}", w = widths[c]);
                    }
                }
                let _ = writeln!(out, "{}", s.trim_end());
                if i == 0 || i + 2 == lines.len() {
                    let _ =
                        writeln!(out, "  {}", "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1) + 1));
                }
            }
            if self.locks_on {
                let _ = writeln!(
                    out,
                    "  paid: commission {} reversed {} net {} locked {} pending {} ({} of {} commissions locked)",
                    paid.commission,
                    paid.reversed,
                    paid.net(),
                    paid.locked,
                    paid.pending(),
                    paid.locks,
                    paid.commissions
                );
            } else {
                let _ = writeln!(
                    out,
                    "  paid: commission {} reversed {} net {}",
                    paid.commission,
                    paid.reversed,
                    paid.net()
                );
            }
            out.push('\n');
        }
        if self.totals.is_empty() {
            out.push_str("no records\n");
        }
        out
    }
}

fn signed(v: i64) -> String {
    if v > 0 {
        format!("+{v}")
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TouchKind;

    fn rec(kind: RecordKind, creator: &str, model: Model, shadow: bool, commission: i64, ts: Millis) -> Record {
        Record {
            commission_id: format!("p:0:{creator}").into(),
            kind,
            order_id: "o".into(),
            purchase_event_id: "p".into(),
            item_index: 0,
            product_id: "x".into(),
            quantity: 1,
            user_id: "u".into(),
            creator_id: creator.into(),
            model,
            weight: 1,
            total_weight: 1,
            touch_event_id: "t".into(),
            touch_type: TouchKind::Click,
            touch_ts: 0,
            touch_count: 1,
            purchase_ts: ts,
            gross_minor: 1000,
            share_minor: commission * 10,
            rate_bps: 1000,
            rule_id: "default".into(),
            commission_minor: commission,
            currency: Currency(*b"EUR"),
            original_commission_id: None,
            refund_event_id: None,
            lock_ts: None,
            revision: None,
            shadow,
        }
    }

    #[test]
    fn nets_reversals_keeps_locks_apart_and_fills_missing_models_with_zero() {
        use RecordKind::*;
        let (lt, ft, lin) = (Model::LastTouch, Model::FirstTouch, Model::Linear);
        let mut b = Builder::default();
        b.add(rec(Commission, "a", lt, false, 100, 0));
        b.add(rec(Reversal, "a", lt, false, -40, 0));
        b.add(rec(Lock, "a", lt, false, 60, 0));
        b.add(rec(Commission, "b", lt, false, 30, DAY_MS + 5));
        b.add(rec(Commission, "b", ft, true, 130, DAY_MS + 5));
        b.add(rec(Commission, "c", lin, true, 7, 0));
        let c = b.finish();
        assert_eq!(c.models, vec![ft, lin]);
        assert!(c.locks_on);
        let names: Vec<&str> = c.rows.iter().map(|r| r.creator_id.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"], "by paid net, largest first");
        let a = &c.rows[0];
        assert_eq!((a.paid.net(), a.paid.locked, a.paid.pending()), (60, 60, 0));
        assert_eq!(a.shadow, vec![Amounts::default(); 2]);
        assert_eq!(c.rows[1].shadow[0].net(), 130);
        assert_eq!(c.rows[2].paid.net(), 0);
        assert_eq!(c.rows[2].shadow[1].net(), 7);
        let (paid, shadow) = &c.totals[&Currency(*b"EUR")];
        assert_eq!((paid.net(), shadow[0].net(), shadow[1].net()), (90, 130, 7));
        let days = &c.days[&Currency(*b"EUR")];
        assert_eq!(days[&0], Day { commission: 100, reversed: -40 });
        assert_eq!(days[&1], Day { commission: 30, reversed: 0 });
        let table = c.table(2);
        assert!(table.contains("top 2 of 3 creators"), "{table}");
        assert!(table.contains("+100"), "b under first_touch pays 100 more: {table}");
        assert!(table.contains("locked 60 pending 30"), "{table}");
    }
}

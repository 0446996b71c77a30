//! Restatement (SPEC 8.5): golden scenarios in `fixtures/restate/`, and the invariant that
//! the baseline's records plus the adjustments equal the new config's records per key.
//!
//! A restate scenario is a folder with `baseline.toml`, `attrib.toml` (the new config),
//! `input.jsonl`, `expected.jsonl` (the adjustment records, in output order) and a
//! `README.md` with the hand calculation; the revision is always `r1`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use attrib::config::Config;
use attrib::model::{Record, RecordKind};
use attrib::replay::{replay_texts, Input};
use attrib::restate::{restate, Restatement};

/// Net (share, commission) per (user, purchase, item, creator) of paid records; locks
/// count nothing, adjustments count their amounts.
pub fn nets(records: &[Record]) -> BTreeMap<(String, String, u32, String), (i64, i64)> {
    let mut m: BTreeMap<_, (i64, i64)> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.shadow && r.kind != RecordKind::Lock) {
        let key = (r.user_id.to_string(), r.purchase_event_id.to_string(), r.item_index, r.creator_id.to_string());
        let e = m.entry(key).or_default();
        e.0 += r.share_minor;
        e.1 += r.commission_minor;
    }
    m.retain(|_, v| *v != (0, 0));
    m
}

/// Restates `text` from `old` to `new` under `revision`.
pub fn restate_text(old: &Config, new: &Config, revision: &str, text: &str) -> Restatement {
    let inputs = vec![Input { name: "input".into(), reader: std::io::Cursor::new(text.as_bytes()) }];
    restate(old, new, revision, inputs).expect("in-memory restate")
}

/// Old records + adjustments == new records, per key; `Err` names the first key that differs.
pub fn check_adds_up(old: &Config, new: &Config, text: &str, r: &Restatement) -> Result<(), String> {
    let (old_out, _) = replay_texts(old, &[text]);
    let (new_out, _) = replay_texts(new, &[text]);
    let mut combined = old_out.records.clone();
    combined.extend(r.adjustments.iter().cloned());
    let (got, want) = (nets(&combined), nets(&new_out.records));
    if got != want {
        let key = got.keys().chain(want.keys()).find(|k| got.get(*k) != want.get(*k)).unwrap();
        return Err(format!("key {key:?}: old + adjustments {:?}, new {:?}", got.get(key), want.get(key)));
    }
    Ok(())
}

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/restate");
    let mut dirs: Vec<PathBuf> =
        fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

fn config(path: &Path) -> Config {
    Config::from_toml(&fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn money_restate_golden_scenarios() {
    let dirs = scenarios();
    assert!(dirs.len() >= 2, "rate_change and model_change at least");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (old, new) = (config(&dir.join("baseline.toml")), config(&dir.join("attrib.toml")));
        let text = fs::read_to_string(dir.join("input.jsonl")).unwrap();
        let r = restate_text(&old, &new, "r1", &text);
        let expected: Vec<Record> = fs::read_to_string(dir.join("expected.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect();
        assert_eq!(r.adjustments, expected, "{name}: adjustments in output order");
        check_adds_up(&old, &new, &text, &r).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Summary per creator and currency = the adjustments summed.
        for ((creator, currency), t) in &r.by_creator {
            let mine: Vec<&Record> =
                expected.iter().filter(|a| a.creator_id == *creator && a.currency == *currency).collect();
            assert_eq!(t.adjustments as usize, mine.len(), "{name}");
            assert_eq!(t.commission_minor, mine.iter().map(|a| a.commission_minor).sum::<i64>(), "{name}");
            assert_eq!(t.share_minor, mine.iter().map(|a| a.share_minor).sum::<i64>(), "{name}");
        }
    }
}

#[test]
fn money_restate_twice_writes_the_same_and_to_itself_writes_nothing() {
    for dir in scenarios() {
        let (old, new) = (config(&dir.join("baseline.toml")), config(&dir.join("attrib.toml")));
        let text = fs::read_to_string(dir.join("input.jsonl")).unwrap();
        let a = restate_text(&old, &new, "again", &text);
        let b = restate_text(&old, &new, "again", &text);
        assert_eq!(a.adjustments, b.adjustments, "{}", dir.display());
        assert!(a.adjustments.iter().all(|r| r.commission_id.ends_with(":adj:again")));
        assert!(restate_text(&new, &new, "same", &text).adjustments.is_empty(), "{}", dir.display());
        assert!(restate_text(&old, &old, "same", &text).adjustments.is_empty(), "{}", dir.display());
    }
}

#[test]
fn money_restate_refuses_a_bad_revision() {
    let c = Config::default();
    for bad in ["", "a:b", "with space", &"x".repeat(65)] {
        let inputs = vec![Input { name: "input".into(), reader: std::io::Cursor::new(&b""[..]) }];
        let err = restate(&c, &c, bad, inputs).unwrap_err();
        assert!(err.to_string().contains("revision"), "{bad:?}: {err}");
    }
}

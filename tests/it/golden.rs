//! Golden scenarios: every folder under `fixtures/scenarios/` is replayed and compared
//! with its hand-computed expectations (see `docs/golden-format.md`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use attrib::config::Config;
use attrib::model::{Record, SourcePos};
use attrib::replay::{open_files, replay, MemorySink};

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/scenarios");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .expect("fixtures/scenarios exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.join("input.jsonl").exists())
        .collect();
    dirs.sort();
    dirs
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    let Ok(text) = fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

#[derive(serde::Deserialize, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ExpectedDeadLetter {
    line: u64,
    reason: String,
}

/// Compares one scenario; returns the differences found.
fn check(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut problems = Vec::new();
    let toml = fs::read_to_string(dir.join("attrib.toml")).unwrap_or_default();
    let config = match Config::from_toml(&toml) {
        Ok(c) => c,
        Err(e) => return vec![format!("{name}: config: {e}")],
    };
    let inputs = open_files(&[dir.join("input.jsonl")]).expect("input readable");
    let mut sink = MemorySink::default();
    let summary = replay(&config, inputs, &mut sink).expect("replay");

    let expected: Vec<Record> = read_jsonl(&dir.join("expected.jsonl"));
    let by_id = |records: &[Record]| -> BTreeMap<String, Record> {
        records.iter().map(|r| (r.commission_id.to_string(), r.clone())).collect()
    };
    let (want, got) = (by_id(&expected), by_id(&sink.records));
    if want.len() != expected.len() || got.len() != sink.records.len() {
        problems.push(format!(
            "{name}: duplicate commission_id (expected {}, got {})",
            expected.len(),
            sink.records.len()
        ));
    }
    for (id, w) in &want {
        match got.get(id) {
            None => problems.push(format!("{name}: missing record {id}")),
            Some(g) if g != w => {
                let (gv, wv) = (serde_json::to_value(g).unwrap(), serde_json::to_value(w).unwrap());
                for (field, wf) in wv.as_object().unwrap() {
                    let gf = &gv[field];
                    if gf != wf {
                        problems.push(format!("{name}: record {id} field {field}: expected {wf}, got {gf}"));
                    }
                }
                for field in gv.as_object().unwrap().keys().filter(|k| wv.get(k.as_str()).is_none()) {
                    problems.push(format!("{name}: record {id} has unexpected field {field}"));
                }
            }
            Some(_) => {}
        }
    }
    for id in got.keys().filter(|id| !want.contains_key(*id)) {
        problems.push(format!("{name}: unexpected record {id}"));
    }

    let mut want_dl: Vec<ExpectedDeadLetter> = read_jsonl(&dir.join("expected_dlq.jsonl"));
    let mut got_dl: Vec<ExpectedDeadLetter> = sink
        .dead_letters
        .iter()
        .map(|d| match &d.source {
            SourcePos::File { line, .. } => ExpectedDeadLetter { line: *line, reason: d.reason.as_str().to_string() },
            SourcePos::Kafka { .. } => unreachable!("replay reads files"),
        })
        .collect();
    want_dl.sort();
    got_dl.sort();
    if want_dl != got_dl {
        problems.push(format!("{name}: dead letters: expected {want_dl:?}, got {got_dl:?}"));
    }

    let counts_path = dir.join("expected_counts.json");
    if counts_path.exists() {
        let want: BTreeMap<String, u64> = serde_json::from_str(&fs::read_to_string(&counts_path).unwrap()).unwrap();
        let got = summary.stats.counters();
        for (k, v) in want {
            match got.get(&k) {
                None => problems.push(format!("{name}: unknown counter {k}")),
                Some(g) if *g != v => problems.push(format!("{name}: counter {k}: expected {v}, got {g}")),
                Some(_) => {}
            }
        }
    }
    if summary.stats.accounted() != summary.stats.events_in {
        problems.push(format!(
            "{name}: {} inputs but {} accounted for",
            summary.stats.events_in,
            summary.stats.accounted()
        ));
    }
    problems
}

#[test]
fn every_golden_scenario_matches() {
    let dirs = scenarios();
    assert!(dirs.len() >= 30, "expected the full scenario set, found {}", dirs.len());
    let problems: Vec<String> = dirs.iter().flat_map(|d| check(d)).collect();
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

//! Parallel replay (SPEC 8.7): `--jobs N` writes the same records, shadow records and
//! dead letters, byte for byte and in the same order, and the same counters, as one
//! engine, whatever N and however the input is split over files.

use attrib::config::Config;
use attrib::gen::{generate, GenOptions};
use attrib::parallel::{replay_texts, replay_texts_one};
use proptest::prelude::*;

const MODELS: [&str; 5] = ["last_touch", "first_touch", "linear", "position_based", "time_decay"];

/// A model with locks, refunds, a rate rule and tight lateness, so that late and
/// too-late events, locks and reversals all happen.
fn config(model: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        r#"
[attribution]
model = "{model}"
click_window = "2h"
view_window = "30m"
{extra}
[time]
max_out_of_orderness = "1s"
allowed_lateness = "20s"
refund_window = "1d"
[commission]
default_rate_bps = 777
lock_period = "6h"
[[commission.rules]]
id = "r1"
category = "beauty"
rate_bps = 1234
"#
    ))
    .expect("valid config")
}

/// A `gen` workload: small shopper and creator sets so that they collide, duplicates,
/// invalid lines, refunds, and disorder beyond `max_out_of_orderness`.
fn workload(seed: u64, events: u64, users: u32, disorder_ms: u64) -> Vec<u8> {
    let opts = GenOptions {
        events,
        seed,
        disorder_ms,
        duplicates: 0.03,
        invalid: 0.01,
        refunds: 0.3,
        users,
        creators: 50,
        products: 40,
        events_per_sec: 0.1,
        ..GenOptions::default()
    };
    let mut text = Vec::new();
    generate(&opts, |_, line| {
        text.extend_from_slice(line);
        if !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        Ok(())
    })
    .expect("valid gen options");
    text
}

/// Splits lines round-robin over `n` inputs (each keeps its own order).
fn split(text: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut parts = vec![Vec::new(); n];
    for (i, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        parts[i % n].extend_from_slice(line);
    }
    parts
}

/// Asserts every job count gives the one-engine output; returns the one-engine stats.
fn same_as_one_engine(config: &Config, texts: &[&[u8]], jobs: &[usize]) -> attrib::engine::Stats {
    let (records, shadow, dead, summary) = replay_texts_one(config, texts);
    for &n in jobs {
        let (r, s, d, sum) = replay_texts(config, texts, n);
        assert!(r == records, "records differ with --jobs {n} ({} vs {} bytes)", r.len(), records.len());
        assert!(s == shadow, "shadow records differ with --jobs {n}");
        assert!(d == dead, "dead letters differ with --jobs {n}");
        assert_eq!(sum.stats, summary.stats, "counters differ with --jobs {n}");
        assert_eq!(sum.jobs, n);
        assert_eq!(sum.bytes_read, summary.bytes_read);
    }
    summary.stats
}

#[test]
fn every_model_with_locks_refunds_late_and_bad_lines() {
    let text = workload(7, 6_000, 300, 30_000);
    for model in MODELS {
        let stats = same_as_one_engine(&config(model, ""), &[text.as_slice()], &[2, 3, 4]);
        // The workload reaches every path the merge has to order.
        let c = stats.counters();
        for key in ["records.commission", "records.reversal", "records.lock", "late", "dead_letter.too_late"] {
            assert!(c[key] > 0, "{model}: no {key} in the workload: {c:?}");
        }
        assert!(c["duplicate_event"] > 0 && c["dead_letter.invalid_json"] + c["dead_letter.invalid_event"] > 0);
    }
}

#[test]
fn shadow_models_and_surfaces() {
    let extra = r#"allow_self_attribution = true
shadow_models = ["last_touch", "linear", "first_touch", "time_decay"]
[attribution.surface.live]
click_window = "1h""#;
    let cfg = config("position_based", extra);
    let text = workload(11, 5_000, 200, 3_000);
    let stats = same_as_one_engine(&cfg, &[text.as_slice()], &[2, 4]);
    assert!(stats.records_shadow > 0);
}

#[test]
fn several_inputs_read_side_by_side() {
    let text = workload(3, 6_000, 250, 10_000);
    for n in [2, 3] {
        let parts = split(&text, n);
        let texts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        same_as_one_engine(&config("linear", ""), &texts, &[2, 3]);
    }
}

#[test]
fn locks_at_the_purchase_time_and_at_the_end_of_input() {
    // lock_period 0: a lock is due as soon as its commission is written. The workload
    // ends well before most 6h locks are due, so the final drain decides them, by the
    // largest event time of the whole input, not of one shard.
    let zero = Config::from_toml(
        "[commission]\nlock_period = \"0s\"\n[time]\nmax_out_of_orderness = \"1s\"\nallowed_lateness = \"20s\"",
    )
    .expect("valid config");
    let text = workload(5, 4_000, 100, 5_000);
    let stats = same_as_one_engine(&zero, &[text.as_slice()], &[2, 3]);
    assert!(stats.records_lock > 0);
    let stats = same_as_one_engine(&config("last_touch", ""), &[text.as_slice()], &[2, 4]);
    assert!(stats.records_lock > 0);
}

#[test]
fn blank_lines_hostile_lines_and_empty_inputs() {
    let text = workload(9, 2_000, 80, 2_000);
    let mut messy = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        messy.extend_from_slice(line);
        messy.extend_from_slice(if i % 97 == 0 { b"\r\n\n   \n" } else { b"\n" });
        if i % 301 == 0 {
            messy.extend_from_slice(b"{\"type\":\"click\"\n[1,2\n\x00\x01\xff\n");
        }
    }
    messy.extend_from_slice(b"{\"type\":\"click\"}"); // last line without a line break
    same_as_one_engine(&config("first_touch", ""), &[messy.as_slice()], &[2, 3]);
    same_as_one_engine(&config("first_touch", ""), &[messy.as_slice(), b"", b"\n\n"], &[2, 3]);
    same_as_one_engine(&Config::default(), &[b""], &[2]);
}

#[test]
fn more_lines_than_one_batch() {
    // Several batches and chunks, so groups of one unit never straddle a batch.
    let text = workload(13, 30_000, 2_000, 4_000);
    same_as_one_engine(&config("time_decay", ""), &[text.as_slice()], &[2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random small workloads, configs, file splits and job counts.
    #[test]
    fn any_workload_any_jobs(
        seed in 0u64..1_000_000,
        events in 1u64..1_500,
        users in 1u32..60,
        disorder in prop::sample::select(vec![0u64, 500, 5_000, 40_000]),
        model in prop::sample::select(MODELS.to_vec()),
        files in 1usize..4,
        jobs in 1usize..5,
    ) {
        let text = workload(seed, events, users, disorder);
        let parts = split(&text, files);
        let texts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let shadow = if model == "linear" { "first_touch" } else { "linear" };
        same_as_one_engine(&config(model, &format!("shadow_models = [{shadow:?}]")), &texts, &[jobs]);
    }
}

fn cli_replay(jobs: &str, out: &str, input: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(["replay", "--quiet", "--jobs", jobs, "--out", out])
        .arg(input)
        .output()
        .expect("attrib runs")
}

#[test]
fn cli_jobs_writes_the_same_file_and_reports_write_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, workload(21, 3_000, 150, 3_000)).expect("write input");
    let mut outputs = Vec::new();
    for jobs in ["1", "2", "0"] {
        let out = dir.path().join(format!("out-{jobs}.jsonl"));
        let run = cli_replay(jobs, out.to_str().expect("UTF-8 path"), &input);
        assert!(run.status.success(), "--jobs {jobs}: {}", String::from_utf8_lossy(&run.stderr));
        outputs.push(std::fs::read(&out).expect("output written"));
    }
    assert!(!outputs[0].is_empty());
    assert!(outputs.iter().all(|o| *o == outputs[0]), "--jobs 2 and 0 write what --jobs 1 writes");
    // A failing writer stops every stage and fails the command (no hang, no panic).
    if std::path::Path::new("/dev/full").exists() {
        let run = cli_replay("2", "/dev/full", &input);
        assert!(!run.status.success());
        assert!(!String::from_utf8_lossy(&run.stderr).contains("panicked"));
    }
}

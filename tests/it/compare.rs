//! Shadow models (SPEC 8.3), `attrib compare` and its HTML page.
//!
//! The browser test needs Debian's `chromium` and is `#[ignore]`d; `.ci/run` installs
//! chromium and runs it: `cargo test --test it compare -- --ignored`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use attrib::compare::{compare_files, html, Builder};
use attrib::config::Config;
use attrib::gen::{generate, GenOptions};
use attrib::model::{Model, Record};
use attrib::replay::{replay, replay_texts, Input, JsonLinesSink};

const MODELS: [&str; 5] = ["last_touch", "first_touch", "linear", "position_based", "time_decay"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/compare").join(name)
}

/// A gen workload with refunds, disorder and duplicates.
fn workload(seed: u64) -> String {
    let opts = GenOptions {
        events: 12_000,
        seed,
        duplicates: 0.02,
        refunds: 0.2,
        users: 400,
        creators: 50,
        products: 200,
        events_per_sec: 0.3, // about 11 hours: locks fire, refunds expire
        ..GenOptions::default()
    };
    let mut text = String::new();
    generate(&opts, |_, line| {
        text.push_str(std::str::from_utf8(line).expect("gen writes UTF-8"));
        text.push('\n');
        Ok(())
    })
    .expect("valid gen options");
    text
}

fn config(model: &str, shadows: &[&str]) -> Config {
    let shadows: Vec<String> = shadows.iter().map(|s| format!("{s:?}")).collect();
    Config::from_toml(&format!(
        r#"
        [attribution]
        model = "{model}"
        click_window = "3h"
        view_window = "1h"
        half_life = "30m"
        shadow_models = [{}]
        [attribution.surface.live]
        click_window = "20m"
        [time]
        refund_window = "6h"
        [commission]
        default_rate_bps = 777
        lock_period = "4h"
        "#,
        shadows.join(",")
    ))
    .expect("valid config")
}

/// Paid bytes, shadow bytes and counts of a replay through the JSON-lines sink.
fn replay_bytes(config: &Config, text: &str) -> (Vec<u8>, Vec<u8>, attrib::engine::Stats) {
    let mut paid = Vec::new();
    let shadow = SharedVec::default();
    let stats = {
        let mut sink = JsonLinesSink::new(&mut paid, None::<Vec<u8>>).with_shadow(Box::new(shadow.clone()));
        let inputs = vec![Input { name: "gen".into(), reader: std::io::Cursor::new(text.as_bytes()) }];
        let summary = replay(config, inputs, &mut sink).expect("in-memory replay");
        sink.flush().expect("in-memory flush");
        summary.stats
    };
    let shadow = shadow.0.borrow().clone();
    (paid, shadow, stats)
}

/// A writer the test keeps a handle to (the sink's shadow writer is `'static`).
#[derive(Clone, Default)]
struct SharedVec(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for SharedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parse(bytes: &[u8]) -> Vec<Record> {
    std::str::from_utf8(bytes)
        .expect("records are UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a record"))
        .collect()
}

#[test]
fn shadow_models_never_change_the_paid_output_and_write_what_each_model_alone_writes() {
    let text = workload(1);
    // Every model alone, and its records as a shadow would carry them.
    let alone: BTreeMap<&str, (Vec<u8>, Vec<Record>)> = MODELS
        .iter()
        .map(|&m| {
            let (bytes, shadow, stats) = replay_bytes(&config(m, &[]), &text);
            assert!(shadow.is_empty());
            assert_eq!(stats.records_shadow, 0);
            assert!(stats.records_reversal > 0 && stats.records_lock > 0, "the workload exercises refunds and locks");
            let as_shadow = parse(&bytes).into_iter().map(|r| Record { shadow: true, ..r }).collect();
            (m, (bytes, as_shadow))
        })
        .collect();
    for &paid in &MODELS {
        let shadows: Vec<&str> = MODELS.iter().copied().filter(|&m| m != paid).collect();
        let (bytes, shadow_bytes, stats) = replay_bytes(&config(paid, &shadows), &text);
        assert!(bytes == alone[paid].0, "paid output of {paid} changed by shadow models");
        let written = parse(&shadow_bytes);
        assert_eq!(written.len() as u64, stats.records_shadow, "every shadow record counted is written");
        assert!(written.iter().all(|r| r.shadow));
        for s in &shadows {
            let model = Model::parse(s).unwrap();
            let got: Vec<&Record> = written.iter().filter(|r| r.model == model).collect();
            let want: Vec<&Record> = alone[s].1.iter().collect();
            assert!(!want.is_empty());
            assert!(got == want, "shadow {s} beside {paid} differs from {s} alone");
        }
    }
}

/// The worked example of the README: the fixture replays to the committed outputs.
#[test]
fn the_compare_fixture_replays_to_its_committed_outputs() {
    let config = Config::load(Some(&fixture("attrib.toml"))).expect("fixture config");
    let text = std::fs::read_to_string(fixture("events.jsonl")).unwrap();
    let (paid, shadow, _) = replay_bytes(&config, &text);
    assert!(paid == std::fs::read(fixture("paid.jsonl")).unwrap(), "fixtures/compare/paid.jsonl is stale");
    assert!(shadow == std::fs::read(fixture("shadow.jsonl")).unwrap(), "fixtures/compare/shadow.jsonl is stale");
}

#[test]
fn compare_totals_equal_what_each_model_pays_alone() {
    let config = Config::load(Some(&fixture("attrib.toml"))).expect("fixture config");
    let text = std::fs::read_to_string(fixture("events.jsonl")).unwrap();
    let c = compare_files(&fixture("paid.jsonl"), &[fixture("shadow.jsonl")]).expect("fixture compares");
    assert_eq!(c.paid_models, vec![config.engine.model]);
    assert_eq!(c.models, config.engine.shadow_models);
    assert!(c.locks_on);
    assert_eq!(c.totals.len(), 2, "USD and EUR");
    let engine = |model: Model| {
        let mut cfg = config.clone();
        cfg.engine.model = model;
        cfg.engine.shadow_models.clear();
        let (_, summary) = replay_texts(&cfg, &[&text]);
        summary.stats
    };
    let paid = engine(config.engine.model);
    for (currency, (p, shadows)) in &c.totals {
        let (commission, reversed) = paid.money[currency];
        assert_eq!((p.commission, p.reversed), (commission, reversed), "{currency} paid");
        assert_eq!(p.locked, paid.locked[currency], "{currency} locked");
        for (model, s) in c.models.iter().zip(shadows) {
            let alone = engine(*model);
            let (commission, reversed) = alone.money.get(currency).copied().unwrap_or_default();
            assert_eq!((s.commission, s.reversed), (commission, reversed), "{currency} {}", model.as_str());
            assert_eq!(s.locked, alone.locked.get(currency).copied().unwrap_or_default());
        }
        let rows_net: i64 = c.rows_of(*currency).map(|r| r.paid.net()).sum();
        assert_eq!(rows_net, p.net(), "creator rows add up to the total");
    }
}

#[test]
fn compare_refuses_swapped_files_naming_the_line() {
    let err = compare_files(&fixture("shadow.jsonl"), &[fixture("paid.jsonl")]).unwrap_err().to_string();
    assert!(err.contains("shadow.jsonl:1:") && err.contains("shadow record in the paid file"), "{err}");
    let err = compare_files(&fixture("paid.jsonl"), &[fixture("paid.jsonl")]).unwrap_err().to_string();
    assert!(err.contains("paid.jsonl:1:") && err.contains("paid record in a shadow file"), "{err}");
    let err = compare_files(&fixture("paid.jsonl"), &[fixture("events.jsonl")]).unwrap_err().to_string();
    assert!(err.contains("events.jsonl:1: not a commission record"), "{err}");
}

#[test]
fn the_compare_command_prints_the_table_and_writes_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(["compare", "--top", "3", "--html"])
        .arg(&page)
        .arg(fixture("paid.jsonl"))
        .arg(fixture("shadow.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    for want in
        ["EUR: net commission", "USD: net commission", "paid (last_touch)", "first_touch", "time_decay", "locked"]
    {
        assert!(table.contains(want), "{want:?} missing from\n{table}");
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(html.matches("<svg").count(), 2 * 4, "four charts per currency");
}

/// Runs headless chromium on `page`; returns (DOM, console lines, PNG path).
fn chromium(page: &Path, dir: &Path) -> (String, Vec<String>, PathBuf) {
    let png = dir.join("page.png");
    let url = format!("file://{}", page.display());
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,4000",
    ];
    let run = |extra: &[String]| {
        let out = Command::new("chromium")
            .args(base)
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs (apt-get install chromium)");
        assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = run(&["--dump-dom".into()]);
    let shot = run(&[format!("--screenshot={}", png.display())]);
    // Console messages and CSP refusals are logged as `...:CONSOLE(n)] "..."`.
    let console = [&dom.stderr, &shot.stderr]
        .iter()
        .flat_map(|e| String::from_utf8_lossy(e).lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.contains("CONSOLE") || l.contains("Refused to"))
        .collect();
    (String::from_utf8(dom.stdout).unwrap(), console, png)
}

/// Pixels of the PNG: (all, not white, of the first bar colour).
fn pixels(png: &Path) -> (usize, usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let bytes = &buf[..info.buffer_size()];
    let px = bytes.chunks(channels).map(|p| (p[0], p[1], p[2]));
    let (mut all, mut ink, mut bar) = (0, 0, 0);
    use plotters::style::{Color, Palette, Palette99};
    let first = Palette99::pick(0).to_rgba();
    for (r, g, b) in px {
        all += 1;
        ink += usize::from((r, g, b) != (255, 255, 255));
        bar += usize::from((r, g, b) == (first.0, first.1, first.2));
    }
    (all, ink, bar)
}

#[test]
#[ignore = "needs chromium: .ci/run installs it"]
fn the_html_report_renders_in_a_browser_with_charts_and_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = compare_files(&fixture("paid.jsonl"), &[fixture("shadow.jsonl")]).unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html::render(&c, 10).unwrap()).unwrap();
    let (dom, console, png) = chromium(&page, dir.path());
    assert!(console.is_empty(), "the page logged: {console:#?}");
    for class in ["totals", "creators", "days", "locks"] {
        assert_eq!(dom.matches(&format!("class=\"chart {class}\"><svg")).count(), 2, "{class} chart per currency");
    }
    assert!(dom.matches("<rect").count() > 50, "bars are drawn");
    let (all, ink, bar) = pixels(&png);
    assert!(ink * 20 > all, "the screenshot is not blank: {ink} of {all} pixels");
    assert!(bar > 500, "the first series' bars are visible: {bar} pixels");

    // The check sees errors: a page that tries to load and run something is caught.
    let bad = dir.path().join("bad.html");
    let mut text = html::render(&c, 10).unwrap();
    text = text
        .replace("</body>", "<script>console.error('boom')</script><img src=\"https://example.invalid/x.png\"></body>");
    std::fs::write(&bad, text).unwrap();
    let (_, console, _) = chromium(&bad, dir.path());
    assert!(!console.is_empty(), "blocked script and image are logged");
}

#[test]
fn an_empty_comparison_still_renders() {
    let page = html::render(&Builder::default().finish(), 10).unwrap();
    assert!(page.contains("No records."));
}

//! The Grafana dashboard against a real Prometheus (Debian's `prometheus`, which
//! `.ci/run` installs): a worker with exactly-once runs while `attrib produce` feeds it
//! at a steady pace, a Prometheus of our own scrapes it every second under the job name
//! of `deploy/prometheus/prometheus.yml`, and every query of every panel (and the
//! template variable's) must evaluate through the HTTP API without error and return
//! data. This is the proof that the dashboard works; names alone prove little (a rate
//! window shorter than two scrapes, a label the series lack or a filter that matches
//! nothing all pass a name check and show an empty panel).
//!
//! `cargo test --release --test broker prometheus -- --ignored`; the `prometheus`
//! binary comes from `PATH`, or from `ATTRIB_TEST_PROMETHEUS`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{free_port, http_get, stop, workload, Env};

/// Prometheus' scrape interval here, seconds (the compose setup uses 5 s).
const SCRAPE_SECS: u64 = 1;

/// What Grafana substitutes for `$__interval`: the dashboard's 30 minutes over about
/// 900 points, floored at the data source's minimum interval (the scrape interval).
const INTERVAL_SECS: u64 = 2;

/// Grafana's `$__rate_interval`: max($__interval + scrape interval, 4 × scrape interval).
const RATE_INTERVAL_SECS: u64 =
    if INTERVAL_SECS + SCRAPE_SECS > 4 * SCRAPE_SECS { INTERVAL_SECS + SCRAPE_SECS } else { 4 * SCRAPE_SECS };

/// A child process killed (and reaped) when the test ends, a failed assertion included.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One query the dashboard runs: where it comes from and its PromQL as stored.
struct Query {
    title: String,
    expr: String,
}

/// Every panel target's `expr`, rows' nested panels included.
fn panel_queries(panels: &[Value], out: &mut Vec<Query>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Query { title: title.to_owned(), expr: expr.to_owned() });
            }
        }
        // Rows carry their panels inside when collapsed.
        panel_queries(panel["panels"].as_array().map_or(&[], |v| v.as_slice()), out);
    }
}

/// `label_values(metric, label)` of a query variable: (metric selector, label).
fn label_values(query: &str) -> Option<(&str, &str)> {
    let args = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (metric, label) = args.rsplit_once(',')?;
    Some((metric.trim(), label.trim()))
}

/// A value as Grafana writes it into a `=~` matcher of a multi-value variable: regex
/// metacharacters escaped, the backslash doubled for the PromQL string literal.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// The expression Grafana sends with `$instance` set to `instance` (already a regex).
fn interpolate(expr: &str, instance: &str) -> String {
    // Longest names first: `$__rate_interval` before `$__interval`.
    expr.replace("$__rate_interval", &format!("{RATE_INTERVAL_SECS}s"))
        .replace("$__interval", &format!("{INTERVAL_SECS}s"))
        .replace("$instance", instance)
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Prometheus' HTTP API on one port.
struct Api {
    port: u16,
}

impl Api {
    /// `GET path` decoded as JSON; `Err` with what went wrong (no answer, not JSON).
    fn get(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.port, path).ok_or_else(|| "no answer".to_owned())?;
        serde_json::from_str(&body).map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))
    }

    /// An instant query at `time` (Unix seconds): the result vector, or the error
    /// Prometheus gave.
    fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>, String> {
        let v = self.get(&format!("/api/v1/query?query={}&time={time:.3}", url_encode(expr)))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// The sample values of a query result (`value: [time, "1.5"]`).
fn values(result: &[Value]) -> Vec<f64> {
    result.iter().filter_map(|s| s["value"][1].as_str()?.parse().ok()).collect()
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn prometheus_binary() -> String {
    std::env::var("ATTRIB_TEST_PROMETHEUS").unwrap_or_else(|_| "prometheus".into())
}

/// Starts Prometheus on a free port, scraping `target` every [`SCRAPE_SECS`] as job
/// `attrib`, storing into `dir`.
fn start_prometheus(dir: &Path, target: &str) -> (KillOnDrop, Api) {
    let config = dir.join("prometheus.yml");
    // The job name is the compose setup's (deploy/prometheus/prometheus.yml): the
    // dashboard's queries filter on job="attrib".
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {SCRAPE_SECS}s\n  evaluation_interval: {SCRAPE_SECS}s\n\
             scrape_configs:\n  - job_name: attrib\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.out")).unwrap();
    let child = Command::new(prometheus_binary())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {}: {e} (apt-get install prometheus, or set ATTRIB_TEST_PROMETHEUS)", prometheus_binary())
        });
    (KillOnDrop(child), Api { port })
}

/// The last lines of Prometheus' log, for failure messages.
fn prometheus_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("prometheus.out")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- prometheus (last lines)\n{}\n", lines[lines.len().saturating_sub(20)..].join("\n"))
}

#[test]
#[ignore = "needs a Kafka broker and prometheus: cargo test --release --test broker prometheus -- --ignored"]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/attrib.json"))
            .unwrap(),
    )
    .expect("dashboard JSON");
    let mut queries = Vec::new();
    panel_queries(dashboard["panels"].as_array().expect("panels"), &mut queries);
    assert!(queries.len() >= 10, "only {} panel queries", queries.len());

    // Dead letters (invalid lines), refunds and a lock period of 6 h of event time: the
    // refunds of the first hours reverse commissions, later ones come after the lock,
    // and locks start after 43,000 events (2 events per second of event time). Every
    // series a panel shows gets written. 200,000 events at 3,000/s keep the worker busy
    // for about a minute.
    let opts = attrib::gen::GenOptions { events: 200_000, invalid: 0.01, ..workload(707) };
    let env = Env::new("prom", opts);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let worker = env.start_worker_with(
        "w1",
        &[("ATTRIB__METRICS__LISTEN", &listen), ("ATTRIB__COMMISSION__LOCK_PERIOD", "6h")],
        &[],
    );
    let _producer = KillOnDrop(
        env.attrib("producer")
            .args(["produce", "--rate", "3000"])
            .arg(&env.workload)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom_dir = env.dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let (_prometheus, api) = start_prometheus(&prom_dir, &listen);
    let failed = |what: String| -> String { format!("{what}\n{}{}", prometheus_log(&prom_dir), env.logs_tail()) };

    // The target is up and has been scraped a few times, so rate windows hold samples.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = api.query(r#"min_over_time(up{job="attrib"}[10s])"#, now_secs()).unwrap_or_default();
        let scrapes = api.query(r#"count_over_time(up{job="attrib"}[1m])"#, now_secs()).unwrap_or_default();
        if values(&up) == [1.0] && values(&scrapes).first().is_some_and(|&n| n >= 5.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", failed(format!("target never up for 5 scrapes: up {up:?}")));
        std::thread::sleep(Duration::from_millis(250));
    }

    // The template variable, as Grafana asks for it: the one worker, by instance.
    let mut instances = Vec::new();
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["query"]["query"].as_str().or_else(|| var["query"].as_str()).unwrap_or_default();
        let (metric, label) = label_values(query)
            .unwrap_or_else(|| panic!("variable ${name}: only label_values(metric, label) is checked here: {query}"));
        let v = api.get(&format!("/api/v1/label/{label}/values?match[]={}", url_encode(metric))).unwrap();
        assert_eq!(v["status"], "success", "variable ${name}: {query}: {v}");
        let got: Vec<String> =
            v["data"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect();
        assert!(!got.is_empty(), "{}", failed(format!("variable ${name}: {query} has no values")));
        if name == "instance" {
            assert_eq!(got, std::slice::from_ref(&listen), "variable $instance: the scraped worker");
            instances = got;
        }
    }
    assert_eq!(instances.len(), 1, "the dashboard has an $instance variable");
    // The dashboard's default (All: its allValue) and the one worker picked.
    let all = dashboard["templating"]["list"][0]["allValue"].as_str().unwrap_or(".*").to_owned();
    let choices = [("All", all), ("the worker", regex_escape(&instances[0]))];

    // Every query at one instant while events flow: the whole dashboard shows data at
    // once. A series that appeared less than two scrapes ago has no rate yet, so a pass
    // with gaps is repeated at a later instant until the deadline; an error is final.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut passes = 0;
    loop {
        passes += 1;
        let time = now_secs();
        let mut missing = Vec::new();
        for (choice, instance) in &choices {
            for q in &queries {
                let expr = interpolate(&q.expr, instance);
                let result = api
                    .query(&expr, time)
                    .unwrap_or_else(|e| panic!("{}", failed(format!("panel {:?}: {expr}: {e}", q.title))));
                let values = values(&result);
                // histogram_quantile gives NaN when nothing was observed in the window:
                // Grafana draws nothing, so a NaN is no data.
                let data = values.iter().any(|v| !v.is_nan());
                // Throughput must move while events flow.
                let moving = !q.expr.contains("rate(attrib_events_read_total") || values.iter().any(|&v| v > 0.0);
                if !data || !moving {
                    missing.push(format!("panel {:?} ($instance = {choice}): {expr} -> {result:?}", q.title));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            failed(format!("{} queries without data after {passes} passes:\n{}", missing.len(), missing.join("\n")))
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "{} dashboard queries x {} variable choices returned data (pass {passes}; scrape {SCRAPE_SECS}s, \
         $__rate_interval {RATE_INTERVAL_SECS}s)",
        queries.len(),
        choices.len()
    );
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
}

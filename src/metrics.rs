//! Prometheus metrics, health and readiness over HTTP.
//!
//! [`Metrics`] holds a private [`Registry`]; drivers feed it per batch (engine
//! counters as deltas of [`Stats`], state sizes as gauges), never per event, and
//! [`serve`] exposes it with the probes on a small blocking HTTP server
//! (`tiny_http`, one thread). Every name starts with `attrib_` (plus the standard
//! `process_*` family on Linux); labels are low-cardinality by construction: event
//! type, outcome, reason, kind, currency, topic, partition. Never a shopper,
//! creator, product or order id. `docs/metrics.md` lists every series.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::engine::{Stats, TypeStats};
use crate::model::{DeadLetterReason, EventType};

/// Event-to-record latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Kafka transaction commit buckets, seconds: 1 ms to 60 s (a commit waits for the
/// broker to write markers on every partition touched).
const TRANSACTION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Reads one monotonic counter out of [`TypeStats`].
type TypeReader = fn(&TypeStats) -> u64;

/// Reads one monotonic engine counter out of [`Stats`].
type Reader = Box<dyn Fn(&Stats) -> u64 + Send + Sync>;

/// The mutually exclusive fates of a valid event in the engine (`outcome` label).
/// `late` is not among them: a late event is also processed, so it has its own counter
/// and `sum by (type) (attrib_events_total)` never counts an event twice.
const OUTCOMES: [(&str, TypeReader); 4] = [
    ("processed", |t| t.processed),
    ("duplicate", |t| t.duplicate_event),
    ("duplicate_order", |t| t.duplicate_order),
    ("too_late", |t| t.too_late),
];

/// Reasons for back-pressure known in advance (series exist at 0 from the start).
const BACKPRESSURE_REASONS: [&str; 2] = ["live_touches", "pending_purchases"];

/// Kinds of rebalance events known in advance.
const REBALANCE_KINDS: [&str; 2] = ["assign", "revoke"];

/// Every metric attrib exports, registered in one private registry.
pub struct Metrics {
    registry: Registry,
    /// Engine counters resolved to their label values once, with how to read each.
    engine_counters: Vec<(IntCounter, Reader)>,
    commission_minor: IntCounterVec,
    live_touches: IntGaugeVec,
    shoppers: IntGaugeVec,
    pending_purchases: IntGaugeVec,
    ledger_orders: IntGaugeVec,
    watermark_lag: prometheus::GaugeVec,
    consumer_lag: IntGaugeVec,
    /// (topic, partition) of every consumer-lag series, to drop them by partition.
    consumer_lag_series: Mutex<BTreeSet<(String, i32)>>,
    transactions_committed: IntCounter,
    transactions_aborted: IntCounter,
    transaction_seconds: Histogram,
    latency_seconds: Histogram,
    rebalances: IntCounterVec,
    backpressure: IntGaugeVec,
    backpressure_activations: IntCounterVec,
    input_bytes: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered; label sets known in advance
    /// start at 0, so `rate()` sees the first increment.
    pub fn new() -> Metrics {
        let r = Registry::new();

        let build_info =
            int_gauge_vec(&r, "attrib_build_info", "Always 1; the running attrib version in a label.", &["version"]);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let mut engine_counters: Vec<(IntCounter, Reader)> = Vec::new();
        let mut add = |c: IntCounter, read: Reader| engine_counters.push((c, read));

        add(
            int_counter(&r, "attrib_inputs_total", "Inputs seen (Kafka messages or non-blank lines), valid or not."),
            Box::new(|s| s.events_in),
        );
        let read = int_counter_vec(
            &r,
            "attrib_events_read_total",
            "Valid events handed to the engine, by event type.",
            &["type"],
        );
        let events = int_counter_vec(
            &r,
            "attrib_events_total",
            "Valid events by type and final outcome (purchases and refunds count once final).",
            &["type", "outcome"],
        );
        let late = int_counter_vec(
            &r,
            "attrib_late_events_total",
            "Events behind the watermark on arrival, still used (a subset of processed).",
            &["type"],
        );
        for t in EventType::ALL {
            let i = t as usize;
            add(read.with_label_values(&[t.as_str()]), Box::new(move |s| s.by_type[i].read));
            add(late.with_label_values(&[t.as_str()]), Box::new(move |s| s.by_type[i].late));
            for (outcome, f) in OUTCOMES {
                add(events.with_label_values(&[t.as_str(), outcome]), Box::new(move |s| f(&s.by_type[i])));
            }
        }
        let dead = int_counter_vec(
            &r,
            "attrib_dead_letters_total",
            "Inputs written to the dead-letter output, by reason.",
            &["reason"],
        );
        for reason in DeadLetterReason::ALL {
            let i = reason as usize;
            add(dead.with_label_values(&[reason.as_str()]), Box::new(move |s| s.dead_letter[i]));
        }
        let purchases = int_counter_vec(
            &r,
            "attrib_purchases_total",
            "Final purchases by whether any item was credited to a creator.",
            &["attribution"],
        );
        add(purchases.with_label_values(&["attributed"]), Box::new(|s| s.purchases_attributed));
        add(purchases.with_label_values(&["unattributed"]), Box::new(|s| s.purchases_unattributed));
        let items = int_counter_vec(
            &r,
            "attrib_items_total",
            "Items of final purchases by whether they were credited to a creator.",
            &["attribution"],
        );
        add(items.with_label_values(&["attributed"]), Box::new(|s| s.items_attributed));
        add(items.with_label_values(&["unattributed"]), Box::new(|s| s.items_unattributed));
        let refunds = int_counter_vec(&r, "attrib_refunds_total", "Final refunds by what they matched.", &["outcome"]);
        add(refunds.with_label_values(&["applied"]), Box::new(|s| s.refund_applied));
        add(refunds.with_label_values(&["unknown_order"]), Box::new(|s| s.refund_unknown_order));
        add(refunds.with_label_values(&["unattributed_order"]), Box::new(|s| s.refund_unattributed_order));
        add(refunds.with_label_values(&["expired"]), Box::new(|s| s.refund_expired));
        add(refunds.with_label_values(&["after_lock"]), Box::new(|s| s.refund_after_lock));
        add(
            int_counter(
                &r,
                "attrib_refund_excess_units_total",
                "Refunded units beyond what was left on the order (ignored).",
            ),
            Box::new(|s| s.refund_excess_units),
        );
        let records = int_counter_vec(&r, "attrib_records_total", "Records written, by kind.", &["kind"]);
        add(records.with_label_values(&["commission"]), Box::new(|s| s.records_commission));
        add(records.with_label_values(&["reversal"]), Box::new(|s| s.records_reversal));
        add(records.with_label_values(&["lock"]), Box::new(|s| s.records_lock));
        add(
            int_counter(
                &r,
                "attrib_touches_evicted_total",
                "Touches dropped because a shopper reached max_touches_per_user.",
            ),
            Box::new(|s| s.touches_evicted_cap),
        );

        let commission_minor = int_counter_vec(
            &r,
            "attrib_commission_minor_units_total",
            "Commission paid (kind=commission) and reversed (kind=reversal, as a positive amount), \
             minor units of the currency.",
            &["currency", "kind"],
        );

        let partition_gauge = |name: &str, help: &str| int_gauge_vec(&r, name, help, &["partition"]);
        let live_touches = partition_gauge("attrib_live_touches", "Touches held in state.");
        let shoppers = partition_gauge("attrib_shoppers", "Shoppers with at least one touch in state.");
        let pending_purchases =
            partition_gauge("attrib_pending_purchases", "Purchases and refunds waiting for the watermark.");
        let ledger_orders = partition_gauge("attrib_ledger_orders", "Orders remembered in the order ledger.");
        let watermark_lag = register(
            &r,
            prometheus::GaugeVec::new(
                Opts::new("attrib_watermark_lag_seconds", "Wall clock minus the partition group's watermark."),
                &["partition"],
            ),
        );
        let consumer_lag = int_gauge_vec(
            &r,
            "attrib_consumer_lag_messages",
            "Messages behind the partition's end (librdkafka statistics).",
            &["topic", "partition"],
        );

        let transactions = int_counter_vec(
            &r,
            "attrib_transactions_total",
            "Kafka transactions by outcome (committed or aborted).",
            &["outcome"],
        );
        let transaction_seconds = histogram(
            &r,
            "attrib_transaction_duration_seconds",
            "Time to commit a Kafka transaction (committed transactions only).",
            TRANSACTION_BUCKETS,
        );
        let latency_seconds = histogram(
            &r,
            "attrib_processing_latency_seconds",
            "From an input received to its records committed.",
            LATENCY_BUCKETS,
        );
        let rebalances =
            int_counter_vec(&r, "attrib_rebalances_total", "Consumer group rebalance events, by kind.", &["kind"]);
        for kind in REBALANCE_KINDS {
            rebalances.with_label_values(&[kind]);
        }
        let backpressure = int_gauge_vec(
            &r,
            "attrib_backpressure",
            "1 while consumption is paused because a state limit is reached, by limit.",
            &["reason"],
        );
        let backpressure_activations = int_counter_vec(
            &r,
            "attrib_backpressure_activations_total",
            "Times back-pressure switched on, by limit (catches pauses shorter than a scrape).",
            &["reason"],
        );
        for reason in BACKPRESSURE_REASONS {
            backpressure.with_label_values(&[reason]);
            backpressure_activations.with_label_values(&[reason]);
        }
        let input_bytes =
            int_counter(&r, "attrib_input_bytes_total", "Input bytes read (replay) or consumed (worker).");

        // RSS, CPU, open fds: the first thing to look at for a stateful processor.
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metric names are unique");

        Metrics {
            registry: r,
            engine_counters,
            commission_minor,
            live_touches,
            shoppers,
            pending_purchases,
            ledger_orders,
            watermark_lag,
            consumer_lag,
            consumer_lag_series: Mutex::new(BTreeSet::new()),
            transactions_committed: transactions.with_label_values(&["committed"]),
            transactions_aborted: transactions.with_label_values(&["aborted"]),
            transaction_seconds,
            latency_seconds,
            rebalances,
            backpressure,
            backpressure_activations,
            input_bytes,
        }
    }

    /// Adds the difference `after - before` of the engine's counters (both from the same partition group).
    ///
    /// A counter that went down (the stats were reset or restored) adds nothing.
    pub fn add_stats(&self, before: &Stats, after: &Stats) {
        for (counter, read) in &self.engine_counters {
            let delta = read(after).saturating_sub(read(before));
            if delta > 0 {
                counter.inc_by(delta);
            }
        }
        for (currency, &(paid, reversed)) in &after.money {
            let (paid_before, reversed_before) = before.money.get(currency).copied().unwrap_or_default();
            // Reversal totals are negative; the counter takes their magnitude.
            let deltas = [("commission", paid - paid_before), ("reversal", reversed_before - reversed)];
            for (kind, delta) in deltas {
                if let Ok(delta @ 1..) = u64::try_from(delta) {
                    self.commission_minor.with_label_values(&[currency.as_str(), kind]).inc_by(delta);
                }
            }
        }
        // Locked amounts (SPEC 8.2) are net of reversals, so never negative.
        for (currency, &locked) in &after.locked {
            let delta = locked - before.locked.get(currency).copied().unwrap_or_default();
            if let Ok(delta @ 1..) = u64::try_from(delta) {
                self.commission_minor.with_label_values(&[currency.as_str(), "lock"]).inc_by(delta);
            }
        }
    }

    /// Gauges of one partition group's state (label `partition`).
    pub fn set_state(
        &self,
        partition: i32,
        live_touches: usize,
        shoppers: usize,
        pending_purchases: usize,
        ledger_orders: usize,
    ) {
        let p = partition.to_string();
        let gauges = [
            (&self.live_touches, live_touches),
            (&self.shoppers, shoppers),
            (&self.pending_purchases, pending_purchases),
            (&self.ledger_orders, ledger_orders),
        ];
        for (gauge, n) in gauges {
            gauge.with_label_values(&[&p]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Watermark lag = wall clock minus the group's watermark, ms (None: no watermark yet → remove the series).
    pub fn set_watermark_lag(&self, partition: i32, lag_ms: Option<i64>) {
        let p = partition.to_string();
        match lag_ms {
            Some(ms) => self.watermark_lag.with_label_values(&[&p]).set(ms as f64 / 1000.0),
            None => {
                // Err only means the series did not exist.
                let _ = self.watermark_lag.remove_label_values(&[&p]);
            }
        }
    }

    /// Removes every per-partition series of a group that left this worker
    /// (state gauges, watermark lag, and consumer lag of that partition on every topic).
    pub fn remove_partition(&self, partition: i32) {
        let p = partition.to_string();
        for gauge in [&self.live_touches, &self.shoppers, &self.pending_purchases, &self.ledger_orders] {
            let _ = gauge.remove_label_values(&[&p]);
        }
        let _ = self.watermark_lag.remove_label_values(&[&p]);
        let mut series = self.consumer_lag_series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|(topic, part)| {
            let keep = *part != partition;
            if !keep {
                let _ = self.consumer_lag.remove_label_values(&[topic.as_str(), &p]);
            }
            keep
        });
    }

    /// Consumer lag from librdkafka statistics (labels topic, partition).
    ///
    /// A negative lag (librdkafka's -1: not known yet) removes the series rather than
    /// exporting a fake value.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        let p = partition.to_string();
        let mut series = self.consumer_lag_series.lock().unwrap_or_else(|e| e.into_inner());
        if lag < 0 {
            if series.remove(&(topic.to_owned(), partition)) {
                let _ = self.consumer_lag.remove_label_values(&[topic, &p]);
            }
            return;
        }
        series.insert((topic.to_owned(), partition));
        self.consumer_lag.with_label_values(&[topic, &p]).set(lag);
    }

    /// Counts one committed transaction and how long its commit took.
    pub fn transaction_committed(&self, took: Duration) {
        self.transactions_committed.inc();
        self.transaction_seconds.observe(took.as_secs_f64());
    }

    /// Counts one aborted transaction.
    pub fn transaction_aborted(&self) {
        self.transactions_aborted.inc();
    }

    /// Event-to-record processing latency (message received → its records committed).
    pub fn observe_latency(&self, took: Duration) {
        self.latency_seconds.observe(took.as_secs_f64());
    }

    /// Counts one rebalance event. kind: "assign" | "revoke".
    pub fn rebalance(&self, kind: &str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Back-pressure on/off by reason ("live_touches" | "pending_purchases").
    pub fn set_backpressure(&self, reason: &str, on: bool) {
        let gauge = self.backpressure.with_label_values(&[reason]);
        let was_on = gauge.get() != 0;
        gauge.set(i64::from(on));
        if on && !was_on {
            self.backpressure_activations.with_label_values(&[reason]).inc();
        }
    }

    /// Input bytes read (replay) or consumed (worker).
    pub fn add_bytes(&self, n: u64) {
        self.input_bytes.inc_by(n);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The registry, for callers that want to add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Registers a freshly built metric. Names and labels are constants of this file, so a
/// failure is a bug here (caught by the tests), not bad input.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: prometheus::Result<M>) -> M {
    let m = m.expect("metric options are valid");
    r.register(Box::new(m.clone())).expect("metric names are unique");
    m
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn int_counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
}

/// Liveness and readiness of a worker, updated lock-free by the poll loop.
pub struct Health {
    start: Instant,
    stall_after: Duration,
    assigned: AtomicBool,
    producer_ready: AtomicBool,
    /// Nanoseconds from `start` to the last [`Health::progress`], plus one; 0: never.
    last_progress: AtomicU64,
}

impl Health {
    /// Not ready until partitions are assigned, the producer is ready and the poll loop
    /// has run; then not ready whenever the loop is quiet for longer than `stall_after`.
    pub fn new(stall_after: Duration) -> Health {
        Health {
            start: Instant::now(),
            stall_after,
            assigned: AtomicBool::new(false),
            producer_ready: AtomicBool::new(false),
            last_progress: AtomicU64::new(0),
        }
    }

    /// Whether this worker owns at least one partition group.
    pub fn set_assigned(&self, yes: bool) {
        self.assigned.store(yes, Ordering::Relaxed);
    }

    /// Whether the transactional producer is initialised and usable.
    pub fn set_producer_ready(&self, yes: bool) {
        self.producer_ready.store(yes, Ordering::Relaxed);
    }

    /// Called by the poll loop on every iteration.
    pub fn progress(&self) {
        self.last_progress.store(nanos(self.start.elapsed()).saturating_add(1), Ordering::Relaxed);
    }

    /// ready = assigned && producer ready && progress() called within stall_after. Returns (ready, reason text).
    pub fn ready(&self) -> (bool, String) {
        self.ready_at(self.start.elapsed())
    }

    /// [`Health::ready`] as seen `now` after `start` (tests pick the time).
    fn ready_at(&self, now: Duration) -> (bool, String) {
        let mut why = Vec::new();
        if !self.assigned.load(Ordering::Relaxed) {
            why.push("no partitions assigned".to_owned());
        }
        if !self.producer_ready.load(Ordering::Relaxed) {
            why.push("producer not ready".to_owned());
        }
        match self.last_progress.load(Ordering::Relaxed) {
            0 => why.push("poll loop has not started".to_owned()),
            last => {
                let quiet = Duration::from_nanos(nanos(now).saturating_sub(last - 1));
                if quiet > self.stall_after {
                    why.push(format!(
                        "poll loop stalled: no progress for {:.1} s (limit {:.1} s)",
                        quiet.as_secs_f64(),
                        self.stall_after.as_secs_f64()
                    ));
                }
            }
        }
        if why.is_empty() {
            (true, "ready".to_owned())
        } else {
            (false, why.join("; "))
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The running HTTP server of [`serve`]; dropping it stops the server and joins its thread.
pub struct Server {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves GET /metrics (text/plain; version=0.0.4), /healthz (200 "ok" while the process
/// lives), /readyz (200 or 503 with the reason) on a background thread; 404 otherwise.
/// Returns the bound address (port 0 allowed) and a handle that stops the server when dropped.
///
/// The socket is bound and listening when this returns.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> std::io::Result<Server> {
    let http = Arc::new(tiny_http::Server::http(addr).map_err(std::io::Error::other)?);
    let bound = http.server_addr().to_ip().ok_or_else(|| std::io::Error::other("not bound to an IP address"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("attrib-metrics".into()).spawn({
        let (http, stop) = (http.clone(), stop.clone());
        move || loop {
            match http.recv() {
                Ok(request) => respond(request, &metrics, &health),
                Err(_) if stop.load(Ordering::Acquire) => break,
                Err(e) => tracing::warn!(error = %e, "metrics server: accepting a connection failed"),
            }
        }
    })?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(Server { addr: bound, http, stop, thread: Some(thread) })
}

/// Answers one request; the client going away is not our problem.
fn respond(request: tiny_http::Request, metrics: &Metrics, health: &Health) {
    let (status, content_type, body) = route(request.method(), request.url(), metrics, health);
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("constant header is valid");
    let response = tiny_http::Response::from_string(body).with_status_code(status).with_header(header);
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "metrics server: writing a response failed");
    }
}

/// Status, content type and body for a request; no I/O.
fn route(method: &tiny_http::Method, url: &str, metrics: &Metrics, health: &Health) -> (u16, &'static str, String) {
    use tiny_http::Method::{Get, Head};
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = url.split('?').next().unwrap_or(url);
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if known && !matches!(method, Get | Head) {
        return (405, TEXT, "method not allowed\n".to_owned());
    }
    match path {
        "/metrics" => (200, prometheus::TEXT_FORMAT, metrics.render()),
        "/healthz" => (200, TEXT, "ok\n".to_owned()),
        "/readyz" => {
            let (ready, why) = health.ready();
            (if ready { 200 } else { 503 }, TEXT, why + "\n")
        }
        _ => (404, TEXT, "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::model::Currency;

    /// The value of one series in `render()` output, e.g. `attrib_records_total{kind="commission"}`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn usd() -> Currency {
        Currency(*b"USD")
    }

    #[test]
    fn add_stats_adds_deltas() {
        let m = Metrics::new();
        let mut before = Stats { events_in: 10, ..Stats::default() };
        before.by_type[EventType::Click as usize].processed = 4;
        before.dead_letter[DeadLetterReason::InvalidJson as usize] = 1;
        before.records_commission = 2;
        before.money.insert(usd(), (500, -100));
        let mut after = before.clone();
        after.events_in = 15;
        after.by_type[EventType::Click as usize].processed = 7;
        after.by_type[EventType::Purchase as usize].duplicate_order = 1;
        after.by_type[EventType::View as usize].late = 2;
        after.dead_letter[DeadLetterReason::InvalidJson as usize] = 3;
        after.purchases_attributed = 1;
        after.records_commission = 5;
        after.records_reversal = 1;
        after.money.insert(usd(), (800, -150));
        after.money.insert(Currency(*b"EUR"), (40, 0));

        m.add_stats(&before, &after);
        // Applying the same batch again counts it again (deltas, not totals).
        m.add_stats(&before, &after);
        let text = m.render();
        assert_eq!(value(&text, "attrib_inputs_total"), Some(10.0));
        assert_eq!(value(&text, r#"attrib_events_total{outcome="processed",type="click"}"#), Some(6.0));
        assert_eq!(value(&text, r#"attrib_events_total{outcome="duplicate_order",type="purchase"}"#), Some(2.0));
        assert_eq!(value(&text, r#"attrib_events_total{outcome="processed",type="view"}"#), Some(0.0));
        assert_eq!(value(&text, r#"attrib_late_events_total{type="view"}"#), Some(4.0));
        assert_eq!(value(&text, r#"attrib_dead_letters_total{reason="invalid_json"}"#), Some(4.0));
        assert_eq!(value(&text, r#"attrib_dead_letters_total{reason="too_late"}"#), Some(0.0));
        assert_eq!(value(&text, r#"attrib_purchases_total{attribution="attributed"}"#), Some(2.0));
        assert_eq!(value(&text, r#"attrib_records_total{kind="commission"}"#), Some(6.0));
        assert_eq!(value(&text, r#"attrib_records_total{kind="reversal"}"#), Some(2.0));
        assert_eq!(
            value(&text, r#"attrib_commission_minor_units_total{currency="USD",kind="commission"}"#),
            Some(600.0)
        );
        assert_eq!(value(&text, r#"attrib_commission_minor_units_total{currency="USD",kind="reversal"}"#), Some(100.0));
        assert_eq!(
            value(&text, r#"attrib_commission_minor_units_total{currency="EUR",kind="commission"}"#),
            Some(80.0)
        );
        // No reversal in EUR yet: no series rather than a 0 that was never counted.
        assert!(!text.contains(r#"currency="EUR",kind="reversal""#));
    }

    #[test]
    fn locks_and_after_lock_refunds_are_counted() {
        let m = Metrics::new();
        let before = Stats::default();
        let mut after = before.clone();
        after.records_lock = 3;
        after.refund_after_lock = 2;
        after.locked.insert(usd(), 450);
        m.add_stats(&before, &after);
        let mut later = after.clone();
        later.records_lock = 4;
        later.locked.insert(usd(), 500);
        m.add_stats(&after, &later);
        let text = m.render();
        assert_eq!(value(&text, r#"attrib_records_total{kind="lock"}"#), Some(4.0));
        assert_eq!(value(&text, r#"attrib_refunds_total{outcome="after_lock"}"#), Some(2.0));
        assert_eq!(value(&text, r#"attrib_commission_minor_units_total{currency="USD",kind="lock"}"#), Some(500.0));
    }

    #[test]
    fn add_stats_ignores_counters_that_went_down() {
        let m = Metrics::new();
        let mut before = Stats { events_in: 100, ..Stats::default() };
        before.money.insert(usd(), (1000, -10));
        m.add_stats(&before, &Stats::default());
        let text = m.render();
        assert_eq!(value(&text, "attrib_inputs_total"), Some(0.0));
        assert!(!text.contains("attrib_commission_minor_units_total{"));
    }

    #[test]
    fn render_contains_every_family_and_no_ids() {
        let m = everything_set();
        let text = m.render();
        for series in [
            r#"attrib_build_info{version=""#,
            r#"attrib_live_touches{partition="3"} 120"#,
            r#"attrib_shoppers{partition="3"} 40"#,
            r#"attrib_pending_purchases{partition="3"} 5"#,
            r#"attrib_ledger_orders{partition="3"} 9"#,
            r#"attrib_watermark_lag_seconds{partition="3"} 2.5"#,
            r#"attrib_consumer_lag_messages{partition="3",topic="views"} 17"#,
            r#"attrib_transactions_total{outcome="committed"} 1"#,
            r#"attrib_transactions_total{outcome="aborted"} 1"#,
            r#"attrib_transaction_duration_seconds_bucket{le="0.025"} 1"#,
            "attrib_transaction_duration_seconds_count 1",
            r#"attrib_processing_latency_seconds_bucket{le="0.0001"} 0"#,
            r#"attrib_processing_latency_seconds_bucket{le="0.005"} 1"#,
            r#"attrib_processing_latency_seconds_bucket{le="10"} 1"#,
            r#"attrib_rebalances_total{kind="assign"} 1"#,
            r#"attrib_rebalances_total{kind="revoke"} 0"#,
            r#"attrib_backpressure{reason="live_touches"} 1"#,
            r#"attrib_backpressure{reason="pending_purchases"} 0"#,
            r#"attrib_backpressure_activations_total{reason="live_touches"} 1"#,
            "attrib_input_bytes_total 4096",
            "# TYPE attrib_processing_latency_seconds histogram",
            "# TYPE attrib_events_total counter",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
        // Only the label names we chose; none of them can carry an id.
        let allowed: BTreeSet<&str> =
            ["type", "outcome", "reason", "attribution", "kind", "currency", "partition", "topic", "le", "version"]
                .into();
        for line in text.lines().filter(|l| l.starts_with("attrib_")) {
            if let Some(labels) = line.split_once('{').map(|(_, rest)| rest) {
                for pair in labels.split_once('}').map_or("", |(l, _)| l).split(',') {
                    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
                    assert!(allowed.contains(name), "label {name} in {line}");
                }
            }
        }
    }

    #[test]
    fn backpressure_counts_switching_on_only() {
        let m = Metrics::new();
        m.set_backpressure("pending_purchases", true);
        m.set_backpressure("pending_purchases", true);
        m.set_backpressure("pending_purchases", false);
        m.set_backpressure("pending_purchases", true);
        let text = m.render();
        assert_eq!(value(&text, r#"attrib_backpressure{reason="pending_purchases"}"#), Some(1.0));
        assert_eq!(value(&text, r#"attrib_backpressure_activations_total{reason="pending_purchases"}"#), Some(2.0));
    }

    #[test]
    fn remove_partition_drops_its_series_only() {
        let m = Metrics::new();
        for p in [1, 2] {
            m.set_state(p, 1, 1, 1, 1);
            m.set_watermark_lag(p, Some(1000));
            m.set_consumer_lag("views", p, 5);
            m.set_consumer_lag("clicks", p, 6);
        }
        m.remove_partition(1);
        let text = m.render();
        assert!(!text.contains(r#"partition="1""#), "{text}");
        for series in [
            r#"attrib_live_touches{partition="2"}"#,
            r#"attrib_ledger_orders{partition="2"}"#,
            r#"attrib_watermark_lag_seconds{partition="2"}"#,
            r#"attrib_consumer_lag_messages{partition="2",topic="views"}"#,
            r#"attrib_consumer_lag_messages{partition="2",topic="clicks"}"#,
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        // Removing again (or a partition never seen) is harmless.
        m.remove_partition(1);
        m.remove_partition(7);
    }

    #[test]
    fn unknown_lags_remove_their_series() {
        let m = Metrics::new();
        m.set_watermark_lag(0, Some(-250));
        assert_eq!(value(&m.render(), r#"attrib_watermark_lag_seconds{partition="0"}"#), Some(-0.25));
        m.set_watermark_lag(0, None);
        m.set_consumer_lag("views", 0, 3);
        m.set_consumer_lag("views", 0, -1);
        let text = m.render();
        assert!(!text.contains("attrib_watermark_lag_seconds{"));
        assert!(!text.contains("attrib_consumer_lag_messages{"));
    }

    #[test]
    fn readiness_needs_assignment_producer_and_recent_progress() {
        let h = Health::new(Duration::from_secs(30));
        let (ready, why) = h.ready();
        assert!(!ready);
        assert_eq!(why, "no partitions assigned; producer not ready; poll loop has not started");
        h.set_assigned(true);
        h.set_producer_ready(true);
        assert_eq!(h.ready(), (false, "poll loop has not started".to_owned()));
        h.progress();
        assert_eq!(h.ready(), (true, "ready".to_owned()));
        let last = Duration::from_nanos(h.last_progress.load(Ordering::Relaxed) - 1);
        assert!(h.ready_at(last + Duration::from_secs(30)).0, "exactly stall_after is still fine");
        let (ready, why) = h.ready_at(last + Duration::from_secs(31));
        assert!(!ready);
        assert_eq!(why, "poll loop stalled: no progress for 31.0 s (limit 30.0 s)");
        h.set_assigned(false);
        assert_eq!(h.ready(), (false, "no partitions assigned".to_owned()));
    }

    /// One plain HTTP/1.0 request; returns (status, headers and body).
    fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("write");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read");
        let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
        (status, response)
    }

    #[test]
    fn serve_answers_metrics_and_probes() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(Duration::from_secs(60)));
        metrics.add_bytes(7);
        let server = serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), health.clone()).expect("serve");
        let addr = server.addr();
        assert_ne!(addr.port(), 0);

        let (status, body) = get(addr, "GET", "/metrics");
        assert_eq!(status, 200);
        assert!(body.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{body}");
        assert!(body.contains("attrib_input_bytes_total 7"), "{body}");

        let (status, body) = get(addr, "GET", "/healthz");
        assert_eq!(status, 200);
        assert!(body.ends_with("ok\n"));

        let (status, body) = get(addr, "GET", "/readyz");
        assert_eq!(status, 503);
        assert!(body.contains("no partitions assigned"), "{body}");
        health.set_assigned(true);
        health.set_producer_ready(true);
        health.progress();
        let (status, body) = get(addr, "GET", "/readyz?verbose");
        assert_eq!(status, 200);
        assert!(body.ends_with("ready\n"));

        assert_eq!(get(addr, "GET", "/").0, 404);
        assert_eq!(get(addr, "POST", "/metrics").0, 405);

        drop(server);
        // Stopped: nothing answers any more (a connect may still succeed while the
        // kernel tears the socket down, but no response comes back).
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(s, "GET /healthz HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            assert!(buf.is_empty(), "server still answering: {buf}");
        }
    }

    /// A Metrics on which every kind of series has been set at least once.
    fn everything_set() -> Metrics {
        let m = Metrics::new();
        let mut after = Stats { events_in: 3, ..Stats::default() };
        after.money.insert(usd(), (400, -50));
        m.add_stats(&Stats::default(), &after);
        m.set_state(3, 120, 40, 5, 9);
        m.set_watermark_lag(3, Some(2500));
        m.set_consumer_lag("views", 3, 17);
        m.transaction_committed(Duration::from_millis(20));
        m.transaction_aborted();
        m.observe_latency(Duration::from_millis(3));
        m.rebalance("assign");
        m.set_backpressure("live_touches", true);
        m.add_bytes(4096);
        m
    }

    /// Every metric name (`attrib_…` or `process_…`) in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let bytes = expr.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let at_word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            if at_word_start && (expr[i..].starts_with("attrib_") || expr[i..].starts_with("process_")) {
                let len = expr[i..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(expr.len() - i);
                names.push(expr[i..i + len].to_owned());
                i += len;
            } else {
                i += 1;
            }
        }
        names
    }

    fn panel_exprs(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            // Rows carry their panels inside when collapsed.
            panel_exprs(panel["panels"].as_array().map_or(&[], |v| v.as_slice()), out);
        }
    }

    /// Coverage only: that the queries work (every metric exported under these names and
    /// labels, every query returning data) is checked against a real Prometheus scraping
    /// a worker, in the broker suite (`tests/broker/prometheus.rs`).
    #[test]
    fn dashboard_has_a_panel_for_every_key_metric() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/dashboards/attrib.json")).expect("dashboard JSON");
        let mut exprs = Vec::new();
        panel_exprs(dashboard["panels"].as_array().expect("panels"), &mut exprs);
        let mut used = BTreeSet::new();
        for (title, expr) in &exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {title:?}: no metric in {expr}");
            for name in names {
                let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                used.insert(family.to_owned());
            }
        }
        for must in [
            "attrib_events_read_total",
            "attrib_commission_minor_units_total",
            "attrib_dead_letters_total",
            "attrib_consumer_lag_messages",
            "attrib_watermark_lag_seconds",
            "attrib_live_touches",
            "attrib_shoppers",
            "attrib_pending_purchases",
            "attrib_ledger_orders",
            "attrib_processing_latency_seconds",
            "attrib_transactions_total",
            "attrib_backpressure",
        ] {
            assert!(used.contains(must), "no panel shows {must}");
        }
    }

    #[test]
    fn metric_names_are_found_in_promql() {
        assert_eq!(
            metric_names(
                r#"histogram_quantile(0.99, sum by (le) (rate(attrib_transaction_duration_seconds_bucket{a="b"}[5m])))"#
            ),
            ["attrib_transaction_duration_seconds_bucket"]
        );
        assert_eq!(metric_names("sum(attrib_live_touches) + my_attrib_x"), ["attrib_live_touches"]);
    }
}

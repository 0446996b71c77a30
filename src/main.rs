//! The `attrib` command line: parses arguments and hands over to the library.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use attrib::config::Config;
use attrib::engine::{Engine, Stats};
use attrib::gen::{generate, GenKind, GenOptions};
use attrib::metrics::Metrics;
use attrib::replay::{open_files, replay_observed, JsonLinesSink, Observer};

/// Credits creators for the sales they drive.
#[derive(Parser)]
#[command(name = "attrib", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay JSONL fixture files through the engine (no broker).
    Replay(ReplayArgs),
    /// Explain one purchase: every touch of the shopper with its verdict, the split and
    /// the rates (SPEC 8.4).
    Explain(ExplainArgs),
    /// Compare paid records against shadow-model records, per creator and currency.
    Compare(CompareArgs),
    /// Write a seeded synthetic workload as JSONL.
    Gen(GenArgs),
    /// Run the streaming worker against Kafka (exactly once) until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Load JSONL files into the input topics (topic by event type, key user_id).
    Produce(ProduceArgs),
    /// Restate history under a new config: adjustment records for every (purchase,
    /// item, creator) whose net amount differs from the baseline's (SPEC 8.5).
    Restate(RestateArgs),
}

#[derive(Args)]
struct RestateArgs {
    /// The config the events were paid under (TOML).
    #[arg(long)]
    baseline: PathBuf,
    /// The config to restate to (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The restatement's name: adjustment ids end in `:adj:NAME`, so a second run with
    /// the same name writes the same ids.
    #[arg(long)]
    revision: String,
    /// Write the adjustment records here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also produce the adjustments to the new config's `kafka.output_topic`, in one
    /// transaction.
    #[arg(long)]
    kafka: bool,
    /// Input files, as for `replay`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Config file (TOML); ATTRIB__SECTION__KEY variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
    /// Stop (commit and exit 0) once every assigned input partition has reached the end
    /// offset it had when this worker got it: a catch-up run, and the macro benchmark.
    #[arg(long)]
    stop_at_end: bool,
}

#[derive(Args)]
struct ProduceArgs {
    /// Config file (TOML): kafka.brokers, kafka.input_topics, kafka.client.
    #[arg(long)]
    config: Option<PathBuf>,
    /// After the files, write one view per input partition a minute of event time past
    /// the last event, so the worker's watermark passes everything sent.
    #[arg(long)]
    flush_marker: bool,
    /// Lines per second, sent at a steady pace (for latency benchmarks); 0: as fast as
    /// possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The key of purchases and refunds: user_id (co-partitioned with the touches) or
    /// order_id (as order services often key them; SPEC 8.6).
    #[arg(long, value_enum, default_value_t = attrib::worker::produce::KeyBy::UserId)]
    key: attrib::worker::produce::KeyBy,
    /// JSONL files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    /// Config file (TOML); ATTRIB__SECTION__KEY variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write commission and reversal records here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write dead letters here (otherwise they are only counted).
    #[arg(long)]
    dlq: Option<PathBuf>,
    /// Write the records of `attribution.shadow_models` here (SPEC 8.3). Without it,
    /// shadow records are computed and counted in the summary but not written; they never
    /// go to the paid output.
    #[arg(long)]
    shadow_out: Option<PathBuf>,
    /// Print only the summary: no records on stdout (unless --out), no progress bar.
    /// The progress bar also stays off when stderr is not a terminal, or when records
    /// go to a terminal on stdout.
    #[arg(long, short)]
    quiet: bool,
    /// Engines to split the shoppers over, each on its own thread (0: every core). The
    /// output is the same, byte for byte, whatever the number (SPEC 8.7).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Input files; each is one input with its own watermark.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct ExplainArgs {
    /// The purchase's event_id.
    #[arg(long)]
    purchase: String,
    /// The shopper, when shoppers share the purchase's event_id.
    #[arg(long)]
    user: Option<String>,
    /// Config file (TOML); ATTRIB__SECTION__KEY variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// One JSON object (SPEC 8.4) instead of the human form.
    #[arg(long)]
    json: bool,
    /// Input files, as given to `attrib replay`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// Also write the comparison as one self-contained HTML page (inline SVG charts).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Creators shown per currency, largest paid first (0: all).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// The paid records (`replay --out`).
    paid: PathBuf,
    /// Shadow records (`replay --shadow-out`), one file or several.
    #[arg(required = true)]
    shadow: Vec<PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Number of lines (duplicates and invalid lines included).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Random seed: the same arguments give the same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Most an event may lag behind the largest event time before it (ms).
    #[arg(long, default_value_t = 2000)]
    disorder: u64,
    /// Fraction of events emitted twice.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of lines that are invalid.
    #[arg(long, default_value_t = 0.0)]
    invalid: f64,
    /// Fraction of purchases refunded later.
    #[arg(long, default_value_t = 0.05)]
    refunds: f64,
    /// Distinct shoppers.
    #[arg(long, default_value_t = 50_000)]
    users: u32,
    /// Distinct creators.
    #[arg(long, default_value_t = 2_000)]
    creators: u32,
    /// Distinct products.
    #[arg(long, default_value_t = 10_000)]
    products: u32,
    /// Average events per second of event time.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Write one file per event type (views.jsonl, clicks.jsonl, purchases.jsonl,
    /// refunds.jsonl, invalid.jsonl) into this directory.
    #[arg(long, conflicts_with = "out")]
    split: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("attrib: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Replay(args) => replay(args),
        Command::Explain(args) => explain(args),
        Command::Compare(args) => compare(args),
        Command::Gen(args) => gen(args),
        Command::Run(args) => run_worker(args),
        Command::Produce(args) => produce(args),
        Command::Restate(args) => restate(args),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: logs collected from a file or a pipe stay plain text.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run_worker(args: RunArgs) -> Result<()> {
    init_logging(args.log_json);
    let config = Config::load(args.config.as_deref())?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone()).context("installing signal handlers")?;
    }
    let options = attrib::worker::RunOptions { stop_at_end: args.stop_at_end };
    attrib::worker::run(config, shutdown, options)?;
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let opts =
        attrib::worker::produce::ProduceOptions { flush_marker: args.flush_marker, rate: args.rate, key: args.key };
    let sent = attrib::worker::produce::produce(&config, &args.files, &opts)?;
    for (topic, n) in config.kafka.input_topics.iter().zip(&sent.per_topic) {
        eprintln!("{topic}: {n} messages");
    }
    if sent.markers > 0 {
        eprintln!("flush markers: {}", sent.markers);
    }
    let secs = sent.elapsed.as_secs_f64();
    let events = sent.events();
    eprintln!("produced {events} events in {secs:.3} s = {:.0} events/s", events as f64 / secs.max(1e-9));
    Ok(())
}

fn restate(args: RestateArgs) -> Result<()> {
    attrib::restate::check_revision(&args.revision).map_err(anyhow::Error::msg)?;
    // Environment overrides apply to both configs alike.
    let baseline =
        Config::load(Some(&args.baseline)).with_context(|| format!("--baseline {}", args.baseline.display()))?;
    let config = Config::load(Some(&args.config)).with_context(|| format!("--config {}", args.config.display()))?;
    let restatement = attrib::restate::restate(&baseline, &config, &args.revision, open_files(&args.files)?)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for r in &restatement.adjustments {
        attrib::codec::encode_record(&r.view(), &mut buf);
    }
    match &args.out {
        Some(p) => std::fs::write(p, &buf).with_context(|| format!("writing {}", p.display()))?,
        None => io::stdout().lock().write_all(&buf)?,
    }
    if args.kafka {
        restate_kafka(&config, &restatement)?;
    }
    eprintln!("{restatement}");
    Ok(())
}

#[cfg(feature = "kafka")]
fn restate_kafka(config: &Config, restatement: &attrib::restate::Restatement) -> Result<()> {
    let n = attrib::worker::restate::produce_adjustments(config, restatement)?;
    eprintln!("produced {n} adjustment(s) to {} in one transaction", config.kafka.output_topic);
    Ok(())
}

#[cfg(not(feature = "kafka"))]
fn restate_kafka(_: &Config, _: &attrib::restate::Restatement) -> Result<()> {
    anyhow::bail!("--kafka needs the kafka feature")
}

fn replay(args: ReplayArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let records: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None if args.quiet => Box::new(io::sink()),
        None => Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())),
    };
    let dlq = match &args.dlq {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let total_bytes: u64 = args.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let show_bar = !args.quiet && io::stderr().is_terminal() && (args.out.is_some() || !io::stdout().is_terminal());
    let bar = if show_bar { indicatif::ProgressBar::new(total_bytes) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("valid progress template"),
    );
    // Metrics only when asked for (`metrics.listen`): a replay is usually short.
    let metrics = Arc::new(Metrics::new());
    let _server = match config.metrics_listen {
        Some(addr) => {
            let health = Arc::new(attrib::metrics::Health::new(std::time::Duration::from_secs(60)));
            health.set_assigned(true);
            health.set_producer_ready(true);
            let server = attrib::metrics::serve(addr, metrics.clone(), health)
                .with_context(|| format!("metrics.listen {addr}"))?;
            eprintln!("serving /metrics on http://{}", server.addr());
            Some(server)
        }
        None => None,
    };
    let mut observer = ReplayProgress {
        bar: bar.clone(),
        metrics: config.metrics_listen.map(|_| metrics.clone()),
        last: Stats::default(),
        last_bytes: 0,
        start: std::time::Instant::now(),
    };
    let mut sink = JsonLinesSink::new(records, dlq);
    if let Some(p) = &args.shadow_out {
        let file = File::create(p).with_context(|| format!("creating {}", p.display()))?;
        sink = sink.with_shadow(Box::new(BufWriter::with_capacity(1 << 20, file)));
    }
    let summary = match attrib::parallel::resolve_jobs(args.jobs) {
        1 => replay_observed(&config, open_files(&args.files)?, &mut sink, &mut observer)?,
        jobs => attrib::parallel::replay(&config, open_files(&args.files)?, jobs, &mut sink)?,
    };
    sink.flush()?;
    bar.finish_and_clear();
    eprintln!("{summary}");
    if args.shadow_out.is_none() && summary.stats.records_shadow > 0 {
        eprintln!(
            "  note       {} shadow records computed but not written (use --shadow-out FILE)",
            summary.stats.records_shadow
        );
    }
    if !io::stderr().is_terminal() {
        io::stderr().flush()?;
    }
    Ok(())
}

fn explain(args: ExplainArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let req = attrib::explain::Request { purchase_event_id: args.purchase, user_id: args.user };
    let out = attrib::explain::explain_files(&config, &args.files, &req)?;
    let mut stdout = io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", out.to_json())?;
    } else {
        write!(stdout, "{}", out.to_text())?;
    }
    stdout.flush()?;
    if let Some(why) = &out.not_final {
        anyhow::bail!("purchase {:?} is not final at the end of the input: {why}", out.purchase_event_id);
    }
    Ok(())
}

/// The replay's progress bar (bytes, events/s) and, if served, its metrics.
struct ReplayProgress {
    bar: indicatif::ProgressBar,
    metrics: Option<Arc<Metrics>>,
    last: Stats,
    last_bytes: u64,
    start: std::time::Instant,
}

impl Observer for ReplayProgress {
    fn observe(&mut self, bytes_read: u64, engine: &Engine) {
        let events = engine.stats().events_in;
        let rate = events as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_position(bytes_read);
        self.bar.set_message(format!("{events} events, {rate:.0} events/s"));
        if let Some(m) = &self.metrics {
            m.add_stats(&self.last, engine.stats());
            m.add_bytes(bytes_read - self.last_bytes);
            m.set_state(0, engine.live_touches(), engine.shoppers(), engine.pending(), engine.ledger_len());
            self.last.clone_from(engine.stats());
            self.last_bytes = bytes_read;
        }
    }
}

fn compare(args: CompareArgs) -> Result<()> {
    let comparison = attrib::compare::compare_files(&args.paid, &args.shadow)?;
    let mut out = io::stdout().lock();
    out.write_all(comparison.table(args.top).as_bytes())?;
    if let Some(path) = &args.html {
        let page = attrib::compare::html::render(&comparison, args.top)
            .map_err(|e| anyhow::anyhow!("drawing the charts: {e}"))?;
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn gen(args: GenArgs) -> Result<()> {
    let opts = GenOptions {
        events: args.events,
        seed: args.seed,
        disorder_ms: args.disorder,
        duplicates: args.duplicates,
        invalid: args.invalid,
        refunds: args.refunds,
        users: args.users,
        creators: args.creators,
        products: args.products,
        events_per_sec: args.rate,
        ..GenOptions::default()
    };
    anyhow::ensure!((0.0..=1.0).contains(&opts.duplicates), "--duplicates must be within 0..=1");
    anyhow::ensure!((0.0..=1.0).contains(&opts.invalid), "--invalid must be within 0..=1");
    anyhow::ensure!((0.0..=1.0).contains(&opts.refunds), "--refunds must be within 0..=1");
    anyhow::ensure!(opts.events_per_sec > 0.0, "--rate must be positive");
    if let Some(dir) = &args.split {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = ["views", "clicks", "purchases", "refunds", "invalid"];
        let mut files = names
            .iter()
            .map(|n| {
                let p = dir.join(format!("{n}.jsonl"));
                File::create(&p)
                    .map(|f| BufWriter::with_capacity(1 << 20, f))
                    .with_context(|| format!("creating {}", p.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        generate(&opts, |kind, line| {
            let f = &mut files[kind_index(kind)];
            f.write_all(line)?;
            f.write_all(b"\n")
        })?;
        for mut f in files {
            f.flush()?;
        }
    } else {
        let mut out: Box<dyn Write> = match &args.out {
            Some(p) => Box::new(BufWriter::with_capacity(
                1 << 20,
                File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())),
        };
        generate(&opts, |_, line| {
            out.write_all(line)?;
            out.write_all(b"\n")
        })?;
        out.flush()?;
    }
    Ok(())
}

fn kind_index(kind: GenKind) -> usize {
    match kind {
        GenKind::View => 0,
        GenKind::Click => 1,
        GenKind::Purchase => 2,
        GenKind::Refund => 3,
        GenKind::Invalid => 4,
    }
}

//! The `attrib` command line: parses arguments and hands over to the library.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use attrib::config::Config;
use attrib::gen::{generate, GenKind, GenOptions};
use attrib::replay::replay_files;

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
    /// Write a seeded synthetic workload as JSONL.
    Gen(GenArgs),
    /// Run the streaming worker against Kafka (exactly once) until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Load JSONL files into the input topics (topic by event type, key user_id).
    Produce(ProduceArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Config file (TOML); ATTRIB__SECTION__KEY variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long)]
    log_json: bool,
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
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Input files; each is one input with its own watermark.
    #[arg(required = true)]
    files: Vec<PathBuf>,
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
        Command::Gen(args) => gen(args),
        Command::Run(args) => run_worker(args),
        Command::Produce(args) => produce(args),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
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
    attrib::worker::run(config, shutdown)?;
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let sent = attrib::worker::produce::produce(&config, &args.files, args.flush_marker)?;
    for (topic, n) in config.kafka.input_topics.iter().zip(&sent.per_topic) {
        eprintln!("{topic}: {n} messages");
    }
    if sent.markers > 0 {
        eprintln!("flush markers: {}", sent.markers);
    }
    Ok(())
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
    let summary = replay_files(&config, &args.files, records, dlq)?;
    eprintln!("{summary}");
    if !io::stderr().is_terminal() {
        io::stderr().flush()?;
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

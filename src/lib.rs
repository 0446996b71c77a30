//! # attrib
//!
//! Credits creators for the sales they drive: reads view, click, purchase and refund
//! events, joins them by shopper in event-time state, decides which creator earned each
//! sale and writes commission and reversal records, exactly once. The contract is
//! `SPEC.md`; the README explains the rules in our own words.
//!
//! # Layout
//!
//! - [`model`]: event and record types (what comes in, what goes out).
//! - [`codec`]: bytes to validated events (simd-json), records to JSON.
//! - [`engine`]: the pure, synchronous attribution engine: touch state, watermarks,
//!   attribution models, money, commission plan, order ledger. No I/O, no clock.
//! - [`config`]: TOML + environment into a checked [`config::Config`].
//! - [`replay`]: the local driver: JSONL files side by side through one engine.
//! - [`restate`]: restatement (SPEC 8.5): two configs over the same events in one pass,
//!   adjustment records for what differs.
//! - [`explain`]: `attrib explain`: one purchase's touches, verdicts, split and rates,
//!   from a replay through the same pipeline.
//! - [`compare`]: `attrib compare`: paid against shadow models (SPEC 8.3), as a table
//!   or a self-contained HTML page with `plotters` charts.
//! - [`gen`]: the seeded synthetic workload.
//! - [`worker`]: the Kafka streaming worker (`attrib run`): consumer group, transactions,
//!   state rebuilt from snapshots and an order log; and `attrib produce`.
//! - [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//! - `main.rs`: the thin command line (`replay`, `explain`, `compare`, `restate`, `gen`, `run`,
//!   `produce`).

pub mod codec;
pub mod compare;
pub mod config;
pub mod engine;
pub mod explain;
pub mod gen;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod pipeline;
pub mod replay;
pub mod restate;
pub mod routing;
#[cfg(feature = "kafka")]
pub mod worker;

//! The ceiling for the Kafka macro benchmark (issue 4): how fast a plain consumer reads
//! the input topics on this machine, doing nothing with the messages.
//!
//! A raw rdkafka `BaseConsumer` with no consumer group (a manual assignment, no
//! commits; librdkafka still wants a `group.id`, a throwaway one): it reads the high watermarks of
//! every partition of the given topics (`isolation.level=read_uncommitted`, so the real
//! end, not the last stable offset), assigns every partition from the beginning, and
//! only counts messages and value bytes until each partition has reached the high
//! watermark it read at start. The clock starts at the assignment, after the watermarks
//! were read; it prints one line:
//!
//! ```text
//! kafka_count: <n> messages, <bytes> bytes in <s> s = <rate> messages/s
//! ```
//!
//! ```sh
//! cargo run --release --example kafka_count -- --brokers 127.0.0.1:9092 --topics views,clicks,purchases,refunds
//! ```
//!
//! Consumer settings, chosen for throughput from a backlog (every one can be overridden
//! with `--set key=value`):
//!
//! | setting | value | librdkafka default | why |
//! |---|---|---|---|
//! | `fetch.min.bytes` | 1048576 | 1 | the broker answers a fetch only with at least 1 MiB (or after `fetch.wait.max.ms`): fewer, fuller fetches |
//! | `fetch.wait.max.ms` | 100 | 500 | but waits at most 100 ms for it (the end of a partition) |
//! | `max.partition.fetch.bytes` | 8388608 | 1048576 | up to 8 MiB per partition per fetch |
//! | `fetch.max.bytes` | 67108864 | 52428800 | up to 64 MiB per fetch response |
//! | `queued.min.messages` | 1000000 | 100000 | keep fetching ahead until a million messages per partition are queued ... |
//! | `queued.max.messages.kbytes` | 262144 | 65536 | ... or 256 MiB per partition: the poll loop never waits for a fetch |
//! | `enable.partition.eof` | false | false | the end is detected from positions, not from EOF events |
//! | `check.crcs` | false | false | no CRC32 of each message |
//!
//! The worker (`attrib run`) uses librdkafka's defaults for all of these; run with
//! `--set fetch.min.bytes=1 --set ...` to see what they cost here.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Counts the messages of some topics up to their current end, as fast as it can.
#[derive(Parser)]
struct Args {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topics to read, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    topics: Vec<String>,
    /// Extra or overriding librdkafka settings, `key=value`.
    #[arg(long = "set", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Throughput settings (see the module doc), then the user's.
fn consumer_config(args: &Args) -> ClientConfig {
    let mut c = ClientConfig::new();
    // librdkafka wants a group id even for a manual assignment; this one never joins a
    // group (assign, not subscribe) and never commits, so the broker never sees it.
    c.set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("kafka-count-{}", std::process::id()))
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("check.crcs", "false")
        .set("fetch.min.bytes", "1048576")
        .set("fetch.wait.max.ms", "100")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("queued.min.messages", "1000000")
        .set("queued.max.messages.kbytes", "262144");
    for (k, v) in &args.settings {
        c.set(k, v);
    }
    c
}

/// 1 when `next_offset` reaches the end of a partition still being read (which is then
/// marked done), else 0.
fn reached(topics: &[String], ends: &mut [Vec<Option<i64>>], topic: &str, partition: i32, next_offset: i64) -> usize {
    let Some(i) = topics.iter().position(|t| t == topic) else { return 0 };
    let Some(slot) = ends[i].get_mut(partition as usize) else { return 0 };
    if slot.is_some_and(|end| next_offset >= end) {
        *slot = None;
        return 1;
    }
    0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let consumer: BaseConsumer = consumer_config(&args).create().context("creating the consumer")?;
    let timeout = Duration::from_secs(30);

    // ends[topic index][partition]: the high watermark read before the clock starts;
    // `None` once the partition is done (or was empty).
    let mut ends: Vec<Vec<Option<i64>>> = Vec::new();
    let mut pending = 0usize;
    let mut expected = 0i64;
    let mut tpl = TopicPartitionList::new();
    for topic in &args.topics {
        let md = consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("metadata of {topic}"))?;
        let Some(t) = md.topics().first().filter(|t| t.error().is_none() && !t.partitions().is_empty()) else {
            bail!("topic {topic:?} does not exist");
        };
        let mut topic_ends = vec![None; t.partitions().iter().map(|p| p.id() as usize + 1).max().unwrap_or(0)];
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
            expected += high - low;
            if high > low {
                topic_ends[p.id() as usize] = Some(high);
                pending += 1;
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).context("assignment")?;
            }
        }
        ends.push(topic_ends);
    }

    let started = Instant::now();
    consumer.assign(&tpl).context("assigning partitions")?;
    let deadline = started + Duration::from_secs(args.timeout);
    let mut messages = 0u64;
    let mut bytes = 0u64;
    while pending > 0 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                messages += 1;
                bytes += m.payload_len() as u64;
                pending -= reached(&args.topics, &mut ends, m.topic(), m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => eprintln!("kafka_count: consumer error: {e}"),
            None => {
                // Nothing for 100 ms: an end behind a transaction marker has no message
                // to see, so look at the positions too.
                for e in consumer.position().context("positions")?.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        pending -= reached(&args.topics, &mut ends, e.topic(), e.partition(), o);
                    }
                }
                if Instant::now() > deadline {
                    bail!("timed out after {} s: {messages} messages read", args.timeout);
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if messages as i64 != expected {
        eprintln!("kafka_count: note: {expected} offsets between the watermarks, {messages} messages read");
    }
    println!(
        "kafka_count: {messages} messages, {bytes} bytes in {secs:.3} s = {:.0} messages/s",
        messages as f64 / secs.max(1e-9)
    );
    Ok(())
}

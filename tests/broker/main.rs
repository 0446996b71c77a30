//! The broker suite: the worker against a real Apache Kafka broker.
//!
//! Needs a broker (`scripts/kafka.sh start`; address in `ATTRIB_TEST_BROKERS`, default
//! 127.0.0.1:9092; the tests of `secure.rs` also need its SASL_SSL listener, from
//! `scripts/kafka.sh start --secure`), so every test is `#[ignore]`d in a plain
//! `cargo test`; `.ci/run` starts the broker with `--secure` and runs `cargo test
//! --release --test broker -- --ignored --test-threads=1`. Each test uses fresh random topic names, runs `attrib run` as child
//! processes, reads the output `read_committed` from the beginning once the worker has
//! committed every input offset and stopped, and compares it with `attrib replay` of the
//! same events: the same multiset of records, no `commission_id` twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use attrib::config::Config;
use attrib::gen::{generate, GenOptions};
use attrib::model::Record;
use attrib::replay::{open_files, replay, MemorySink};

mod layout;
mod prometheus;
mod recovery;
mod repartition;
mod restate;
mod secure;

const PARTITIONS: i32 = 4;

fn brokers() -> String {
    std::env::var("ATTRIB_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn events() -> u64 {
    std::env::var("ATTRIB_BROKER_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

/// One test's topics, group and workload.
struct Env {
    prefix: String,
    dir: tempfile::TempDir,
    workload: PathBuf,
    expected: Vec<Record>,
    invalid_lines: u64,
    /// Workers started, killed when the test ends (a failed assertion included).
    children: std::cell::RefCell<Vec<u32>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in self.children.borrow().iter() {
            // Exited workers: kill fails harmlessly.
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
    }
}

impl Env {
    fn new(name: &str, opts: GenOptions) -> Env {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let prefix = format!("t{}-{name}", nanos % 1_000_000_000);
        let dir = tempfile::tempdir().unwrap();
        let workload = dir.path().join("workload.jsonl");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&workload).unwrap());
        let stats = generate(&opts, |_, line| {
            file.write_all(line)?;
            file.write_all(b"\n")
        })
        .unwrap();
        file.flush().unwrap();
        drop(file);
        let mut sink = MemorySink::default();
        let summary =
            replay(&Config::default(), open_files(std::slice::from_ref(&workload)).unwrap(), &mut sink).unwrap();
        assert!(summary.stats.records_commission > 1000, "workload attributes enough purchases");
        let env = Env {
            prefix,
            dir,
            workload,
            expected: sink.records,
            invalid_lines: stats.by_kind[4],
            children: Default::default(),
        };
        env.create_topics();
        env
    }

    fn topic(&self, t: &str) -> String {
        format!("{}-{t}", self.prefix)
    }

    fn inputs(&self) -> Vec<String> {
        ["views", "clicks", "purchases", "refunds"].iter().map(|t| self.topic(t)).collect()
    }

    fn create_topics(&self) {
        let admin: AdminClient<_> = client().create().unwrap();
        let names: Vec<String> =
            ["views", "clicks", "purchases", "refunds", "commissions", "dlq"].iter().map(|t| self.topic(t)).collect();
        let topics: Vec<NewTopic> =
            names.iter().map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for r in rt.block_on(admin.create_topics(&topics, &AdminOptions::new())).unwrap() {
            r.unwrap();
        }
    }

    /// Environment for `attrib` child processes.
    fn worker_env(&self, instance: &str) -> Vec<(String, String)> {
        let inputs = self.inputs().join(",");
        [
            ("ATTRIB__KAFKA__BROKERS", brokers()),
            ("ATTRIB__KAFKA__GROUP_ID", self.topic("group")),
            ("ATTRIB__KAFKA__INPUT_TOPICS", format!("[{inputs}]")),
            ("ATTRIB__KAFKA__OUTPUT_TOPIC", self.topic("commissions")),
            ("ATTRIB__KAFKA__DLQ_TOPIC", self.topic("dlq")),
            ("ATTRIB__KAFKA__STATE_TOPIC", self.topic("state")),
            ("ATTRIB__KAFKA__TRANSACTIONAL_ID", self.topic(instance)),
            ("ATTRIB__KAFKA__COMMIT_INTERVAL", "100ms".into()),
            ("ATTRIB__KAFKA__SNAPSHOT_INTERVAL", "2s".into()),
            ("ATTRIB__KAFKA__SESSION_TIMEOUT", "6s".into()),
            ("ATTRIB__KAFKA__TRANSACTION_TIMEOUT", "10s".into()),
            ("ATTRIB__TIME__IDLE_TIMEOUT", "2s".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn attrib(&self, instance: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_attrib"));
        c.envs(self.worker_env(instance));
        c
    }

    fn produce(&self, files: &[&Path]) {
        let status = self.attrib("producer").arg("produce").arg("--flush-marker").args(files).status().unwrap();
        assert!(status.success(), "attrib produce failed");
    }

    /// Starts producing the workload at `rate` lines per second (then the flush markers);
    /// wait for the child to know it is done.
    fn produce_paced(&self, rate: u32) -> Child {
        let log = std::fs::File::create(self.dir.path().join("producer.log")).unwrap();
        let child = self
            .attrib("producer")
            .arg("produce")
            .arg("--flush-marker")
            .arg("--rate")
            .arg(rate.to_string())
            .arg(&self.workload)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.borrow_mut().push(child.id());
        child
    }

    fn start_worker(&self, instance: &str) -> Child {
        self.start_worker_with(instance, &[], &[])
    }

    /// A worker with extra environment and `attrib run` arguments.
    fn start_worker_with(&self, instance: &str, env: &[(&str, &str)], args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("{instance}.log"))).unwrap();
        let mut c = self.attrib(instance);
        c.envs(env.iter().copied()).arg("run").args(args);
        let child = c.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.children.borrow_mut().push(child.id());
        child
    }

    /// Messages in the input topics (their end offsets).
    fn input_messages(&self) -> i64 {
        let consumer: BaseConsumer = client().create().unwrap();
        let mut n = 0;
        for t in self.inputs() {
            for p in 0..PARTITIONS {
                let (low, high) = consumer.fetch_watermarks(&t, p, Duration::from_secs(10)).unwrap();
                n += high - low;
            }
        }
        n
    }

    fn worker_log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{instance}.log"))).unwrap_or_default()
    }

    /// The last lines of every worker log, for failure messages.
    fn logs_tail(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                // The first warnings say what went wrong; the tail says where it ended.
                let warnings: Vec<&str> =
                    lines.iter().copied().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).take(10).collect();
                out.push_str(&format!(
                    "--- {} (first warnings)\n{}\n--- (last lines)\n{}\n",
                    path.display(),
                    warnings.join("\n"),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ));
            }
        }
        out
    }

    /// Sum of the group's committed input offsets and of the input end offsets.
    fn progress(&self, consumer: &BaseConsumer) -> (i64, i64) {
        let mut tpl = TopicPartitionList::new();
        for t in self.inputs() {
            for p in 0..PARTITIONS {
                tpl.add_partition(&t, p);
            }
        }
        // Before the worker joins, the group does not exist yet: no progress.
        let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else { return (0, 1) };
        let mut done = 0;
        let mut end = 0;
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                done += o;
            }
            // A freshly created topic can answer "not leader" for a moment: asked again.
            let mut tries = 0;
            end += loop {
                match consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(err) if tries < 50 => {
                        tries += 1;
                        eprintln!("watermarks of {}[{}]: {err}; asking again", e.topic(), e.partition());
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(err) => panic!("watermarks of {}[{}]: {err}", e.topic(), e.partition()),
                }
            };
        }
        (done, end)
    }

    /// Waits until worker `instance`'s log holds a line containing `text`.
    fn wait_log(&self, instance: &str, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.worker_log(instance).contains(text) {
            assert!(start.elapsed() < limit, "no {text:?} in {instance}'s log after {limit:?}\n{}", self.logs_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the group has committed at least `fraction` of all input messages.
    fn wait_progress(&self, fraction: f64, limit: Duration) {
        self.wait_committed(&format!("{fraction} of the input"), limit, |done, end| {
            end > 0 && done as f64 >= fraction * end as f64
        });
    }

    /// Waits until `reached(committed, end)` over the sums of the group's committed input
    /// offsets and of the input end offsets.
    fn wait_committed(&self, what: &str, limit: Duration, reached: impl Fn(i64, i64) -> bool) {
        let consumer: BaseConsumer = client().set("group.id", self.topic("group")).create().unwrap();
        let start = Instant::now();
        loop {
            let (done, end) = self.progress(&consumer);
            if reached(done, end) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "no progress to {what}: {done} of {end} after {limit:?}\n{}",
                self.logs_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Reads a topic `read_committed` from the beginning to its end.
    fn read_all(&self, t: &str) -> Vec<(i32, i64, Vec<u8>)> {
        let topic = self.topic(t);
        let consumer: BaseConsumer = client()
            .set("isolation.level", "read_committed")
            .set("group.id", self.topic("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        // A SIGKILLed worker's open transaction holds back what read_committed readers
        // see (the last stable offset) until the coordinator aborts it after
        // `transaction.timeout.ms`; wait until every partition is stable to its end.
        // librdkafka's default isolation level is read_committed, whose watermark query
        // answers the last stable offset: ask for the real end explicitly.
        let uncommitted: BaseConsumer = client().set("isolation.level", "read_uncommitted").create().unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        let start = Instant::now();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
            loop {
                let stable = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1;
                let end = uncommitted.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1;
                if stable == end {
                    ends.insert(p, end);
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(120), "{topic}/{p}: a transaction stays open");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let start = Instant::now();
        loop {
            let pos = consumer.position().unwrap();
            let done = pos.elements().iter().all(|e| match e.offset() {
                Offset::Offset(o) => o >= ends[&e.partition()],
                _ => ends[&e.partition()] == 0,
            });
            if done {
                return out;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "reading {topic} did not reach its end");
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                out.push((m.partition(), m.offset(), m.payload().unwrap_or_default().to_vec()));
            }
        }
    }

    /// Output records, checked against replay: same multiset, no duplicate ids.
    fn assert_output_equals_replay(&self) {
        let got: Vec<Record> =
            self.read_all("commissions").iter().map(|(_, _, v)| serde_json::from_slice(v).unwrap()).collect();
        let mut ids: Vec<&str> = got.iter().map(|r| r.commission_id.as_str()).collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "{} duplicate commission_id(s)", before - ids.len());
        let key = |r: &Record| serde_json::to_string(r).unwrap();
        let mut want: Vec<String> = self.expected.iter().map(key).collect();
        let mut have: Vec<String> = got.iter().map(key).collect();
        want.sort();
        have.sort();
        let missing: Vec<&String> = want.iter().filter(|w| have.binary_search(w).is_err()).collect();
        let extra: Vec<&String> = have.iter().filter(|h| want.binary_search(h).is_err()).collect();
        if want != have {
            let kept = self.keep_failure(&missing, &extra);
            panic!(
                "output differs from replay: {} records vs {}, {} missing, {} extra\n{}\nkept in {}\n{}",
                have.len(),
                want.len(),
                missing.len(),
                extra.len(),
                missing_by_group(&missing),
                kept.display(),
                self.logs_tail()
            );
        }
    }
}

impl Env {
    /// Copies the logs and writes the missing and extra records under
    /// `target/broker-failures/<prefix>/` for a look after the test.
    fn keep_failure(&self, missing: &[&String], extra: &[&String]) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("broker-failures").join(&self.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let lines = |v: &[&String]| v.iter().map(|s| format!("{s}\n")).collect::<String>();
        std::fs::write(dir.join("missing.jsonl"), lines(missing)).unwrap();
        std::fs::write(dir.join("extra.jsonl"), lines(extra)).unwrap();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        dir
    }
}

/// Missing records per input partition group (the user's partition) with their purchase
/// time range: tells a stuck group from scattered losses.
fn missing_by_group(missing: &[&String]) -> String {
    let mut groups: BTreeMap<i32, (usize, i64, i64)> = BTreeMap::new();
    for m in missing {
        let r: Record = serde_json::from_str(m).unwrap();
        let g = java_partition(r.user_id.as_bytes());
        let e = groups.entry(g).or_insert((0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 = e.1.min(r.purchase_ts);
        e.2 = e.2.max(r.purchase_ts);
    }
    groups.iter().map(|(g, (n, lo, hi))| format!("group {g}: {n} missing, purchase_ts {lo}..={hi}\n")).collect()
}

/// The partition Kafka's default partitioner (the Java client's murmur2) gives `key`
/// among the test topics' partitions.
fn java_partition(key: &[u8]) -> i32 {
    attrib::routing::Partitioner::Murmur2.partition(key, PARTITIONS)
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over HTTP/1.0: (status, body), or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((code, body))
}

/// Prometheus text format → series (name with labels) → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers());
    c
}

fn workload(seed: u64) -> GenOptions {
    GenOptions {
        events: events(),
        seed,
        disorder_ms: 2000,
        duplicates: 0.01,
        invalid: 0.0,
        // 2 events/s of event time: 200,000 events span a day, so refunds happen.
        events_per_sec: 2.0,
        refunds: 0.2,
        ..GenOptions::default()
    }
}

fn stop(mut child: Child, limit: Duration) -> ExitStatus {
    // SIGTERM, then wait (bounded).
    unsafe_kill(child.id(), "TERM");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("worker did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

fn sigkill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

const LIMIT: Duration = Duration::from_secs(600);

/// Waits for a `--stop-at-end` worker to exit by itself.
fn wait_exit(env: &Env, mut worker: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = worker.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "--stop-at-end worker still running\n{}", env.logs_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn records(env: &Env, topic: &str) -> Vec<Record> {
    env.read_all(topic).iter().map(|(_, _, v)| serde_json::from_slice(v).unwrap()).collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn one_worker_output_equals_replay() {
    let env = Env::new("one", workload(101));
    env.produce(&[&env.workload]);
    let start = Instant::now();
    let worker = env.start_worker("w1");
    env.wait_progress(1.0, LIMIT);
    let took = start.elapsed();
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    env.assert_output_equals_replay();
    println!(
        "one worker: {} events in {:.2} s = {:.0} events/s (from process start, including group join and restore)",
        events(),
        took.as_secs_f64(),
        events() as f64 / took.as_secs_f64()
    );
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn worker_killed_three_times_output_equals_replay() {
    let env = Env::new("kill", workload(202));
    env.produce(&[&env.workload]);
    for (round, fraction) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        let worker = env.start_worker("w1");
        env.wait_progress(fraction, LIMIT);
        sigkill(worker);
        println!("killed the worker at >= {:.0}% committed (round {})", fraction * 100.0, round + 1);
    }
    let worker = env.start_worker("w1");
    // The killed worker may have committed everything already: wait for the restore too,
    // or a stop could come before the restarted worker has restored anything.
    env.wait_log("w1", "partition group restored", LIMIT);
    env.wait_progress(1.0, LIMIT);
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    env.assert_output_equals_replay();
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn three_workers_with_one_added_and_one_killed_output_equals_replay() {
    // The input arrives while the workers run (600,000 lines at 50,000/s, about 12 s), so
    // each membership change lands while there is work to move: a worker catches up with
    // a produced backlog faster than a rebalance completes.
    let lines = events() * 3;
    let env = Env::new("group", GenOptions { events: lines, ..workload(303) });
    let mut producer = env.produce_paced(50_000);
    let a = env.start_worker("wa");
    let b = env.start_worker("wb");
    let committed = |share: f64| move |done: i64, _| done as f64 >= share * lines as f64;
    env.wait_committed("20 % of the lines", LIMIT, committed(0.2));
    let c = env.start_worker("wc");
    env.wait_log("wc", "partitions assigned", LIMIT);
    env.wait_committed("40 % of the lines", LIMIT, committed(0.4));
    sigkill(b);
    assert!(producer.wait().unwrap().success(), "attrib produce failed\n{}", env.logs_tail());
    env.wait_progress(1.0, LIMIT);
    for (name, w) in [("wa", a), ("wc", c)] {
        let status = stop(w, Duration::from_secs(30));
        assert!(status.success(), "{name} exit: {status}\n{}", env.worker_log(name));
    }
    env.assert_output_equals_replay();
    // State moved between workers: some worker restored a group that had been processed,
    // from state records (a checkpoint, such as the one written at revocation) or by
    // replaying logged input.
    let moved = ["wa", "wc"].iter().any(|n| {
        env.worker_log(n).lines().any(|l| {
            l.contains("partition group restored") && !(l.contains("events=0 ") && l.contains("state_records=0 "))
        })
    });
    assert!(moved, "a partition group changed hands with its state\n{}", env.logs_tail());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn malformed_and_oversized_messages_go_to_the_dead_letter_topic() {
    let opts = GenOptions { invalid: 0.01, ..workload(404) };
    let env = Env::new("dlq", opts);
    // Oversized: 2 MB messages (over the 1 MiB default limit) on the purchases topic.
    let producer: BaseProducer = client().set("message.max.bytes", "16000000").create().unwrap();
    let huge = format!(
        r#"{{"type":"view","event_id":"huge","ts":1,"user_id":"u","creator_id":"c","pad":"{}"}}"#,
        "x".repeat(2_000_000)
    );
    let purchases = env.topic("purchases");
    for p in 0..PARTITIONS {
        producer.send(BaseRecord::<str, str>::to(&purchases).partition(p).key("u").payload(&huge)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    env.produce(&[&env.workload]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = env.start_worker_with("w1", &[("ATTRIB__METRICS__LISTEN", &listen)], &[]);
    // /healthz answers while the process lives; /readyz turns ready once partitions are
    // assigned and the producer is ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if http_get(port, "/readyz").is_some_and(|(code, _)| code == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned ready\n{}", env.logs_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(port, "/healthz").map(|(code, _)| code), Some(200));
    env.wait_progress(1.0, LIMIT);
    // Counters are exported at every commit; the commit after the last offset is done.
    let (code, text) = http_get(port, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    let sum = |name: &str, filter: &dyn Fn(&str) -> bool| -> f64 {
        m.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{")) && filter(k)).map(|(_, v)| v).sum()
    };
    let produced = env.input_messages() as f64;
    let inputs = m.get("attrib_inputs_total").copied().unwrap_or(-1.0);
    let used = sum("attrib_events_total", &|k| !k.contains("outcome=\"too_late\""));
    let dead_letters = sum("attrib_dead_letters_total", &|_| true);
    assert_eq!(inputs, produced, "attrib_inputs_total counts every message produced");
    assert_eq!(used + dead_letters, produced, "processed + duplicates + dead letters = messages produced");
    assert_eq!(
        sum("attrib_dead_letters_total", &|k| k.contains("reason=\"too_large\"")),
        f64::from(PARTITIONS),
        "oversized messages counted"
    );
    assert!(sum("attrib_records_total", &|_| true) > 0.0 && m.contains_key("attrib_live_touches{partition=\"0\"}"));
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    env.assert_output_equals_replay();
    let dead: Vec<serde_json::Value> =
        env.read_all("dlq").iter().map(|(_, _, v)| serde_json::from_slice(v).unwrap()).collect();
    let too_large = dead.iter().filter(|d| d["reason"] == "too_large").count();
    assert_eq!(too_large, PARTITIONS as usize, "every oversized message dead-lettered");
    assert_eq!(dead.len() as u64, env.invalid_lines + PARTITIONS as u64, "every invalid line dead-lettered, once");
    for d in &dead {
        assert!(d["topic"].is_string() && d["partition"].is_i64() && d["offset"].is_i64(), "source position: {d}");
    }
    // Dead letters are logged at a sampled rate, never one line each.
    let logged = env.worker_log("w1").lines().filter(|l| l.contains("dead letter") && l.contains("reason=")).count();
    assert!((1..50).contains(&logged), "{logged} dead-letter log lines for {} dead letters", dead.len());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn sigterm_exits_cleanly_and_a_restart_continues() {
    let env = Env::new("term", workload(505));
    env.produce(&[&env.workload]);
    let worker = env.start_worker("w1");
    env.wait_progress(0.5, LIMIT);
    let start = Instant::now();
    let status = stop(worker, Duration::from_secs(15));
    assert!(status.success(), "clean exit on SIGTERM: {status}\n{}", env.worker_log("w1"));
    println!("SIGTERM to exit: {:?}", start.elapsed());
    assert!(env.worker_log("w1").contains("shutting down"));
    let worker = env.start_worker("w1");
    env.wait_progress(1.0, LIMIT);
    let status = stop(worker, Duration::from_secs(15));
    assert!(status.success(), "worker exit: {status}");
    env.assert_output_equals_replay();
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn transactions_off_catch_up_run_under_back_pressure_output_equals_replay() {
    // kafka.exactly_once = false (at least once) with no crash gives the same records;
    // --stop-at-end exits 0 by itself once the input is consumed and every input is idle.
    // The live-touch limit (50,000; the groups end with ~165,000) puts the worker under
    // back-pressure for most of the run: it slows down, nothing is dropped.
    let env = Env::new("noeos", workload(606));
    env.produce(&[&env.workload]);
    let worker = env.start_worker_with(
        "w1",
        &[("ATTRIB__KAFKA__EXACTLY_ONCE", "false"), ("ATTRIB__LIMITS__MAX_LIVE_TOUCHES", "50000")],
        &["--stop-at-end"],
    );
    let status = wait_exit(&env, worker);
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    let log = env.worker_log("w1");
    assert!(log.contains("caught up") && log.contains("events_per_sec="), "catch-up line logged\n{log}");
    assert!(log.contains("state limit reached: back-pressure"), "back-pressure engaged\n{}", env.logs_tail());
    let consumer: BaseConsumer = client().set("group.id", env.topic("group")).create().unwrap();
    let (done, end) = env.progress(&consumer);
    assert_eq!(done, end, "every input offset committed by the consumer");
    env.assert_output_equals_replay();
}

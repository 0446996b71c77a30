//! Recovery beyond a clean crash (issue 9): a worker stopped (not killed) for longer than
//! the session timeout among two, SIGKILLs with transactions off, a plan change across a
//! SIGKILL (SPEC 8.1), and state written by the previous layout.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::layout::{assert_plan_change, create_topic, plan_change_inputs};
use super::*;

/// No `kafka.transactional_id`: each worker claims a slot of the default id, as deployed.
const DEFAULT_ID: (&str, &str) = ("ATTRIB__KAFKA__TRANSACTIONAL_ID", "");

/// How many lines of `instance`'s log contain `text`.
fn log_lines(env: &Env, instance: &str, text: &str) -> usize {
    env.worker_log(instance).lines().filter(|l| l.contains(text)).count()
}

/// Polls (every 200 ms, at most `limit`) until `done` holds; false if it never did.
fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `events=` of every `partition group restored` line of a log.
fn restored_events(log: &str) -> Vec<u64> {
    restored_field(log, "events=")
}

/// The number after `field` (such as `events=`) in every `partition group restored` line.
fn restored_field(log: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("partition group restored"))
        .filter_map(|l| l.split(field).nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_worker_stopped_past_the_session_timeout_is_fenced_or_rejoins_and_output_equals_replay() {
    // Two workers, default ids; one is SIGSTOPped for 40 s (the session timeout is 6 s), so
    // the group gives its partitions to the other while it still holds an open
    // transaction; then it is continued. Its late commit must not land (KIP-447 fencing
    // by generation, or the coordinator's abort of its timed-out transaction), and it
    // either exits as fenced or rejoins cleanly.
    let started = Instant::now();
    let env = Env::new("zombie", workload(707));
    env.produce(&[&env.workload]);
    let a = env.start_worker_with("wa", &[DEFAULT_ID], &[]);
    let mut b = env.start_worker_with("wb", &[DEFAULT_ID], &[]);
    let both_working =
        poll_until(LIMIT, || ["wa", "wb"].iter().all(|n| log_lines(&env, n, "partition group restored") > 0));
    assert!(both_working, "both workers own partition groups\n{}", env.logs_tail());
    env.wait_progress(0.2, LIMIT);
    let assigned_before = log_lines(&env, "wa", "partitions assigned");
    unsafe_kill(b.id(), "STOP");
    let stopped = Instant::now();
    println!("SIGSTOP to wb at {:.1} s", started.elapsed().as_secs_f64());
    // The group notices (session timeout) and hands every group to wa.
    let taken_over = poll_until(Duration::from_secs(40), || {
        let log = env.worker_log("wa");
        let assigned: Vec<&str> = log.lines().filter(|l| l.contains("partitions assigned")).collect();
        assigned.len() > assigned_before && assigned.last().is_some_and(|l| l.contains("groups={0, 1, 2, 3}"))
    });
    let took_over_after = stopped.elapsed();
    // The deliberate part: a zombie stays stopped well past the session timeout.
    std::thread::sleep(Duration::from_secs(40).saturating_sub(stopped.elapsed()));
    unsafe_kill(b.id(), "CONT");
    assert!(taken_over, "wa took over every group while wb was stopped\n{}", env.logs_tail());
    println!("wa took over every group {:.1} s after the SIGSTOP; SIGCONT at 40 s", took_over_after.as_secs_f64());
    // Woken, wb finds itself out of the group: it exits (fenced) or rejoins.
    let rejoins_before = log_lines(&env, "wb", "partitions assigned");
    let mut exited = None;
    let settled = poll_until(Duration::from_secs(120), || {
        exited = b.try_wait().unwrap();
        exited.is_some() || log_lines(&env, "wb", "partitions assigned") > rejoins_before
    });
    assert!(settled, "the woken worker neither exited nor rejoined\n{}", env.logs_tail());
    env.wait_progress(1.0, LIMIT);
    let status = stop(a, Duration::from_secs(30));
    assert!(status.success(), "wa exit: {status}\n{}", env.logs_tail());
    // An exited child is reaped already: no signal to send.
    let zombie = match exited {
        Some(status) => status,
        None => stop(b, Duration::from_secs(30)),
    };
    let wb_log = env.worker_log("wb");
    if zombie.success() {
        let failed =
            wb_log.lines().find(|l| l.contains("transaction failed") || l.contains("commit before revocation"));
        println!("the woken worker rejoined the group and stopped cleanly; its late commit: {failed:?}");
    } else {
        let error = wb_log.lines().find(|l| l.contains("worker failed")).unwrap_or_default().to_string();
        let fenced = ["fenced", "Fenced", "epoch"].iter().any(|w| error.contains(w));
        assert!(fenced, "the woken worker exits only as fenced: {zombie}\n{wb_log}");
        println!("the woken worker exited fenced ({zombie}): {error}");
    }
    env.assert_output_equals_replay();
    println!("zombie test: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn at_least_once_worker_killed_three_times_restores_and_misses_no_commission() {
    // kafka.exactly_once = false: a crash repeats the records since the last offset commit
    // (duplicates allowed), but every record of replay is there, and any record written is
    // exactly replay's record of that commission_id.
    let started = Instant::now();
    let env = Env::new("alo", workload(808));
    env.produce(&[&env.workload]);
    let alo = ("ATTRIB__KAFKA__EXACTLY_ONCE", "false");
    for (round, fraction) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        let name = format!("w{}", round + 1);
        let worker = env.start_worker_with(&name, &[alo], &[]);
        // Killed only once it has restored every group (a round whose fraction is already
        // passed still kills a worker that has rebuilt its state and started over).
        let restored = poll_until(LIMIT, || restored_events(&env.worker_log(&name)).len() >= PARTITIONS as usize);
        assert!(restored, "{name} restored every group\n{}", env.logs_tail());
        env.wait_progress(fraction, LIMIT);
        sigkill(worker);
        println!("killed {name} at >= {:.0}% committed ({:.1} s)", fraction * 100.0, started.elapsed().as_secs_f64());
    }
    let worker = env.start_worker_with("w4", &[alo], &["--stop-at-end"]);
    let status = wait_exit(&env, worker);
    assert!(status.success(), "w4 exit: {status}\n{}", env.logs_tail());
    for name in ["w2", "w3", "w4"] {
        let log = env.worker_log(name);
        assert!(log.contains("kafka.exactly_once = false"), "{name} ran at least once\n{log}");
        let events = restored_events(&log);
        assert!(events.len() >= PARTITIONS as usize, "{name} restored every group\n{log}");
        assert!(events.iter().any(|&e| e > 0), "{name} restored state that had been processed\n{log}");
    }

    let got = records(&env, "commissions");
    let want: BTreeMap<&str, &Record> = env.expected.iter().map(|r| (r.commission_id.as_str(), r)).collect();
    assert_eq!(want.len(), env.expected.len(), "replay writes each commission_id once");
    let mut seen = BTreeSet::new();
    for r in &got {
        let Some(expected) = want.get(r.commission_id.as_str()) else {
            panic!("a record replay does not write: {r:?}\n{}", env.logs_tail())
        };
        assert_eq!(r, *expected, "the record written differs from replay's of the same commission_id");
        seen.insert(r.commission_id.as_str());
    }
    let missing: Vec<String> =
        want.iter().filter(|(id, _)| !seen.contains(**id)).map(|(_, r)| serde_json::to_string(r).unwrap()).collect();
    if !missing.is_empty() {
        let missing: Vec<&String> = missing.iter().collect();
        let kept = env.keep_failure(&missing, &[]);
        panic!(
            "{} of {} commission_ids missing\n{}kept in {}\n{}",
            missing.len(),
            want.len(),
            missing_by_group(&missing),
            kept.display(),
            env.logs_tail()
        );
    }
    println!(
        "at least once: {} records written for {} of replay ({} repeated); {:.1} s",
        got.len(),
        want.len(),
        got.len() - want.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_changed_commission_plan_applies_after_a_sigkill_and_reversals_keep_their_rate() {
    // As the clean-restart test in layout.rs, but the first worker is SIGKILLed once its
    // 200 commissions are committed: the restart rebuilds from the state topic under the
    // old plan, logs the change, then pays at the new one.
    let started = Instant::now();
    let env = Env::new("cfgkill", workload(909));
    let (first, second) = plan_change_inputs(&env);
    env.produce(&[&first]);
    let w1 = env.start_worker_with("w1", &[("ATTRIB__COMMISSION__DEFAULT_RATE_BPS", "1000")], &[]);
    env.wait_progress(1.0, LIMIT);
    // Offsets are committed before the last purchases are final (the watermark waits
    // for idle inputs): wait for the records themselves.
    let mut written = 0;
    let all_written = poll_until(Duration::from_secs(120), || {
        written = records(&env, "commissions").len();
        written >= 200
    });
    assert!(all_written && written == 200, "first run committed its 200 commissions ({written})\n{}", env.logs_tail());
    sigkill(w1);
    env.produce(&[&second]);
    // The same transactional id: the restart fences what the killed worker left open.
    let w1_id = env.topic("w1");
    let w2 = env.start_worker_with(
        "w2",
        &[("ATTRIB__COMMISSION__DEFAULT_RATE_BPS", "2000"), ("ATTRIB__KAFKA__TRANSACTIONAL_ID", &w1_id)],
        &["--stop-at-end"],
    );
    let status = wait_exit(&env, w2);
    assert!(status.success(), "second run: {status}\n{}", env.worker_log("w2"));
    let events = restored_events(&env.worker_log("w2"));
    assert!(events.iter().sum::<u64>() >= 400, "the restart rebuilt the first run's state: {events:?}");
    assert_plan_change(&env, "w2");
    println!("plan change across a SIGKILL: {:.1} s", started.elapsed().as_secs_f64());
}

// Layout 1 (attrib 0.1, before commit 708cc95): state records keyed by the partition
// number, each value a tag byte (`L` order-log entry, `S` snapshot chunk), the sequence
// number (u64, big endian), then CBOR; input offsets committed with `snap=<offset of the
// snapshot's first chunk>;seq=<n>`. These mirror its types for serde.

/// Layout 1's `Step`.
#[derive(Serialize)]
enum V1Step {
    Advance { input: u8, until: i64, now_ms: i64 },
}

/// Layout 1's `watermark::Input`.
#[derive(Serialize)]
struct V1Input {
    max_ts: i64,
    finished: bool,
    idle: bool,
}

/// Layout 1's `Watermarks`.
#[derive(Serialize)]
struct V1Watermarks {
    max_out_of_orderness: i64,
    inputs: Vec<V1Input>,
}

/// Layout 1's `SnapshotState`.
#[derive(Serialize)]
struct V1Snapshot {
    globals: Vec<u8>,
    shoppers: Vec<Vec<u8>>,
    watermarks: V1Watermarks,
    positions: Vec<Option<i64>>,
    seq: u64,
}

fn cbor(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// What layout 1 wrote at a group's first commit, having read `positions[i]` messages of
/// input `i`: order-log entry 1, then a one-chunk snapshot at seq 1 (the engine's globals
/// left empty: their 0.1 encoding is not reconstructed; the refusal never reads them).
fn layout1_records(positions: &[i64], now_ms: i64) -> [Vec<u8>; 2] {
    let steps: Vec<V1Step> =
        positions.iter().enumerate().map(|(i, &until)| V1Step::Advance { input: i as u8, until, now_ms }).collect();
    let mut log = vec![b'L'];
    log.extend_from_slice(&1u64.to_be_bytes());
    log.extend(cbor(&steps));
    let snapshot = V1Snapshot {
        globals: Vec::new(),
        shoppers: Vec::new(),
        watermarks: V1Watermarks {
            max_out_of_orderness: 5000,
            inputs: positions.iter().map(|_| V1Input { max_ts: now_ms, finished: false, idle: false }).collect(),
        },
        positions: positions.iter().map(|&p| Some(p)).collect(),
        seq: 1,
    };
    let mut chunk = vec![b'S'];
    chunk.extend_from_slice(&1u64.to_be_bytes());
    chunk.extend_from_slice(&0u32.to_be_bytes()); // index
    chunk.extend_from_slice(&1u32.to_be_bytes()); // count
    chunk.extend(cbor(&snapshot));
    [log, chunk]
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn state_written_by_layout_1_is_refused_naming_the_layout_and_the_way_out() {
    // A deployment of attrib 0.1 read part of the inputs: its state topic and its group's
    // offsets (layout 1 metadata) are there. This release must refuse at start, saying
    // what it found and what to do (README: "State topic"), and write nothing.
    let env = Env::new("oldstate", workload(1010));
    env.produce(&[&env.workload]);
    let state_topic = env.topic("state");
    create_topic(&state_topic, PARTITIONS);
    let producer: BaseProducer = client().create().unwrap();
    let consumer: BaseConsumer = client().set("group.id", env.topic("group")).create().unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut offsets = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let positions: Vec<i64> = env
            .inputs()
            .iter()
            .map(|t| consumer.fetch_watermarks(t, p, Duration::from_secs(10)).unwrap().1 / 2)
            .collect();
        let key = p.to_string();
        for value in layout1_records(&positions, now_ms) {
            producer
                .send(BaseRecord::to(&state_topic).partition(p).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        // The log entry is offset 0 of the fresh partition, the snapshot chunk offset 1.
        let meta = "snap=1;seq=1";
        for (t, pos) in env.inputs().iter().zip(&positions) {
            offsets.add_partition_offset(t, p, Offset::Offset(*pos)).unwrap();
            offsets.find_partition(t, p).unwrap().set_metadata(meta);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();

    let started = Instant::now();
    let worker: Child = env.start_worker("w1");
    let status = wait_exit(&env, worker);
    let took = started.elapsed();
    let log = env.worker_log("w1");
    assert!(!status.success(), "refused: {status}\n{log}");
    assert!(took < Duration::from_secs(60), "refused at start, not after a timeout ({took:?})\n{log}");
    let error = log.lines().find(|l| l.contains("attrib: error")).unwrap_or_default();
    for words in ["older attrib", "layout 1", "kafka.group_id", "kafka.state_topic"] {
        assert!(error.contains(words), "the error says {words:?}: {error}\n{log}");
    }
    // Nothing written, nothing overwritten: the old offsets and their metadata stay.
    assert!(env.read_all("commissions").is_empty(), "no record written");
    let mut tpl = TopicPartitionList::new();
    for t in env.inputs() {
        tpl.add_partition(&t, 0);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    for e in committed.elements() {
        assert_eq!(e.metadata(), "snap=1;seq=1", "{}[0] keeps layout 1's commit", e.topic());
    }
    println!("layout 1 refused in {:.1} s: {error}", took.as_secs_f64());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_worker_joining_moves_groups_without_the_other_reloading_the_ones_it_keeps() {
    // One worker processes part of the input, a second joins: the rebalance revokes all
    // four groups from the first (the eager `range` protocol) and gives it two back. Those
    // two are kept in memory (their committed offsets, log sequence and state partition
    // are what it left), never rebuilt; only the two that move are restored, by the new
    // worker, with their state.
    let env = Env::new("keep", workload(808));
    env.produce(&[&env.workload]);
    let a = env.start_worker("wa");
    env.wait_progress(0.3, LIMIT);
    let b = env.start_worker("wb");
    // Both settled: the second has its groups, the first has its other two back (four
    // restored at the start, then two kept or rebuilt).
    let settled = || {
        log_lines(&env, "wb", "partition group restored") > 0
            && log_lines(&env, "wa", "partition group kept") + log_lines(&env, "wa", "partition group restored") >= 6
    };
    assert!(poll_until(LIMIT, settled), "the rebalance settled\n{}", env.logs_tail());
    env.wait_progress(1.0, LIMIT);
    for (name, w) in [("wa", a), ("wb", b)] {
        let status = stop(w, Duration::from_secs(30));
        assert!(status.success(), "{name} exit: {status}\n{}", env.worker_log(name));
    }
    let (wa, wb) = (env.worker_log("wa"), env.worker_log("wb"));
    assert!(log_lines(&env, "wa", "partition group kept") >= 2, "the first worker kept what it still owns\n{wa}");
    assert!(
        restored_events(&wa).iter().all(|&e| e == 0),
        "the first worker rebuilt nothing it had processed: {:?}\n{wa}",
        restored_events(&wa)
    );
    assert!(
        restored_events(&wb).iter().any(|&e| e > 0),
        "the groups that moved came with their state: {:?}\n{wb}",
        restored_events(&wb)
    );
    env.assert_output_equals_replay();
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn restores_longer_than_max_poll_interval_do_not_evict_the_worker() {
    // A worker with checkpoints an hour apart commits 600,000 events as order-log entries
    // over its first checkpoint, and is killed: the next one rebuilds every group by
    // replaying them, for longer in all than its max.poll.interval.ms (3 s, with a 3 s
    // session: librdkafka wants the interval at least the session timeout, and
    // scripts/kafka.sh lets sessions go down to 1 s). Restores run on the restore thread
    // while the poll thread keeps polling, so the worker is never evicted for not
    // polling: it joins once and the output equals replay.
    let env = Env::new("longrestore", GenOptions { events: events() * 3, ..workload(1111) });
    env.produce(&[&env.workload]);
    let hour = [("ATTRIB__KAFKA__SNAPSHOT_INTERVAL", "1h")];
    let first = env.start_worker_with("w1", &hour, &[]);
    env.wait_progress(1.0, LIMIT);
    sigkill(first);
    let second = env.start_worker_with(
        "w2",
        &[
            hour[0],
            ("ATTRIB__KAFKA__SESSION_TIMEOUT", "3s"),
            // Every client of the worker gets [kafka.client], and librdkafka checks the
            // pair in each consumer (the restore consumer's session default is 45 s);
            // heartbeats well inside the session.
            ("ATTRIB__KAFKA__CLIENT__SESSION_TIMEOUT_MS", "3000"),
            ("ATTRIB__KAFKA__CLIENT__HEARTBEAT_INTERVAL_MS", "500"),
            ("ATTRIB__KAFKA__CLIENT__MAX_POLL_INTERVAL_MS", "3000"),
        ],
        &["--stop-at-end"],
    );
    let status = wait_exit(&env, second);
    let log = env.worker_log("w2");
    assert!(status.success(), "w2 exit: {status}\n{log}");
    let restored = restored_events(&log);
    let took: u64 = restored_field(&log, "took_ms=").iter().sum();
    assert!(
        restored.iter().sum::<u64>() > events() * 2,
        "the groups were rebuilt by replaying the logged input: {restored:?}\n{log}"
    );
    assert!(took > 3000, "the restores took {took} ms, not longer than max.poll.interval.ms: the test shows nothing");
    assert!(!log.contains("maximum poll interval"), "evicted for not polling\n{log}");
    assert_eq!(log_lines(&env, "w2", "partitions assigned"), 1, "one assignment, no rejoin\n{log}");
    env.assert_output_equals_replay();
}

//! The worker's state across config changes, workers sharing a host, shadow records, and
//! inputs that are not keyed by shopper (SPEC 8.1, 8.3, 8.6).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::*;

pub(crate) fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<_> = client().create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).unwrap() {
        r.unwrap();
    }
}

/// The plan-change workload: 200 click+purchase pairs (`first`), then an hour later in
/// event time 200 more and refunds of 20 of the first orders (`second`), as files.
pub(crate) fn plan_change_inputs(env: &Env) -> (PathBuf, PathBuf) {
    // Two days ago: event times must not run ahead of the clock (time.max_future_skew).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let t0: i64 = now - 2 * 86_400_000;
    let pairs = |from: usize, at: i64| -> String {
        let mut s = String::new();
        for i in from..from + 200 {
            let ts = at + i as i64 * 1000;
            s.push_str(&format!(
                r#"{{"type":"click","event_id":"k-{i}","ts":{ts},"user_id":"cu-{i}","creator_id":"cc-{c}","product_id":"cp-1","surface":"link"}}"#,
                c = i % 7
            ));
            s.push('\n');
            s.push_str(&format!(
                r#"{{"type":"purchase","event_id":"o-{i}","ts":{},"user_id":"cu-{i}","order_id":"cord-{i}","currency":"USD","items":[{{"product_id":"cp-1","quantity":1,"unit_price":10000,"category":"x"}}]}}"#,
                ts + 500
            ));
            s.push('\n');
        }
        s
    };
    let first = env.dir.path().join("first.jsonl");
    std::fs::write(&first, pairs(0, t0)).unwrap();
    let mut second_text = pairs(200, t0 + 3_600_000);
    for i in 0..20 {
        let ts = t0 + 3_600_000 + 500_000 + i * 1000;
        second_text.push_str(&format!(
            r#"{{"type":"refund","event_id":"r-{i}","ts":{ts},"user_id":"cu-{i}","order_id":"cord-{i}","items":[{{"product_id":"cp-1","quantity":1}}]}}"#
        ));
        second_text.push('\n');
    }
    let second = env.dir.path().join("second.jsonl");
    std::fs::write(&second, second_text).unwrap();
    (first, second)
}

/// After the plan change from 1000 to 2000 bps between `first` and `second` (see
/// [`plan_change_inputs`]): the restarted worker (`restarted`'s log) named the changed
/// key, the first 200 purchases are paid at the old rate, the next 200 at the new one,
/// and the 20 refunds reverse at the old rate; each record once.
pub(crate) fn assert_plan_change(env: &Env, restarted: &str) {
    let log = env.worker_log(restarted);
    assert!(
        log.lines().any(|l| l.contains("config differs") && l.contains("default_rate_bps")),
        "the restarted worker names the changed key\n{log}"
    );
    let got = records(env, "commissions");
    let rate_of = |r: &Record| -> (u32, i64) { (r.rate_bps, r.commission_minor) };
    let mut first_paid = 0;
    let mut second_paid = 0;
    let mut reversals = 0;
    for r in &got {
        let n: usize = r.purchase_event_id.trim_start_matches("o-").parse().unwrap();
        match r.kind.as_str() {
            "commission" if n < 200 => {
                assert_eq!(rate_of(r), (1000, 1000), "written before the restart: {r:?}");
                first_paid += 1;
            }
            "commission" => {
                assert_eq!(rate_of(r), (2000, 2000), "final after the restart: the new plan: {r:?}");
                second_paid += 1;
            }
            "reversal" => {
                assert!(n < 20);
                assert_eq!(rate_of(r), (1000, -1000), "a reversal takes back at the commission's rate: {r:?}");
                reversals += 1;
            }
            other => panic!("unexpected record kind {other}"),
        }
    }
    assert_eq!((first_paid, second_paid, reversals), (200, 200, 20), "{}", env.logs_tail());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_changed_commission_plan_applies_after_a_restart_and_reversals_keep_their_rate() {
    // The first 400 events paid at 1000 bps; the rest after a clean restart at 2000 bps.
    let env = Env::new("cfg", workload(111));
    let (first, second) = plan_change_inputs(&env);
    env.produce(&[&first]);
    let w = env.start_worker_with("w1", &[("ATTRIB__COMMISSION__DEFAULT_RATE_BPS", "1000")], &["--stop-at-end"]);
    let status = wait_exit(&env, w);
    assert!(status.success(), "first run: {status}\n{}", env.worker_log("w1"));
    env.produce(&[&second]);
    let w = env.start_worker_with("w2", &[("ATTRIB__COMMISSION__DEFAULT_RATE_BPS", "2000")], &["--stop-at-end"]);
    let status = wait_exit(&env, w);
    assert!(status.success(), "second run: {status}\n{}", env.worker_log("w2"));
    assert_plan_change(&env, "w2");
}

/// Two workers with the default transactional id and a linear shadow model on one host,
/// run to the end: the env, replay's shadow records and the shadow records written.
fn two_workers_with_a_shadow_model() -> (Env, Vec<Record>, Vec<Record>) {
    // No kafka.transactional_id: each worker claims its own slot of the default id, so
    // neither fences the other. A shadow model writes to its own topic only.
    let env = Env::new("host", workload(222));
    create_topic(&env.topic("shadow"), PARTITIONS);
    let config = Config::from_toml("[attribution]\nshadow_models = [\"linear\"]\n").unwrap();
    let mut sink = MemorySink::default();
    replay(&config, open_files(std::slice::from_ref(&env.workload)).unwrap(), &mut sink).unwrap();
    assert_eq!(sink.records.len(), env.expected.len(), "shadow models never change the paid output");
    assert!(!sink.shadow.is_empty());
    env.produce(&[&env.workload]);
    let shadow_topic = env.topic("shadow");
    let extra = [
        ("ATTRIB__KAFKA__TRANSACTIONAL_ID", ""),
        ("ATTRIB__ATTRIBUTION__SHADOW_MODELS", "[linear]"),
        ("ATTRIB__KAFKA__SHADOW_TOPIC", shadow_topic.as_str()),
    ];
    let a = env.start_worker_with("wa", &extra, &[]);
    let b = env.start_worker_with("wb", &extra, &[]);
    env.wait_progress(1.0, LIMIT);
    for (name, w) in [("wa", a), ("wb", b)] {
        let status = stop(w, Duration::from_secs(30));
        assert!(status.success(), "{name} exit: {status}\n{}", env.logs_tail());
    }
    let ids: Vec<String> = ["wa", "wb"]
        .iter()
        .filter_map(|n| {
            let log = env.worker_log(n);
            let line = log.lines().find(|l| l.contains("claimed a transactional id slot"))?.to_string();
            Some(line.split("transactional_id=").nth(1)?.split_whitespace().next()?.to_string())
        })
        .collect();
    assert_eq!(ids.len(), 2, "both workers claimed a slot\n{}", env.logs_tail());
    assert_ne!(ids[0], ids[1], "distinct transactional ids on one host");
    env.assert_output_equals_replay();
    let written = records(&env, "shadow");
    (env, sink.shadow, written)
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn two_workers_on_one_host_with_default_ids_and_shadow_records() {
    let (env, replayed, shadow) = two_workers_with_a_shadow_model();
    // Shadow records only on the shadow topic, every one of them from the shadow model.
    assert!(shadow.len() > replayed.len() / 2, "shadow records written ({})", shadow.len());
    assert!(shadow.iter().all(|r| r.shadow && r.model == attrib::model::Model::Linear));
    assert!(records(&env, "commissions").iter().all(|r| !r.shadow), "no shadow record on the paid topic");
    // Exactly replay's shadow records. (Linear credits every touch, so this also pins the
    // touch cap: the hottest shoppers pass `max_touches_per_user`, and the cap once let
    // two workers credit them one touch fewer than replay.)
    let key = |r: &Record| serde_json::to_string(r).unwrap();
    let mut want: Vec<String> = replayed.iter().map(key).collect();
    let mut have: Vec<String> = shadow.iter().map(key).collect();
    want.sort();
    have.sort();
    if have != want {
        let (only_replay, only_topic) = sorted_difference(&want, &have);
        panic!(
            "shadow topic differs from replay's shadow records ({} vs {}): {} only in replay, {} only on the topic; first of each:\n{}\n{}",
            want.len(),
            have.len(),
            only_replay.len(),
            only_topic.len(),
            only_replay.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            only_topic.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        );
    }
}

/// The elements only in `a` and only in `b`, both sorted.
fn sorted_difference<'a>(a: &'a [String], b: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    loop {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), Some(y)) if x > y => {
                only_b.push(y);
                j += 1;
            }
            (Some(x), _) => {
                only_a.push(x);
                i += 1;
            }
            (None, Some(y)) => {
                only_b.push(y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (only_a, only_b)
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn purchases_keyed_by_order_id_are_dead_lettered_as_misrouted_and_never_joined() {
    let mut env = Env::new("route", workload(333));
    let status = env
        .attrib("producer")
        .args(["produce", "--flush-marker", "--key", "order_id"])
        .arg(&env.workload)
        .status()
        .unwrap();
    assert!(status.success());
    // librdkafka's murmur2_random placed each purchase where the Java client would.
    let consumer: BaseConsumer = client().set("group.id", env.topic("check")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&env.topic("purchases"), p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let end: i64 = (0..PARTITIONS)
        .map(|p| consumer.fetch_watermarks(&env.topic("purchases"), p, Duration::from_secs(10)).unwrap().1)
        .sum();
    let mut seen = 0;
    while seen < end {
        let Some(m) = consumer.poll(Duration::from_secs(10)) else { panic!("purchases topic read stalled") };
        let m = m.unwrap();
        seen += 1;
        let key = m.key().unwrap();
        assert_eq!(m.partition(), java_partition(key), "Java partitioner placement");
    }

    // What a correct worker writes: the records of every event except the misrouted ones.
    let part = |k: &str| java_partition(k.as_bytes());
    let text = std::fs::read_to_string(&env.workload).unwrap();
    let mut kept = String::new();
    let mut misrouted = 0u64;
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                kept.push_str(line);
                kept.push('\n');
                continue;
            }
        };
        let order = v["order_id"].as_str();
        let user = v["user_id"].as_str();
        if let (Some(o), Some(u), Some("purchase" | "refund")) = (order, user, v["type"].as_str()) {
            if part(o) != part(u) {
                misrouted += 1;
                continue;
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    assert!(misrouted > 1000, "the layout misroutes most purchases ({misrouted})");
    let kept_path = env.dir.path().join("kept.jsonl");
    std::fs::write(&kept_path, kept).unwrap();
    let mut sink = MemorySink::default();
    replay(&Config::default(), open_files(std::slice::from_ref(&kept_path)).unwrap(), &mut sink).unwrap();
    env.expected = sink.records;

    let worker = env.start_worker("w1");
    env.wait_progress(1.0, LIMIT);
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    env.assert_output_equals_replay();
    let dead: Vec<serde_json::Value> =
        env.read_all("dlq").iter().map(|(_, _, v)| serde_json::from_slice(v).unwrap()).collect();
    let n = dead.iter().filter(|d| d["reason"] == "misrouted").count() as u64;
    assert_eq!(n, misrouted, "every misrouted purchase and refund dead-lettered, once");
    let logged = env.worker_log("w1").lines().filter(|l| l.contains("dead letter") && l.contains("misrouted")).count();
    assert!((1..50).contains(&logged), "misrouted events logged at a sampled rate ({logged} lines)");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn inputs_with_different_partition_counts_are_refused_naming_them() {
    // Touches in 4 partitions, purchases and refunds (keyed by order) in 3, without
    // kafka.repartition.
    let env = Env::new("counts", workload(444));
    let purchases3 = env.topic("purchases3");
    let refunds3 = env.topic("refunds3");
    create_topic(&purchases3, 3);
    create_topic(&refunds3, 3);
    // A new topic reaches every client's metadata a moment after it is created.
    let probe: BaseConsumer = client().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in [&purchases3, &refunds3] {
        while probe
            .fetch_metadata(Some(t), Duration::from_secs(5))
            .map_or(true, |md| md.topics().first().is_none_or(|m| m.error().is_some() || m.partitions().len() != 3))
        {
            assert!(Instant::now() < deadline, "{t} never appeared in the metadata");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let inputs = format!("[{},{},{purchases3},{refunds3}]", env.topic("views"), env.topic("clicks"));
    let started = Instant::now();
    let w = env.start_worker_with("w1", &[("ATTRIB__KAFKA__INPUT_TOPICS", inputs.as_str())], &[]);
    let status = wait_exit(&env, w);
    assert!(!status.success(), "refused to start");
    assert!(started.elapsed() < Duration::from_secs(30), "refused at start, not after a timeout");
    let log = env.worker_log("w1");
    assert!(log.contains(&format!("{purchases3} (3 partitions)")), "names the topic and its count\n{log}");
    assert!(log.contains(&format!("{refunds3} (3 partitions)")), "names the topic and its count\n{log}");
    assert!(log.contains(&format!("{} (4 partitions)", env.topic("views"))), "names the others\n{log}");
    assert!(log.contains("kafka.repartition = true"), "points to kafka.repartition\n{log}");
    assert!(!log.contains("not in this release"), "{log}");
}

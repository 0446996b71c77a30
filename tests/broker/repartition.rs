//! Inputs keyed any way, re-keyed by the worker's own re-key stage (SPEC 8.6,
//! `kafka.repartition`): touches keyed by `user_id` in 4 partitions beside purchases and
//! refunds keyed by `order_id` in 3, produced with Kafka's default (murmur2)
//! partitioner. The output must equal replay of the same events, across a SIGKILL and
//! with two workers sharing both stages.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::layout::create_topic;
use super::*;

/// The mixed layout: `(topic, partitions)` in `kafka.input_topics` order.
fn mixed_layout(env: &Env) -> Vec<(String, i32)> {
    let layout = vec![
        (env.topic("views"), PARTITIONS),
        (env.topic("clicks"), PARTITIONS),
        (env.topic("purchases3"), 3),
        (env.topic("refunds3"), 3),
    ];
    for (t, n) in &layout[2..] {
        create_topic(t, *n);
    }
    // A new topic reaches every client's metadata a moment after it is created.
    let probe: BaseConsumer = client().create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (t, n) in &layout {
        while probe.fetch_metadata(Some(t), Duration::from_secs(5)).map_or(true, |md| {
            md.topics().first().is_none_or(|m| m.error().is_some() || m.partitions().len() != *n as usize)
        }) {
            assert!(Instant::now() < deadline, "{t} never appeared in the metadata");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    layout
}

fn topics_setting(layout: &[(String, i32)]) -> String {
    format!("[{}]", layout.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(","))
}

/// Produces the workload onto the mixed layout, purchases and refunds keyed by
/// `order_id`, and checks that every message sits where the Java client's partitioner
/// puts its key.
fn produce_mixed(env: &Env, layout: &[(String, i32)]) {
    let status = env
        .attrib("producer")
        .env("ATTRIB__KAFKA__INPUT_TOPICS", topics_setting(layout))
        .args(["produce", "--flush-marker", "--key", "order_id"])
        .arg(&env.workload)
        .status()
        .unwrap();
    assert!(status.success(), "attrib produce failed");
    // The order-keyed topics (the touch topics are placed as in the other tests).
    for (t, n) in &layout[2..] {
        let consumer: BaseConsumer = client().set("group.id", env.topic("check")).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut end = 0;
        for p in 0..*n {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            end += consumer.fetch_watermarks(t, p, Duration::from_secs(10)).unwrap().1;
        }
        consumer.assign(&tpl).unwrap();
        let mut seen = 0;
        while seen < end {
            let Some(m) = consumer.poll(Duration::from_secs(10)) else { panic!("{t}: read stalled") };
            let m = m.unwrap();
            seen += 1;
            let key = m.key().unwrap();
            // Kafka's murmur2 (checked against the Java client's test vectors).
            let java = attrib::routing::Partitioner::Murmur2.partition(key, *n);
            assert_eq!(m.partition(), java, "{t}: Java partitioner placement");
            if t.ends_with("purchases3") && !key.starts_with(b"attrib-flush") {
                let v: serde_json::Value = match serde_json::from_slice(m.payload().unwrap()) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if let Some(order) = v["order_id"].as_str() {
                    assert_eq!(key, order.as_bytes(), "purchases keyed by order_id");
                }
            }
        }
    }
}

/// Environment for a worker that repartitions the mixed layout.
fn repartitioning(layout: &[(String, i32)]) -> Vec<(String, String)> {
    vec![
        ("ATTRIB__KAFKA__INPUT_TOPICS".into(), topics_setting(layout)),
        ("ATTRIB__KAFKA__REPARTITION".into(), "true".into()),
    ]
}

fn start(env: &Env, instance: &str, layout: &[(String, i32)], args: &[&str]) -> Child {
    let extra = repartitioning(layout);
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.start_worker_with(instance, &extra, args)
}

/// Waits until the re-key stage's group has committed at least `fraction` of the input.
fn wait_rekeyed(env: &Env, layout: &[(String, i32)], fraction: f64) {
    let group = format!("{}-repartitioner", env.topic("group"));
    let consumer: BaseConsumer = client().set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for (t, n) in layout {
        for p in 0..*n {
            tpl.add_partition(t, p);
            end += consumer.fetch_watermarks(t, p, Duration::from_secs(10)).unwrap().1;
        }
    }
    let start = Instant::now();
    loop {
        let done: i64 = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)).map_or(0, |c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        });
        if done as f64 >= fraction * end as f64 {
            return;
        }
        assert!(start.elapsed() < LIMIT, "re-key stage at {done} of {end}\n{}", env.logs_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every dead letter is an invalid line of the workload, named by its input position.
fn assert_dead_letters_name_inputs(env: &Env, layout: &[(String, i32)]) {
    let dead: Vec<serde_json::Value> =
        env.read_all("dlq").iter().map(|(_, _, v)| serde_json::from_slice(v).unwrap()).collect();
    assert_eq!(dead.len() as u64, env.invalid_lines, "every invalid line dead-lettered, once");
    for d in &dead {
        let topic = d["topic"].as_str().unwrap_or_default();
        assert!(layout.iter().any(|(t, _)| t == topic), "dead letter names its input, not the internal topic: {d}");
        assert!(d["offset"].is_i64() && d["partition"].is_i64(), "{d}");
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn repartitioned_order_keyed_inputs_in_three_partitions_output_equals_replay() {
    let env = Env::new("rekey", workload(515));
    let layout = mixed_layout(&env);
    produce_mixed(&env, &layout);
    let w = start(&env, "w1", &layout, &["--stop-at-end"]);
    let status = wait_exit(&env, w);
    assert!(status.success(), "worker exit: {status}\n{}", env.logs_tail());
    let log = env.worker_log("w1");
    assert!(log.contains("created the internal repartition topic"), "{log}");
    env.assert_output_equals_replay();
    assert_dead_letters_name_inputs(&env, &layout);
    // Nothing misrouted: the re-key stage placed every event where the joiner looks.
    assert!(!log.contains("misrouted"), "{}", env.logs_tail());
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn repartitioning_worker_killed_twice_output_equals_replay() {
    let env = Env::new("rekeykill", workload(626));
    let layout = mixed_layout(&env);
    produce_mixed(&env, &layout);
    for (round, fraction) in [0.3, 0.7].into_iter().enumerate() {
        let w = start(&env, "w1", &layout, &[]);
        wait_rekeyed(&env, &layout, fraction);
        sigkill(w);
        println!("killed the worker at >= {:.0}% re-keyed (round {})", fraction * 100.0, round + 1);
    }
    let w = start(&env, "w1", &layout, &["--stop-at-end"]);
    let status = wait_exit(&env, w);
    assert!(status.success(), "worker exit: {status}\n{}", env.logs_tail());
    assert!(env.worker_log("w1").contains("partition group restored"), "{}", env.logs_tail());
    env.assert_output_equals_replay();
    assert_dead_letters_name_inputs(&env, &layout);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn two_repartitioning_workers_share_both_stages_output_equals_replay() {
    let env = Env::new("rekeytwo", workload(737));
    let layout = mixed_layout(&env);
    produce_mixed(&env, &layout);
    // Catch-up runs: each stops once every source partition is idle at its end for all
    // of its groups; a group handed over when the other stops is restored and finished.
    let a = start(&env, "wa", &layout, &["--stop-at-end"]);
    let b = start(&env, "wb", &layout, &["--stop-at-end"]);
    for (name, w) in [("wa", a), ("wb", b)] {
        let status = wait_exit(&env, w);
        assert!(status.success(), "{name} exit: {status}\n{}", env.logs_tail());
    }
    // Both re-key stages and both joiners held partitions.
    for name in ["wa", "wb"] {
        let log = env.worker_log(name);
        let held = |needle: &str, empty: &str| log.lines().any(|l| l.contains(needle) && !l.contains(empty));
        assert!(
            held("re-key stage: partitions assigned", "partitions=0"),
            "{name}'s re-key stage\n{}",
            env.logs_tail()
        );
        assert!(held("partitions assigned groups=", "groups={}"), "{name}'s joiner\n{}", env.logs_tail());
    }
    env.assert_output_equals_replay();
    assert_dead_letters_name_inputs(&env, &layout);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_running_repartitioning_worker_finalises_the_tail_once_the_sources_go_idle() {
    // No --stop-at-end: the purchase and refund topics fall silent after the load, and
    // only the re-key stage's idle markers (time.idle_timeout, 2 s here) let the joiner's
    // watermark pass their last events to the flush markers' time.
    let env = Env::new("rekeyidle", workload(848));
    let layout = mixed_layout(&env);
    produce_mixed(&env, &layout);
    let w = start(&env, "w1", &layout, &[]);
    let want = env.expected.len();
    let start = Instant::now();
    loop {
        let have = env.read_all("commissions").len();
        if have >= want {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{have} of {want} records after {:?}\n{}", start.elapsed(), env.logs_tail());
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = stop(w, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.logs_tail());
    env.assert_output_equals_replay();
}

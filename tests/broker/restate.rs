//! `attrib restate --kafka` (SPEC 8.5): the adjustments reach the output topic in one
//! transaction, exactly the records the file output holds, and a second run of the same
//! revision writes the same ids (consumers deduplicate).

use std::collections::BTreeMap;

use attrib::config::Config;
use attrib::model::Record;
use attrib::replay::open_files;
use attrib::restate::restate;
use attrib::worker::restate::produce_adjustments;

use super::{brokers, workload, Env, PARTITIONS};

fn by_id(records: &[Record]) -> BTreeMap<String, Record> {
    records.iter().map(|r| (r.commission_id.to_string(), r.clone())).collect()
}

#[test]
#[ignore = "needs a Kafka broker (ATTRIB_TEST_BROKERS)"]
fn restate_kafka_writes_the_adjustments_in_one_transaction() {
    let env = Env::new("restate", workload(21));
    let baseline = Config::default();
    let toml = format!(
        "[commission]\ndefault_rate_bps = 1250\n[[commission.rules]]\nid = \"beauty\"\ncategory = \"beauty\"\nrate_bps = 800\n\
         [kafka]\nbrokers = \"{}\"\ngroup_id = \"{}\"\noutput_topic = \"{}\"\n",
        brokers(),
        env.topic("group"),
        env.topic("commissions")
    );
    let config = Config::from_toml(&toml).unwrap();
    let files = std::slice::from_ref(&env.workload);
    let r = restate(&baseline, &config, "kafka-1", open_files(files).unwrap()).unwrap();
    assert!(r.adjustments.len() > 100, "a rate change adjusts many keys: {}", r.adjustments.len());

    assert_eq!(produce_adjustments(&config, &r).unwrap(), r.adjustments.len());
    let read = |env: &Env| -> Vec<(i32, Record)> {
        env.read_all("commissions")
            .into_iter()
            .map(|(p, _, v)| (p, serde_json::from_slice::<Record>(&v).expect("a record")))
            .collect()
    };
    let got = read(&env);
    assert_eq!(got.len(), r.adjustments.len(), "every adjustment once");
    let got_records: Vec<Record> = got.iter().map(|(_, rec)| rec.clone()).collect();
    assert!(by_id(&got_records) == by_id(&r.adjustments), "the topic holds exactly the adjustments");
    // Keyed by creator: one creator's adjustments share a partition.
    let mut partition_of: BTreeMap<&str, i32> = BTreeMap::new();
    for (p, rec) in &got {
        assert!((0..PARTITIONS).contains(p));
        assert_eq!(*partition_of.entry(rec.creator_id.as_str()).or_insert(*p), *p, "{}", rec.creator_id);
    }

    // The same revision again: the same ids, so a deduplicating consumer sees no change.
    let again = restate(&baseline, &config, "kafka-1", open_files(files).unwrap()).unwrap();
    assert_eq!(again.adjustments, r.adjustments);
    produce_adjustments(&config, &again).unwrap();
    let twice = read(&env);
    assert_eq!(twice.len(), 2 * r.adjustments.len());
    let twice_records: Vec<Record> = twice.into_iter().map(|(_, rec)| rec).collect();
    assert!(by_id(&twice_records) == by_id(&r.adjustments));
}

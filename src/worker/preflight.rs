//! Start-time checks (`attrib run` and `attrib produce`): before anything is consumed or
//! produced, connect with the user's `[kafka.client]` settings, fetch metadata and check
//! every configured topic, and turn what librdkafka reports into an error that says what
//! is wrong and which setting to look at. Each of the three steps (connect, topics,
//! group) has `kafka.session_timeout`: a bad password or CA fails within one, nothing
//! takes longer than three.
//!
//! - **Connection**: librdkafka retries a failed connection forever and reports why only
//!   through its error callback. The check records those reports and stops at the first
//!   authentication failure (`SASL`: wrong user, password or mechanism) or TLS failure
//!   (certificate not trusted, wrong host name, a plaintext broker), and otherwise at
//!   the deadline with the last reason seen ("no broker answered").
//! - **Topics**: each configured topic is looked up on its own, so a missing topic
//!   (`UNKNOWN_TOPIC_OR_PARTITION`) is told from one the user may not see
//!   (`TOPIC_AUTHORIZATION_FAILED`). The error lists every missing topic with its config
//!   key, and for denied topics the ACL the worker needs (Read on inputs, Write on the
//!   output and DLQ, Read, Write and Create on the state topic). A missing state topic
//!   is not an error: the worker creates it.
//! - **Group** (worker only): fetching the group's committed offsets fails with
//!   `GROUP_AUTHORIZATION_FAILED` when the user lacks Read on `kafka.group_id`. Only that
//!   refusal is fatal: a coordinator that does not answer in time is logged and left to
//!   the consumer.
//!
//! Not checked here: Write on the output topics (Kafka shows no ACL in metadata; a
//! missing Write fails the first transaction with "Topic authorization failed") and
//! the transactional id (`init_transactions` fails at once with "Transactional Id
//! authorization failed"). No error text contains a secret: every `[kafka.client]`
//! value that [`crate::config::redacted`] hides is also scrubbed from librdkafka's
//! reasons.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tracing::{debug, info, warn};

use super::{client_config, with_user_settings, WorkerError};
use crate::config::{redacted, Config};

/// What a topic is for: its config key and the ACL operations the worker needs on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Input,
    Output,
    Dlq,
    State,
}

impl Role {
    fn key(self) -> &'static str {
        match self {
            Role::Input => "kafka.input_topics",
            Role::Output => "kafka.output_topic",
            Role::Dlq => "kafka.dlq_topic",
            Role::State => "kafka.state_topic",
        }
    }

    /// The ACL operations the worker (or `produce`, for inputs) needs.
    fn needs(self, producing: bool) -> &'static str {
        match (self, producing) {
            (Role::Input, true) | (Role::Output | Role::Dlq, _) => "Write",
            (Role::Input, false) => "Read",
            (Role::State, _) => "Read, Write and Create",
        }
    }
}

/// The checks of `attrib run`: every topic, then the consumer group.
pub fn check_worker(config: &Config) -> Result<(), WorkerError> {
    let k = &config.kafka;
    let mut topics: Vec<(&str, Role)> = k.input_topics.iter().map(|t| (t.as_str(), Role::Input)).collect();
    topics.push((&k.output_topic, Role::Output));
    topics.push((&k.dlq_topic, Role::Dlq));
    topics.push((&k.state_topic, Role::State));
    check(config, &topics, Some(&k.group_id), false)
}

/// The checks of `attrib produce`: the input topics it writes.
pub fn check_produce(config: &Config) -> Result<(), WorkerError> {
    let topics: Vec<(&str, Role)> = config.kafka.input_topics.iter().map(|t| (t.as_str(), Role::Input)).collect();
    check(config, &topics, None, true)
}

/// Records librdkafka's error reports (and keeps its logs at debug level: the error the
/// check returns says it better).
#[derive(Default)]
struct Watch {
    errors: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for Watch {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        debug!(target: "librdkafka", ?level, "{fac} {message}");
        // Connection failures are logged at once from librdkafka's threads (`FAIL`), while
        // the error events may queue behind "all brokers down": keep both.
        if matches!(
            level,
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error
        ) {
            self.errors.lock().unwrap_or_else(|e| e.into_inner()).push((None, message.to_string()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(target: "librdkafka", %error, "{reason}");
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).push((error.rdkafka_error_code(), reason.to_string()));
    }
}

impl rdkafka::consumer::ConsumerContext for Watch {}

impl ProducerContext for Watch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl Watch {
    /// The most telling error so far: authentication, then TLS, then any other.
    fn worst(&self) -> Option<(Failure, String)> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<(Failure, String)> = None;
        for (code, reason) in errors.iter() {
            let f = classify(*code, reason);
            if best.as_ref().is_none_or(|(b, _)| f > *b) {
                best = Some((f, reason.clone()));
            }
        }
        best
    }
}

/// Kinds of connection failure, least telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    Other,
    Tls,
    Authentication,
}

fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Failure {
    let r = reason.to_ascii_lowercase();
    match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => Failure::Authentication,
        Some(RDKafkaErrorCode::SSL) => Failure::Tls,
        _ if r.contains("sasl authentication") || r.contains("authentication failed") => Failure::Authentication,
        _ if r.contains("ssl") || r.contains("certificate") || r.contains("handshake") => Failure::Tls,
        _ => Failure::Other,
    }
}

/// Replaces every secret `[kafka.client]` value in `text`.
fn scrub(text: &str, config: &Config) -> String {
    let client = &config.kafka.client;
    let mut out = text.to_string();
    for (k, shown) in redacted(client) {
        let value = &client[k];
        if shown != value.as_str() && !value.is_empty() {
            out = out.replace(value.as_str(), "<redacted>");
        }
    }
    out
}

fn describe_client(config: &Config) -> String {
    let c = &config.kafka.client;
    let get = |k: &str| c.get(k).map_or("(not set)", String::as_str);
    format!(
        "kafka.brokers {}, security.protocol {}, sasl.mechanism {}, sasl.username {}",
        config.kafka.brokers,
        get("security.protocol"),
        get("sasl.mechanism"),
        get("sasl.username")
    )
}

fn connection_error(config: &Config, failure: Failure, reason: &str, waited: Duration) -> WorkerError {
    let who = describe_client(config);
    let reason = scrub(reason, config);
    WorkerError::Setup(match failure {
        Failure::Authentication => format!(
            "authentication failed (SASL) with the broker ({who}): check kafka.client sasl.username, \
             sasl.password and sasl.mechanism; librdkafka: {reason}"
        ),
        Failure::Tls => format!(
            "TLS connection to the broker failed ({who}): the broker's certificate is not trusted, does not \
             match its host name, or the broker does not speak TLS there; check kafka.client ssl.ca.location \
             and kafka.brokers; librdkafka: {reason}"
        ),
        Failure::Other => format!(
            "no broker answered within {waited:?} (kafka.session_timeout; {who}); last error from librdkafka: \
             {reason}"
        ),
    })
}

/// The longest single wait: between two, the reports of librdkafka are looked at.
const SLICE: Duration = Duration::from_millis(500);

/// The check itself; `producing`: the topics are written (`attrib produce`).
fn check(config: &Config, topics: &[(&str, Role)], group: Option<&str>, producing: bool) -> Result<(), WorkerError> {
    let started = Instant::now();
    let deadline = started + config.session_timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut cc = client_config(config);
    cc.set("allow.auto.create.topics", "false");
    let probe: BaseProducer<Watch> = with_user_settings(cc, config)
        .create_with_context(Watch::default())
        .map_err(WorkerError::kafka("creating a client"))?;

    // Connect: all-topics metadata needs a broker that let us in.
    loop {
        let attempt = left().min(SLICE);
        let fetched = probe.client().fetch_metadata(None, attempt);
        for _ in 0..64 {
            probe.poll(Duration::ZERO); // deliver librdkafka's queued error reports to the Watch
        }
        let worst = probe.context().worst();
        if let Some((f @ (Failure::Authentication | Failure::Tls), reason)) = worst.clone() {
            return Err(connection_error(config, f, &reason, started.elapsed()));
        }
        match fetched {
            Ok(_) => break,
            Err(e) if left().is_zero() => {
                let reason = worst.map_or_else(|| e.to_string(), |(_, r)| r);
                return Err(connection_error(config, Failure::Other, &reason, config.session_timeout));
            }
            Err(_) => {}
        }
    }

    // Each topic on its own: missing vs not authorized.
    let mut missing = Vec::new();
    let mut denied = Vec::new();
    let topics_deadline = Instant::now() + config.session_timeout;
    let left = || topics_deadline.saturating_duration_since(Instant::now());
    for &(topic, role) in topics {
        match topic_state(&probe, topic, &left) {
            Err(e) => {
                let e = scrub(&e.to_string(), config);
                return Err(WorkerError::Setup(format!(
                    "reading the metadata of topic {topic:?} ({}): {e}",
                    role.key()
                )));
            }
            Ok(TopicState::Present) => {}
            Ok(TopicState::Denied) => denied.push((topic, role)),
            Ok(TopicState::Missing) if role == Role::State && !producing => {
                info!(topic, "state topic missing: the worker creates it");
            }
            Ok(TopicState::Missing) => missing.push((topic, role)),
            Ok(TopicState::Failed(code)) => {
                return Err(WorkerError::Setup(format!("topic {topic:?} ({}): {code}", role.key())));
            }
        }
    }
    if !missing.is_empty() || !denied.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|(t, r)| format!("{t:?} ({})", r.key())).collect();
            parts.push(format!(
                "topic(s) missing: {} (create them, or fix the names; the broker does not create topics for attrib)",
                names.join(", ")
            ));
        }
        if !denied.is_empty() {
            let names: Vec<String> =
                denied.iter().map(|(t, r)| format!("{t:?} ({}): needs {}", r.key(), r.needs(producing))).collect();
            parts.push(format!(
                "topic authorization failed for the user ({}): {}; grant these ACLs (docs/kafka.md)",
                config.kafka.client.get("sasl.username").map_or("the client's principal", String::as_str),
                names.join(", ")
            ));
        }
        return Err(WorkerError::Setup(parts.join("; ")));
    }

    if let Some(group) = group {
        check_group(config, group, topics[0].0, config.session_timeout)?;
    }
    debug!(took = ?started.elapsed(), "start-time checks passed");
    Ok(())
}

#[derive(Debug)]
enum TopicState {
    Present,
    Missing,
    Denied,
    Failed(RDKafkaErrorCode),
}

/// How long a topic may look missing (or leaderless) before it counts as such: a topic
/// created a moment ago may not be in every broker's metadata yet.
const SETTLE: Duration = Duration::from_secs(1);

fn topic_state(
    probe: &BaseProducer<Watch>,
    topic: &str,
    left: &dyn Fn() -> Duration,
) -> Result<TopicState, KafkaError> {
    let first = Instant::now();
    loop {
        let md = probe.client().fetch_metadata(Some(topic), left().max(Duration::from_millis(100)))?;
        let t = md.topics().first();
        let error = t.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
        let partitions = t.map_or(0, |t| t.partitions().len());
        let state = match error {
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => return Ok(TopicState::Denied),
            None if partitions > 0 => return Ok(TopicState::Present),
            None | Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                TopicState::Missing
            }
            Some(code) => TopicState::Failed(code), // e.g. LEADER_NOT_AVAILABLE just after creation
        };
        if first.elapsed() >= SETTLE || left().is_zero() {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the group's committed offset of one input partition: needs Describe (Read
/// includes it) on the group.
fn check_group(config: &Config, group: &str, input: &str, timeout: Duration) -> Result<(), WorkerError> {
    let mut cc: ClientConfig = client_config(config);
    cc.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer<Watch> = with_user_settings(cc, config)
        .create_with_context(Watch::default())
        .map_err(WorkerError::kafka("creating a client"))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(input, 0);
    let deadline = Instant::now() + timeout;
    loop {
        // A new group's coordinator may still be loading (NOT_COORDINATOR,
        // COORDINATOR_LOAD_IN_PROGRESS): retry those until the deadline.
        // A denied FindCoordinator arrives as a global error report (the Watch), while
        // the offset fetch itself just waits: ask in short slices.
        let left = deadline.saturating_duration_since(Instant::now());
        let result = consumer.committed_offsets(tpl.clone(), left.clamp(Duration::from_millis(100), SLICE));
        let _ = consumer.poll(Duration::ZERO);
        let denied = |code: Option<RDKafkaErrorCode>| code == Some(RDKafkaErrorCode::GroupAuthorizationFailed);
        let reported =
            consumer.context().errors.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(c, _)| denied(*c));
        let e = match result {
            Ok(_) if !reported => return Ok(()),
            Ok(_) => KafkaError::Global(RDKafkaErrorCode::GroupAuthorizationFailed),
            Err(e) => e,
        };
        if reported || denied(e.rdkafka_error_code()) {
            return Err(WorkerError::Setup(format!(
                "group authorization failed: the user ({}) needs Read on consumer group {group:?} (kafka.group_id); \
                 grant the ACLs of docs/kafka.md",
                config.kafka.client.get("sasl.username").map_or("the client's principal", String::as_str)
            )));
        }
        if Instant::now() >= deadline {
            // Slow, not refused: the consumer will tell more; only a refusal is fatal here.
            warn!(group, error = %scrub(&e.to_string(), config), "group check: no answer from the group coordinator in time; going on");
            return Ok(());
        }
        debug!(error = %e, "group check: retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    fn config_for(brokers: &str) -> Config {
        let mut c = Config::default();
        c.kafka.brokers = brokers.to_string();
        c.session_timeout = Duration::from_secs(5);
        c
    }

    #[test]
    fn missing_topics_are_named_with_their_keys_and_a_missing_state_topic_is_fine() {
        let cluster = MockCluster::new(1).unwrap();
        for t in ["views", "clicks", "purchases", "refunds", "attrib.dlq"] {
            cluster.create_topic(t, 2, 1).unwrap();
        }
        let config = config_for(&cluster.bootstrap_servers());
        let err = check_worker(&config).unwrap_err().to_string();
        assert!(err.contains("\"commissions\" (kafka.output_topic)"), "{err}");
        assert!(!err.contains("attrib.state") && !err.contains("attrib.dlq"), "{err}");
        cluster.create_topic("commissions", 2, 1).unwrap();
        check_worker(&config).unwrap();
        check_produce(&config).unwrap();
    }

    #[test]
    fn produce_needs_only_its_inputs() {
        let cluster = MockCluster::new(1).unwrap();
        for t in ["views", "clicks", "purchases"] {
            cluster.create_topic(t, 2, 1).unwrap();
        }
        let err = check_produce(&config_for(&cluster.bootstrap_servers())).unwrap_err().to_string();
        assert!(err.contains("\"refunds\" (kafka.input_topics)"), "{err}");
        assert!(!err.contains("commissions"), "{err}");
    }

    #[test]
    fn no_broker_fails_within_the_session_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Nothing listens there once the listener is dropped.
        let mut config = config_for(&format!("127.0.0.1:{port}"));
        config.session_timeout = Duration::from_secs(2);
        let start = Instant::now();
        let err = check_worker(&config).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
        assert!(err.contains("no broker answered") && err.contains("kafka.session_timeout"), "{err}");
    }

    #[test]
    fn failures_are_classified_and_secrets_scrubbed() {
        assert_eq!(classify(Some(RDKafkaErrorCode::Authentication), "x"), Failure::Authentication);
        assert_eq!(classify(Some(RDKafkaErrorCode::SSL), "x"), Failure::Tls);
        assert_eq!(
            classify(None, "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"),
            Failure::Tls
        );
        assert_eq!(classify(Some(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down"), Failure::Other);
        assert!(Failure::Authentication > Failure::Tls && Failure::Tls > Failure::Other);
        let mut config = Config::default();
        config.kafka.client.insert("sasl.password".into(), "hunter2-s3cret".into());
        config.kafka.client.insert("sasl.username".into(), "attrib".into());
        let text = scrub("bad password hunter2-s3cret for attrib", &config);
        assert_eq!(text, "bad password <redacted> for attrib");
        let err = connection_error(&config, Failure::Authentication, "echo hunter2-s3cret", Duration::ZERO);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("authentication failed (SASL)"), "{err}");
    }
}

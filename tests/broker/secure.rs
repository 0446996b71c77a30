//! The worker and `attrib produce` against the broker's SASL_SSL listener
//! (`scripts/kafka.sh start --secure`: SCRAM-SHA-512 over TLS, ACLs on), and the
//! start-time checks of `src/worker/preflight.rs`: a wrong password, a CA that does not
//! match and a user without rights each fail at start, fast, non-zero, with an error
//! that names the cause and never the password.
//!
//! Finds the listener, CA and passwords in `$ATTRIB_TEST_KAFKA_HOME/secure/` (the
//! broker's `KAFKA_HOME_DIR`; default `<repo>/target/kafka`). Topics are created over
//! the plaintext listener (super user); each test grants the `attrib` user exactly the
//! worker's ACLs on its own topics with `scripts/kafka.sh grant-worker`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{sigkill, stop, workload, Env, LIMIT};

/// The secure listener's files.
struct Secure {
    dir: PathBuf,
    brokers: String,
}

fn kafka_home() -> PathBuf {
    std::env::var_os("ATTRIB_TEST_KAFKA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafka"))
}

fn kafka_sh() -> Command {
    let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"));
    c.env("KAFKA_HOME_DIR", kafka_home());
    c
}

impl Secure {
    fn new() -> Secure {
        let dir = kafka_home().join("secure");
        let brokers = std::fs::read_to_string(dir.join("bootstrap")).unwrap_or_else(|e| {
            panic!("{}: {e}: start the broker with scripts/kafka.sh start --secure", dir.join("bootstrap").display())
        });
        Secure { dir, brokers: brokers.trim().to_string() }
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{user}.password"))).unwrap().trim().to_string()
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// `attrib` environment for the SASL_SSL listener: the `[kafka.client]` settings,
    /// the password included, come from the environment.
    fn client_env(&self, user: &str, password: &str, ca: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ATTRIB__KAFKA__BROKERS", self.brokers.clone()),
            ("ATTRIB__KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL".into()),
            ("ATTRIB__KAFKA__CLIENT__SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("ATTRIB__KAFKA__CLIENT__SASL_USERNAME", user.into()),
            ("ATTRIB__KAFKA__CLIENT__SASL_PASSWORD", password.into()),
            ("ATTRIB__KAFKA__CLIENT__SSL_CA_LOCATION", ca.into()),
        ]
    }

    fn attrib_env(&self) -> Vec<(&'static str, String)> {
        self.client_env("attrib", &self.password("attrib"), &self.ca())
    }
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Grants the `attrib` user the worker's ACLs on `env`'s topics and group (transactional
/// ids `<prefix>-w...`), and Write on the inputs so `attrib produce` can load them.
fn grant(env: &Env) {
    let mut c = kafka_sh();
    c.arg("grant-worker")
        .arg("attrib")
        .arg(env.topic("group"))
        .arg(env.topic("w"))
        .arg(env.topic("state"))
        .arg(env.topic("commissions"))
        .arg(env.topic("dlq"))
        .args(env.inputs());
    assert!(c.status().unwrap().success(), "kafka.sh grant-worker");
    let status = kafka_sh().arg("grant-producer").arg("attrib").args(env.inputs()).status().unwrap();
    assert!(status.success(), "kafka.sh grant-producer");
}

/// `attrib run` with `env` (over the defaults: the broker's own topics and group
/// `attrib`), to its exit; (success, stdout + stderr, time taken). Killed after 60 s.
fn run_to_exit(env: &[(&str, &str)]) -> (bool, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_attrib"))
        .arg("run")
        .env("ATTRIB__KAFKA__SESSION_TIMEOUT", "6s")
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            sigkill(child);
            panic!("attrib run still running after 60 s:\n{}", std::fs::read_to_string(&err).unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = start.elapsed();
    let text = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    (status.success(), text, took)
}

/// The last line: the error `attrib` exits with.
fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

/// Fails within `kafka.session_timeout` (6 s) plus process start and client setup.
const FAST: Duration = Duration::from_secs(15);

#[test]
#[ignore = "needs a secure Kafka broker: scripts/kafka.sh start --secure; cargo test --release --test broker -- --ignored"]
fn secure_worker_killed_once_output_equals_replay_and_produce_works() {
    let secure = Secure::new();
    let env = Env::new("sec", workload(707));
    grant(&env);
    let client = secure.attrib_env();
    let password = secure.password("attrib");
    // attrib produce over SASL_SSL.
    let out = env
        .attrib("producer")
        .envs(refs(&client))
        .arg("produce")
        .arg("--flush-marker")
        .arg(&env.workload)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "attrib produce over SASL_SSL failed:\n{text}");
    assert!(!text.contains(&password), "password in produce output");
    let lines = std::fs::read_to_string(&env.workload).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let markers = 4 * i64::from(super::PARTITIONS);
    assert_eq!(env.input_messages(), lines as i64 + markers, "every line and flush marker produced");

    let worker = env.start_worker_with("w1", &refs(&client), &[]);
    env.wait_progress(0.4, LIMIT);
    sigkill(worker);
    let worker = env.start_worker_with("w1", &refs(&client), &[]);
    // The killed worker may have committed everything already: wait for the restore too,
    // or the stop could come before the restarted worker has restored anything.
    env.wait_log("w1", "partition group restored", LIMIT);
    env.wait_progress(1.0, LIMIT);
    let status = stop(worker, Duration::from_secs(30));
    assert!(status.success(), "worker exit: {status}\n{}", env.worker_log("w1"));
    let log = env.worker_log("w1");
    assert!(log.contains("SASL_SSL") && log.contains("<redacted>"), "start line shows the redacted client settings");
    assert!(!log.contains(&password), "password in the worker log");
    env.assert_output_equals_replay();
}

#[test]
#[ignore = "needs a secure Kafka broker: scripts/kafka.sh start --secure; cargo test --release --test broker -- --ignored"]
fn wrong_password_fails_at_start_naming_authentication() {
    let secure = Secure::new();
    let wrong = format!("wrong-{}", secure.password("attrib"));
    let (ok, text, took) = run_to_exit(&refs(&secure.client_env("attrib", &wrong, &secure.ca())));
    assert!(!ok, "exits non-zero:\n{text}");
    assert!(took < FAST, "took {took:?}:\n{text}");
    assert!(last_line(&text).contains("authentication failed (SASL)"), "{text}");
    assert!(!text.contains(&wrong), "the password is printed:\n{text}");
}

#[test]
#[ignore = "needs a secure Kafka broker: scripts/kafka.sh start --secure; cargo test --release --test broker -- --ignored"]
fn a_ca_that_does_not_match_fails_at_start_naming_tls() {
    let secure = Secure::new();
    // Another throwaway CA: valid, but it did not sign the broker's certificate.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not the broker's CA"])
        .arg("-keyout")
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl makes a CA");
    let password = secure.password("attrib");
    let (ok, text, took) = run_to_exit(&refs(&secure.client_env("attrib", &password, &ca.display().to_string())));
    assert!(!ok, "exits non-zero:\n{text}");
    assert!(took < FAST, "took {took:?}:\n{text}");
    let last = last_line(&text);
    assert!(last.contains("TLS connection to the broker failed") && last.contains("ssl.ca.location"), "{text}");
    assert!(!text.contains(&password), "the password is printed:\n{text}");
}

#[test]
#[ignore = "needs a secure Kafka broker: scripts/kafka.sh start --secure; cargo test --release --test broker -- --ignored"]
fn a_user_without_rights_gets_the_missing_permissions_named() {
    let secure = Secure::new();
    let password = secure.password("norights");
    let (ok, text, took) = run_to_exit(&refs(&secure.client_env("norights", &password, &secure.ca())));
    assert!(!ok, "exits non-zero:\n{text}");
    assert!(took < FAST, "took {took:?}:\n{text}");
    let last = last_line(&text);
    assert!(last.contains("topic authorization failed for the user (norights)"), "{text}");
    assert!(last.contains("\"views\" (kafka.input_topics): needs Read"), "{text}");
    assert!(last.contains("\"commissions\" (kafka.output_topic): needs Write"), "{text}");
    assert!(!text.contains(&password), "the password is printed:\n{text}");

    // The attrib user may use the broker's topics, but not a group it was not granted.
    let password = secure.password("attrib");
    let mut env = secure.client_env("attrib", &password, &secure.ca());
    env.push(("ATTRIB__KAFKA__GROUP_ID", "not-granted".into()));
    let (ok, text, _) = run_to_exit(&refs(&env));
    assert!(!ok, "exits non-zero:\n{text}");
    let last = last_line(&text);
    assert!(
        last.contains("group authorization failed") && last.contains("Read on consumer group \"not-granted\""),
        "{text}"
    );
    assert!(!text.contains(&password), "the password is printed:\n{text}");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; cargo test --release --test broker -- --ignored"]
fn a_missing_output_topic_is_named_at_start() {
    // Plaintext: every topic exists but the output topic.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let output = format!("t{}-missing-commissions", nanos % 1_000_000_000);
    let env = [("ATTRIB__KAFKA__BROKERS", super::brokers()), ("ATTRIB__KAFKA__OUTPUT_TOPIC", output.clone())];
    let (ok, text, took) = run_to_exit(&refs(&env));
    assert!(!ok, "exits non-zero:\n{text}");
    assert!(took < FAST, "took {took:?}:\n{text}");
    assert!(last_line(&text).contains(&format!("topic(s) missing: {output:?} (kafka.output_topic)")), "{text}");
}

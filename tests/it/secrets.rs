//! Secrets never printed: the real `attrib run`, with SASL and TLS key passwords in its
//! environment, must not show them on stdout or stderr, whether it starts (against
//! librdkafka's in-process mock cluster), cannot reach a broker, or refuses its config.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

/// A fresh random secret: nothing else in the output can contain it by chance.
fn secret(label: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write(label.as_bytes());
    format!("{label}-{:016x}{:016x}", h.finish(), RandomState::new().build_hasher().finish())
}

/// `attrib run --log-json` with the secrets and `env` in its environment.
fn attrib_run(secrets: &[String; 2], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attrib"));
    cmd.args(["run", "--log-json"])
        .env("ATTRIB__KAFKA__CLIENT__SASL_PASSWORD", &secrets[0])
        .env("ATTRIB__KAFKA__CLIENT__SSL_KEY_PASSWORD", &secrets[1])
        .env("ATTRIB__KAFKA__CLIENT__SASL_USERNAME", "attrib-test")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("attrib binary starts")
}

/// Everything the child printed: stderr lines are read until one contains `until` or the
/// child exits, bounded by `deadline`; then it gets SIGTERM (SIGKILL if it lingers).
struct Output {
    stdout: String,
    stderr: String,
    reached: bool,
}

fn run_until(mut child: Child, until: &str, deadline: Duration) -> Output {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    let err_thread = thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut lines = Vec::new();
    let mut reached = false;
    while let Some(left) = deadline.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                reached |= line.contains(until);
                lines.push(line);
                if reached {
                    break;
                }
            }
            Err(_) => break, // exited (stderr closed) or out of time
        }
    }
    // Let it shut down as in production (SIGTERM), and log on the way out.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let stop = Instant::now();
    while child.try_wait().expect("child status").is_none() {
        if stop.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    let _ = err_thread.join();
    lines.extend(rx.try_iter());
    Output { stdout: out_thread.join().expect("stdout reader"), stderr: lines.join("\n"), reached }
}

fn assert_no_secret(out: &Output, secrets: &[String; 2]) {
    for s in secrets {
        assert!(!out.stdout.contains(s.as_str()), "secret on stdout:\n{}", out.stdout);
        assert!(!out.stderr.contains(s.as_str()), "secret on stderr:\n{}", out.stderr);
    }
}

/// A librdkafka mock cluster with the default topics, and the environment that points a
/// worker (with a group of its own) at it.
fn mock_cluster() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, Vec<(&'static str, String)>) {
    let cluster = MockCluster::new(1).expect("librdkafka mock cluster");
    for topic in ["views", "clicks", "purchases", "refunds", "commissions", "attrib.dlq", "attrib.state"] {
        cluster.create_topic(topic, 1, 1).expect("mock topic");
    }
    let group = secret("group");
    let env = vec![
        ("ATTRIB__KAFKA__BROKERS", cluster.bootstrap_servers()),
        ("ATTRIB__KAFKA__GROUP_ID", group.clone()),
        ("ATTRIB__KAFKA__TRANSACTIONAL_ID", group),
    ];
    (cluster, env)
}

#[test]
fn a_started_worker_logs_no_secret() {
    let (_cluster, env) = mock_cluster();
    let secrets = [secret("sasl"), secret("sslkey")];
    let out = run_until(attrib_run(&secrets, &env), "starting worker", Duration::from_secs(60));
    assert!(out.reached, "the worker should log its start line:\n{}", out.stderr);
    // The start line shows the client settings, with the secret values redacted.
    let start = out.stderr.lines().find(|l| l.contains("starting worker")).expect("start line");
    assert!(start.contains("sasl.password") && start.contains("<redacted>"), "{start}");
    assert!(start.contains("attrib-test"), "non-secret settings stay readable: {start}");
    assert_no_secret(&out, &secrets);
}

#[test]
fn an_unreachable_broker_logs_no_secret() {
    // Nothing listens on port 1: the worker's start-time checks give up after
    // kafka.session_timeout (10 s) and it exits with an error.
    let secrets = [secret("sasl"), secret("sslkey")];
    let child = attrib_run(&secrets, &[("ATTRIB__KAFKA__BROKERS", "127.0.0.1:1".into())]);
    let out = run_until(child, "starting worker", Duration::from_secs(90));
    assert!(!out.reached, "{}", out.stderr);
    assert!(out.stderr.contains("no broker answered"), "{}", out.stderr);
    assert_no_secret(&out, &secrets);
}

#[test]
fn an_invalid_config_names_the_key_and_not_the_secret() {
    let secrets = [secret("sasl"), secret("sslkey")];
    let child = attrib_run(
        &secrets,
        &[("ATTRIB__KAFKA__BROKERS", "127.0.0.1:1".into()), ("ATTRIB__KAFKA__COMMIT_INTERVAL", "often".into())],
    );
    let out = run_until(child, "starting worker", Duration::from_secs(30));
    assert!(out.stderr.contains("kafka.commit_interval"), "{}", out.stderr);
    assert_no_secret(&out, &secrets);
}

#[test]
fn a_secret_that_looks_like_a_number_or_a_list_is_a_string_and_not_echoed() {
    // A password may be all digits, or look like a TOML list: it must reach librdkafka as
    // the string it is, and never appear in an error.
    let (_cluster, env) = mock_cluster();
    let digits = RandomState::new().build_hasher().finish() % 1_000_000_000_000 + 1_000_000_000_000;
    let secrets = [digits.to_string(), format!("[{}]", secret("list"))];
    let out = run_until(attrib_run(&secrets, &env), "starting worker", Duration::from_secs(60));
    assert_no_secret(&out, &secrets);
    assert!(out.reached, "the worker should start:\n{}", out.stderr);
}

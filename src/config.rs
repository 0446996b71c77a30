//! Configuration (SPEC §7): one TOML file, every key optional, every key overridable by
//! an `ATTRIB__SECTION__KEY` environment variable.
//!
//! Loading goes in two steps, as in ripgrep: the raw serde structs (`deny_unknown_fields`,
//! defaults in their `Default` impls, the single place defaults live) are read with
//! figment, then [`RawConfig::validate`] turns them into the checked [`Config`], failing
//! with an error that names the key.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::codec::{parse_rfc3339_ms, DecodeLimits};
use crate::engine::plan::{CommissionPlan, Rule, DEFAULT_RULE_ID};
use crate::engine::EngineConfig;
use crate::model::{Millis, Model};

/// A config that could not be loaded; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// `[attribution]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAttribution {
    pub model: String,
    pub click_window: String,
    pub view_window: String,
    pub half_life: String,
    pub allow_self_attribution: bool,
    /// Other models computed in the same pass, written to the shadow output only.
    pub shadow_models: Vec<String>,
    pub surface: BTreeMap<String, RawSurface>,
}

impl Default for RawAttribution {
    fn default() -> Self {
        RawAttribution {
            model: "last_touch".into(),
            click_window: "7d".into(),
            view_window: "1d".into(),
            half_life: "1d".into(),
            allow_self_attribution: false,
            shadow_models: Vec::new(),
            surface: BTreeMap::new(),
        }
    }
}

/// `[attribution.surface.<name>]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSurface {
    pub click_window: Option<String>,
    pub view_window: Option<String>,
}

/// `[time]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTime {
    pub max_out_of_orderness: String,
    pub allowed_lateness: String,
    pub idle_timeout: String,
    pub max_future_skew: String,
    pub refund_window: String,
}

impl Default for RawTime {
    fn default() -> Self {
        RawTime {
            max_out_of_orderness: "5s".into(),
            allowed_lateness: "1h".into(),
            idle_timeout: "30s".into(),
            max_future_skew: "1h".into(),
            refund_window: "30d".into(),
        }
    }
}

/// `[commission]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCommission {
    pub default_rate_bps: i64,
    /// Commissions lock this long after their purchase (SPEC 8.2); absent: no locks.
    pub lock_period: Option<String>,
    pub rules: Vec<RawRule>,
}

impl Default for RawCommission {
    fn default() -> Self {
        RawCommission { default_rate_bps: 1000, lock_period: None, rules: Vec::new() }
    }
}

/// `[[commission.rules]]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRule {
    pub id: String,
    pub product_id: Option<String>,
    pub creator_id: Option<String>,
    pub category: Option<String>,
    pub rate_bps: i64,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
}

/// `[limits]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Longest message accepted (bytes); longer ones are dead-lettered `too_large`.
    pub max_message_bytes: i64,
    /// Most items in a purchase or refund.
    pub max_items_per_purchase: i64,
    /// Longest id in bytes (SPEC §1: at most 256).
    pub max_id_bytes: i64,
    /// Deepest JSON nesting (objects and arrays) accepted.
    pub max_json_depth: i64,
    /// Touches kept per shopper (oldest dropped first, counted).
    pub max_touches_per_user: i64,
    /// Live touches a worker (or replay) holds before it applies back-pressure.
    pub max_live_touches: i64,
    /// Purchases waiting for the watermark before back-pressure.
    pub max_pending_purchases: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_message_bytes: 1024 * 1024,
            max_items_per_purchase: 1000,
            max_id_bytes: 256,
            max_json_depth: 32,
            max_touches_per_user: 10_000,
            max_live_touches: 50_000_000,
            max_pending_purchases: 1_000_000,
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address for `/metrics`, `/healthz` and `/readyz` (empty: no HTTP server).
    pub listen: String,
}

/// `[kafka]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafka {
    pub brokers: String,
    pub group_id: String,
    pub input_topics: Vec<String>,
    pub output_topic: String,
    pub dlq_topic: String,
    /// Where shadow records go (SPEC 8.3), in the same transactions as the paid ones.
    /// Required when `attribution.shadow_models` is set; empty otherwise.
    pub shadow_topic: String,
    /// Where checkpoints and the order log live (compacted; one partition per input
    /// partition).
    pub state_topic: String,
    /// How the inputs were partitioned (SPEC 8.6): `murmur2_random` (the Java client's
    /// default) or `consistent_random` (librdkafka's default). Events on another partition
    /// than their `user_id` maps to are dead-lettered as `misrouted`.
    pub partitioner: String,
    /// The transactional producer's id; give every worker its own, stable across restarts
    /// (a restarted worker with the same id fences its previous incarnation at once).
    /// Empty: `<group_id>-<hostname>-<slot>`, where the slot is the lowest number no other
    /// worker on this host holds (a lock file per slot), so workers on one host never
    /// fence each other.
    pub transactional_id: String,
    /// How often records, state and input offsets are committed in one transaction.
    pub commit_interval: String,
    /// How often a partition group's whole state is snapshotted (recovery replays at most
    /// this much input).
    pub snapshot_interval: String,
    pub transaction_timeout: String,
    pub session_timeout: String,
    /// Event-time alignment: an input partition more than this ahead of its group's
    /// watermark is paused until the others catch up.
    pub read_ahead: String,
    /// Upper bound for a graceful shutdown (SIGTERM/SIGINT).
    pub shutdown_timeout: String,
    /// `false`: no transactions; offsets are committed after the records are delivered
    /// (at least once: a crash may repeat records). For benchmarks and for sinks that
    /// deduplicate by `commission_id` themselves.
    pub exactly_once: bool,
    /// Re-key every input by `user_id` through the internal topic `<group_id>-repartition`
    /// before joining (SPEC 8.6): inputs with any key and any partition count.
    pub repartition: bool,
    /// Partition count of the internal topic (and so of the joining stage's partition
    /// groups and the state topic) with `repartition`; 0: the largest input's.
    pub partitions: i64,
    /// Threads that process partition groups (decoding, the engines, encoding); 0: one
    /// per core. The poll thread is one of them.
    pub threads: i64,
    /// Passed to librdkafka as is (may hold secrets: never logged).
    pub client: BTreeMap<String, String>,
}

impl Default for RawKafka {
    fn default() -> Self {
        RawKafka {
            brokers: "localhost:9092".into(),
            group_id: "attrib".into(),
            input_topics: ["views", "clicks", "purchases", "refunds"].map(String::from).to_vec(),
            output_topic: "commissions".into(),
            dlq_topic: "attrib.dlq".into(),
            shadow_topic: String::new(),
            state_topic: "attrib.state".into(),
            partitioner: "murmur2_random".into(),
            transactional_id: String::new(),
            commit_interval: "200ms".into(),
            snapshot_interval: "30s".into(),
            transaction_timeout: "60s".into(),
            session_timeout: "10s".into(),
            read_ahead: "30s".into(),
            shutdown_timeout: "10s".into(),
            exactly_once: true,
            repartition: false,
            partitions: 0,
            threads: 0,
            client: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for RawKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKafka")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topics", &self.input_topics)
            .field("output_topic", &self.output_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("shadow_topic", &self.shadow_topic)
            .field("state_topic", &self.state_topic)
            .field("partitioner", &self.partitioner)
            .field("transactional_id", &self.transactional_id)
            .field("commit_interval", &self.commit_interval)
            .field("snapshot_interval", &self.snapshot_interval)
            .field("transaction_timeout", &self.transaction_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("read_ahead", &self.read_ahead)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("exactly_once", &self.exactly_once)
            .field("repartition", &self.repartition)
            .field("partitions", &self.partitions)
            .field("client", &redacted(&self.client))
            .finish()
    }
}

/// Client settings with the values of anything secret-looking replaced.
pub fn redacted(client: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    client
        .iter()
        .map(|(k, v)| {
            let secret = ["password", "secret", "key", "token", "jaas", "credential"].iter().any(|s| k.contains(s));
            (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
        })
        .collect()
}

/// The whole file, as read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub attribution: RawAttribution,
    pub time: RawTime,
    pub commission: RawCommission,
    pub limits: RawLimits,
    pub kafka: RawKafka,
    pub metrics: RawMetrics,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub engine: EngineConfig,
    pub limits: DecodeLimits,
    pub idle_timeout: Duration,
    pub max_future_skew: Millis,
    pub kafka: RawKafka,
    pub commit_interval: Duration,
    pub snapshot_interval: Duration,
    pub transaction_timeout: Duration,
    pub session_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// `kafka.transactional_id` was left empty: the worker appends a per-host slot.
    pub transactional_id_auto: bool,
    /// See `kafka.partitioner`.
    pub partitioner: crate::routing::Partitioner,
    /// See `kafka.read_ahead`.
    pub read_ahead: Millis,
    /// `kafka.threads`, with 0 resolved to the number of cores.
    pub threads: usize,
    /// See `limits.max_live_touches`.
    pub max_live_touches: usize,
    /// See `limits.max_pending_purchases`.
    pub max_pending_purchases: usize,
    /// `metrics.listen`, parsed (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        RawConfig::default().validate().expect("defaults are valid")
    }
}

impl Config {
    /// Loads `path` (if given) with `ATTRIB__*` environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(invalid("--config", format!("file {} not found", path.display())));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("ATTRIB__") else { continue };
            let path = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
            // Parsed like figment's Env provider: numbers, booleans and [a, b] lists; but
            // librdkafka settings stay strings (a password may look like a number or a
            // list, and must neither change nor be echoed by a type error).
            let value: figment::value::Value = if path.starts_with("kafka.client.") {
                value.as_str().into()
            } else {
                value.parse().unwrap_or_else(|_| value.as_str().into())
            };
            fig = fig.merge(Serialized::default(&path, value));
        }
        let raw: RawConfig = fig.extract().map_err(Box::new)?;
        raw.validate()
    }

    /// Parses TOML text (no environment), for tests and embedded defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        raw.validate()
    }
}

/// Most `[attribution.surface.*]` overrides (the engine tells up to 255 surface names
/// apart over the life of its state, config changes included).
pub const MAX_SURFACE_OVERRIDES: usize = 64;

fn duration(key: &str, text: &str) -> Result<Millis, ConfigError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(key, format!("{text:?} is not a duration like 250ms, 5s, 30m, 1h or 7d ({e})")))?;
    Millis::try_from(d.as_millis()).map_err(|_| invalid(key, "duration too large"))
}

fn positive(key: &str, v: i64) -> Result<usize, ConfigError> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(key, format!("must be a positive integer, got {v}")))
}

/// A positive integer no larger than `max`.
fn at_most(key: &str, v: i64, max: usize) -> Result<usize, ConfigError> {
    let n = positive(key, v)?;
    if n <= max {
        Ok(n)
    } else {
        Err(invalid(key, format!("must be at most {max}, got {v}")))
    }
}

fn rate(key: &str, v: i64) -> Result<u32, ConfigError> {
    u32::try_from(v)
        .ok()
        .filter(|&r| r <= 10_000)
        .ok_or_else(|| invalid(key, format!("must be 0..=10000 basis points, got {v}")))
}

fn selector(key: &str, v: &Option<String>) -> Result<Option<crate::model::Str>, ConfigError> {
    match v {
        Some(s) if s.is_empty() => Err(invalid(key, "must not be empty (leave it out to match everything)")),
        Some(s) => Ok(Some(s.as_str().into())),
        None => Ok(None),
    }
}

fn instant(key: &str, v: &Option<String>) -> Result<Option<Millis>, ConfigError> {
    v.as_deref()
        .map(|s| parse_rfc3339_ms(s).ok_or_else(|| invalid(key, format!("{s:?} is not an RFC 3339 time"))))
        .transpose()
}

impl RawConfig {
    /// Checks every value and builds the [`Config`].
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let a = &self.attribution;
        let model = Model::parse(&a.model).ok_or_else(|| {
            invalid(
                "attribution.model",
                format!("{:?} is not one of last_touch, first_touch, linear, position_based, time_decay", a.model),
            )
        })?;
        let half_life = duration("attribution.half_life", &a.half_life)?;
        if half_life <= 0 {
            return Err(invalid("attribution.half_life", "must be longer than 0"));
        }
        let mut surfaces = Vec::new();
        if a.surface.len() > MAX_SURFACE_OVERRIDES {
            return Err(invalid("attribution.surface", format!("at most {MAX_SURFACE_OVERRIDES} surfaces")));
        }
        let mut shadow_models = Vec::new();
        for (i, name) in a.shadow_models.iter().enumerate() {
            let key = format!("attribution.shadow_models[{i}]");
            let m = Model::parse(name).ok_or_else(|| {
                invalid(
                    &key,
                    format!("{name:?} is not one of last_touch, first_touch, linear, position_based, time_decay"),
                )
            })?;
            if m == model {
                return Err(invalid(&key, format!("{name:?} is the paid model (attribution.model)")));
            }
            if shadow_models.contains(&m) {
                return Err(invalid(&key, format!("{name:?} is listed twice")));
            }
            shadow_models.push(m);
        }
        for (name, s) in &a.surface {
            let key = |k: &str| format!("attribution.surface.{name}.{k}");
            let click = s.click_window.as_deref().map(|t| duration(&key("click_window"), t)).transpose()?;
            let view = s.view_window.as_deref().map(|t| duration(&key("view_window"), t)).transpose()?;
            surfaces.push((name.as_str().into(), click, view));
        }
        let t = &self.time;
        let c = &self.commission;
        let mut rules = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            let key = |k: &str| format!("commission.rules[{i}].{k}");
            if r.id.is_empty() {
                return Err(invalid(key("id"), "every rule needs an id"));
            }
            if r.id == DEFAULT_RULE_ID || c.rules[..i].iter().any(|o| o.id == r.id) {
                return Err(invalid(key("id"), format!("{:?} is reserved or used twice", r.id)));
            }
            let rule = Rule {
                id: r.id.as_str().into(),
                product_id: selector(&key("product_id"), &r.product_id)?,
                creator_id: selector(&key("creator_id"), &r.creator_id)?,
                category: selector(&key("category"), &r.category)?,
                rate_bps: rate(&key("rate_bps"), r.rate_bps)?,
                valid_from: instant(&key("valid_from"), &r.valid_from)?,
                valid_until: instant(&key("valid_until"), &r.valid_until)?,
            };
            if let (Some(from), Some(until)) = (rule.valid_from, rule.valid_until) {
                if from >= until {
                    return Err(invalid(key("valid_until"), "must be after valid_from"));
                }
            }
            rules.push(rule);
        }
        let l = &self.limits;
        let refund_window = duration("time.refund_window", &t.refund_window)?;
        let lock_period = match &c.lock_period {
            None => None,
            Some(text) => {
                let d = duration("commission.lock_period", text)?;
                if d > refund_window {
                    return Err(invalid(
                        "commission.lock_period",
                        format!("{text:?} is longer than time.refund_window ({})", t.refund_window),
                    ));
                }
                Some(d)
            }
        };
        let engine = EngineConfig {
            model,
            click_window: duration("attribution.click_window", &a.click_window)?,
            view_window: duration("attribution.view_window", &a.view_window)?,
            half_life,
            allow_self_attribution: a.allow_self_attribution,
            surfaces,
            max_out_of_orderness: duration("time.max_out_of_orderness", &t.max_out_of_orderness)?,
            allowed_lateness: duration("time.allowed_lateness", &t.allowed_lateness)?,
            refund_window,
            max_touches_per_user: at_most("limits.max_touches_per_user", l.max_touches_per_user, 1_000_000)?,
            plan: CommissionPlan::new(rate("commission.default_rate_bps", c.default_rate_bps)?, rules),
            lock_period,
            shadow_models,
        };
        let idle_ms = duration("time.idle_timeout", &t.idle_timeout)?;
        let k = &self.kafka;
        if k.input_topics.is_empty() {
            return Err(invalid("kafka.input_topics", "needs at least one topic"));
        }
        for (key, v) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.output_topic", &k.output_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let ms = |key: &str, text: &str| -> Result<Duration, ConfigError> {
            let d = duration(key, text)?;
            if d <= 0 {
                return Err(invalid(key, "must be longer than 0"));
            }
            Ok(Duration::from_millis(d as u64))
        };
        let transaction_timeout = ms("kafka.transaction_timeout", &k.transaction_timeout)?;
        if transaction_timeout > Duration::from_secs(900) {
            return Err(invalid("kafka.transaction_timeout", "must be at most 15m (the broker's default maximum)"));
        }
        if k.partitions < 0 || k.partitions > 100_000 {
            return Err(invalid(
                "kafka.partitions",
                format!("{} is not a partition count (1 to 100000, or 0: the largest input's)", k.partitions),
            ));
        }
        if !(0..=1024).contains(&k.threads) {
            return Err(invalid(
                "kafka.threads",
                format!("{} is not a thread count (1 to 1024, or 0: one per core)", k.threads),
            ));
        }
        if k.partitions > 0 && !k.repartition {
            return Err(invalid(
                "kafka.partitions",
                "is the internal topic's partition count and only applies with kafka.repartition = true",
            ));
        }
        let mut kafka = k.clone();
        let transactional_id_auto = kafka.transactional_id.is_empty();
        let partitioner = crate::routing::Partitioner::parse(&k.partitioner).ok_or_else(|| {
            invalid("kafka.partitioner", format!("{:?} is not one of murmur2_random, consistent_random", k.partitioner))
        })?;
        if kafka.transactional_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "localhost".into());
            kafka.transactional_id = format!("{}-{}", k.group_id, host.trim());
        }
        // Environment variables cannot hold dots; librdkafka keys never hold underscores.
        kafka.client = k.client.iter().map(|(key, v)| (key.replace('_', "."), v.clone())).collect();
        Ok(Config {
            engine,
            limits: DecodeLimits {
                max_message_bytes: positive("limits.max_message_bytes", l.max_message_bytes)?,
                max_items: positive("limits.max_items_per_purchase", l.max_items_per_purchase)?,
                max_id_bytes: at_most("limits.max_id_bytes", l.max_id_bytes, 256)?,
                max_depth: positive("limits.max_json_depth", l.max_json_depth)?,
            },
            idle_timeout: Duration::from_millis(idle_ms as u64),
            max_future_skew: duration("time.max_future_skew", &t.max_future_skew)?,
            kafka,
            commit_interval: ms("kafka.commit_interval", &k.commit_interval)?,
            snapshot_interval: ms("kafka.snapshot_interval", &k.snapshot_interval)?,
            transaction_timeout,
            session_timeout: ms("kafka.session_timeout", &k.session_timeout)?,
            shutdown_timeout: ms("kafka.shutdown_timeout", &k.shutdown_timeout)?,
            transactional_id_auto,
            partitioner,
            read_ahead: duration("kafka.read_ahead", &k.read_ahead)?,
            threads: match k.threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n as usize,
            },
            max_live_touches: positive("limits.max_live_touches", l.max_live_touches)?,
            max_pending_purchases: positive("limits.max_pending_purchases", l.max_pending_purchases)?,
            metrics_listen: match self.metrics.listen.trim() {
                "" => None,
                a => Some(a.parse().map_err(|e| {
                    invalid("metrics.listen", format!("{a:?} is not an address like 127.0.0.1:9898 ({e})"))
                })?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.engine, EngineConfig::default());
        assert_eq!(c.kafka.input_topics, ["views", "clicks", "purchases", "refunds"]);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.max_future_skew, 3_600_000);
    }

    #[test]
    fn reads_every_section() {
        let c = Config::from_toml(
            r#"
            [attribution]
            model = "time_decay"
            click_window = "3d"
            half_life = "12h"
            [attribution.surface.live]
            click_window = "30m"
            [time]
            allowed_lateness = "250ms"
            [commission]
            default_rate_bps = 500
            [[commission.rules]]
            id = "beauty-launch"
            category = "beauty"
            rate_bps = 1500
            valid_from = "2026-11-01T00:00:00Z"
            valid_until = "2026-12-01T00:00:00Z"
            [kafka.client]
            "security.protocol" = "SASL_SSL"
            "#,
        )
        .unwrap();
        assert_eq!(c.engine.model, Model::TimeDecay);
        assert_eq!(c.engine.click_window, 3 * 86_400_000);
        assert_eq!(c.engine.half_life, 43_200_000);
        assert_eq!(c.engine.surfaces, vec![("live".into(), Some(1_800_000), None)]);
        assert_eq!(c.engine.allowed_lateness, 250);
        assert_eq!(c.engine.plan.rate_for("p", "c", Some("beauty"), 1_795_000_000_000), (1500, "beauty-launch"));
        assert_eq!(c.kafka.client["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[attribution]\nmodel = \"u_shaped\"").contains("attribution.model"));
        assert!(err("[time]\nallowed_lateness = \"soon\"").contains("time.allowed_lateness"));
        assert!(err("[commission]\ndefault_rate_bps = 10001").contains("commission.default_rate_bps"));
        assert!(err("[[commission.rules]]\nid = \"x\"\nrate_bps = -1").contains("commission.rules[0].rate_bps"));
        assert!(err("[[commission.rules]]\nrate_bps = 1").contains("commission.rules[0].id"));
        assert!(err("[limits]\nmax_touches_per_user = 0").contains("limits.max_touches_per_user"));
        assert!(err("[limits]\nmax_touches_per_user = 1000001").contains("limits.max_touches_per_user"));
        assert!(err("[limits]\nmax_id_bytes = 257").contains("limits.max_id_bytes"));
        assert!(Config::from_toml("[limits]\nmax_id_bytes = 256\nmax_touches_per_user = 1000000").is_ok());
        assert!(
            err("[attribution.surface.live]\nclick_window = \"x\"").contains("attribution.surface.live.click_window")
        );
        assert!(err("[kafka]\nrepartition = true\npartitions = -1").contains("kafka.partitions"));
        assert!(err("[kafka]\nthreads = -1").contains("kafka.threads"));
        assert!(err("[kafka]\npartitions = 8").contains("kafka.repartition = true"), "partitions without repartition");
        let c = Config::from_toml("[kafka]\nrepartition = true\npartitions = 8").unwrap();
        assert!(c.kafka.repartition);
        assert_eq!(c.kafka.partitions, 8);
        let unknown = err("[attribution]\nmodle = \"linear\"");
        assert!(unknown.contains("modle"), "{unknown}");
        let unknown_section = err("[atribution]\nmodel = \"linear\"");
        assert!(unknown_section.contains("atribution"), "{unknown_section}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attrib.toml");
        std::fs::write(&path, "[attribution]\nmodel = \"linear\"\n[commission]\ndefault_rate_bps = 700\n").unwrap();
        let env = vec![
            ("ATTRIB__ATTRIBUTION__MODEL".to_string(), "first_touch".to_string()),
            ("ATTRIB__KAFKA__CLIENT__SASL_PASSWORD".to_string(), "hunter2".to_string()),
        ];
        let c = Config::load_with_env(Some(&path), env).unwrap();
        assert_eq!(c.engine.model, Model::FirstTouch);
        assert_eq!(c.engine.plan.rate_for("p", "c", None, 0).0, 700);
        assert_eq!(c.kafka.client["sasl.password"], "hunter2");
        assert!(!format!("{:?}", c.kafka).contains("hunter2"), "secrets never in Debug output");
        let bad = Config::load_with_env(Some(&path), vec![("ATTRIB__TIME__REFUND_WINDOW".into(), "forever".into())]);
        assert!(bad.unwrap_err().to_string().contains("time.refund_window"));
    }
}

//! The one driver of the engine: decode → dead-letter → engine → watermark → output.
//!
//! Replay, parallel replay, the Kafka worker's partition groups, `restate`, `explain`,
//! the fuzz targets and the benchmarks all push their inputs through a [`Pipeline`];
//! they differ only in where bytes come from and where a [`Sink`] sends what comes out.
//! No I/O, no clock: the worker passes the wall clock in (for `max_future_skew`).

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, DecodeLimits, Decoder};
use crate::engine::watermark::Watermarks;
use crate::engine::{Attributing, Engine, EngineConfig, Outcome, Output, UnitKey};
use crate::model::{DeadLetter, DeadLetterReason, Event, Millis, RecordView, SourcePos};

/// Everything that decides what the pipeline writes: the config in force (SPEC 8.1).
/// The Kafka worker keeps it with its state, so a rebuild after a crash runs under the
/// config that was in force when the input was first processed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Processing {
    pub engine: EngineConfig,
    pub limits: DecodeLimits,
    /// Kafka worker only: event times further ahead of the wall clock are dead letters.
    pub max_future_skew: Millis,
}

impl Default for Processing {
    fn default() -> Self {
        Processing { engine: EngineConfig::default(), limits: DecodeLimits::default(), max_future_skew: 3_600_000 }
    }
}

impl Processing {
    /// The processing part of a checked config.
    pub fn from_config(config: &crate::config::Config) -> Processing {
        Processing { engine: config.engine.clone(), limits: config.limits, max_future_skew: config.max_future_skew }
    }

    /// The config keys whose values differ between `self` and `other`, with both values
    /// (for the worker's start-up log).
    pub fn differences(&self, other: &Processing) -> Vec<(String, String, String)> {
        let a = flatten(&serde_json::to_value(self).unwrap_or_default());
        let b = flatten(&serde_json::to_value(other).unwrap_or_default());
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| {
                let show = |m: &std::collections::BTreeMap<String, String>| m.get(k).cloned().unwrap_or("-".into());
                (k.clone(), show(&a), show(&b))
            })
            .collect()
    }
}

fn flatten(v: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    fn go(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    go(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    go("", v, &mut out);
    out
}

/// Where a pipeline's output goes.
pub trait Sink {
    /// A record: paid, or a shadow model's when `record.shadow`.
    fn record(&mut self, record: &RecordView<'_>, tag: u64);
    /// A dead letter.
    fn dead_letter(&mut self, dead_letter: DeadLetter);
    /// The start of the records of one final event or lock (see [`UnitKey`]).
    fn unit(&mut self, _key: &UnitKey<'_>, _on_arrival: bool) {}
    /// A purchase about to be attributed (see [`Output::attributing`]): `attrib explain`.
    #[inline]
    fn attributing(&mut self, _purchase: &Attributing<'_>) {}
}

/// Discards everything: rebuilding state without writing.
pub struct Discard;

impl Sink for Discard {
    fn record(&mut self, _: &RecordView<'_>, _: u64) {}
    fn dead_letter(&mut self, _: DeadLetter) {}
}

/// The engine's output, forwarded to a sink.
struct ToSink<'a, S: Sink + ?Sized>(&'a mut S);

impl<S: Sink + ?Sized> Output for ToSink<'_, S> {
    #[inline]
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        self.0.record(record, tag);
    }

    #[inline]
    fn unit(&mut self, key: &UnitKey<'_>, on_arrival: bool) {
        self.0.unit(key, on_arrival);
    }

    #[inline]
    fn attributing(&mut self, purchase: &Attributing<'_>) {
        self.0.attributing(purchase);
    }
}

/// One engine with its decoder and the watermarks of its inputs.
pub struct Pipeline {
    engine: Engine,
    decoder: Decoder,
    watermarks: Watermarks,
    processing: Processing,
}

impl Pipeline {
    /// A pipeline over `inputs` inputs under `processing`.
    pub fn new(processing: Processing, inputs: usize) -> Pipeline {
        Pipeline {
            engine: Engine::new(processing.engine.clone()),
            decoder: Decoder::new(processing.limits),
            watermarks: Watermarks::new(inputs, processing.engine.max_out_of_orderness),
            processing,
        }
    }

    /// A pipeline around a restored engine and watermarks.
    pub fn from_parts(processing: Processing, engine: Engine, watermarks: Watermarks) -> Pipeline {
        Pipeline { engine, decoder: Decoder::new(processing.limits), watermarks, processing }
    }

    /// Switches to another config from here on (SPEC 8.1).
    pub fn set_processing(&mut self, processing: Processing) {
        self.engine.set_config(processing.engine.clone());
        self.decoder = Decoder::new(processing.limits);
        self.watermarks.set_max_out_of_orderness(processing.engine.max_out_of_orderness);
        self.processing = processing;
    }

    /// The config in force.
    pub fn processing(&self) -> &Processing {
        &self.processing
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, mutably (checkpoints).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The inputs' watermarks.
    pub fn watermarks(&self) -> &Watermarks {
        &self.watermarks
    }

    /// Decodes one message.
    pub fn decode(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        self.decoder.decode(raw)
    }

    /// One raw message (a line or a Kafka value) of input `input`. `now_ms`: the wall
    /// clock for the future-timestamp check (the Kafka worker), `None` in replay.
    #[inline]
    pub fn on_message<S: Sink + ?Sized>(
        &mut self,
        input: usize,
        raw: &[u8],
        source: impl FnOnce() -> SourcePos,
        now_ms: Option<Millis>,
        tag: u64,
        sink: &mut S,
    ) {
        let decoded = self.decoder.decode(raw);
        self.on_decoded(input, decoded.as_ref(), raw, source, now_ms, tag, sink);
    }

    /// One message decoded elsewhere (parallel replay decodes ahead, on other threads).
    #[allow(clippy::too_many_arguments)]
    pub fn on_decoded<S: Sink + ?Sized>(
        &mut self,
        input: usize,
        decoded: Result<&Event, &DecodeError>,
        raw: &[u8],
        source: impl FnOnce() -> SourcePos,
        now_ms: Option<Millis>,
        tag: u64,
        sink: &mut S,
    ) {
        self.engine.stats_mut().events_in += 1;
        match decoded {
            Err(e) => {
                self.engine.stats_mut().dead_letter(e.reason);
                sink.dead_letter(DeadLetter::new(e.reason, e.message.clone(), source(), raw));
            }
            Ok(event) => {
                let ts = event.ts();
                if let Some(now) = now_ms.filter(|now| ts > now.saturating_add(self.processing.max_future_skew)) {
                    let reason = DeadLetterReason::FutureTimestamp;
                    self.engine.stats_mut().dead_letter(reason);
                    let error = format!("event time {ts} is more than max_future_skew ahead of the clock {now}");
                    sink.dead_letter(DeadLetter::new(reason, error, source(), raw));
                } else {
                    if self.engine.process(event, tag, &mut ToSink(sink)) == Outcome::TooLate {
                        let error = format!(
                            "event time {ts} is behind the watermark {} by more than allowed",
                            self.engine.watermark()
                        );
                        sink.dead_letter(DeadLetter::new(DeadLetterReason::TooLate, error, source(), raw));
                    }
                    self.watermarks.observe(input, ts);
                }
            }
        }
        self.advance(sink);
    }

    /// An event of input `input` that another pipeline handles (its shopper is not
    /// ours): it still moves the shared event time.
    #[inline]
    pub fn observe_only<S: Sink + ?Sized>(&mut self, input: usize, ts: Millis, sink: &mut S) {
        self.engine.observe_ts(ts);
        self.watermarks.observe(input, ts);
        self.advance(sink);
    }

    /// A message counted and dead-lettered before decoding (the worker's misrouted
    /// events): it does not move event time.
    pub fn reject<S: Sink + ?Sized>(
        &mut self,
        reason: DeadLetterReason,
        error: String,
        source: SourcePos,
        raw: &[u8],
        sink: &mut S,
    ) {
        self.engine.stats_mut().events_in += 1;
        self.engine.stats_mut().dead_letter(reason);
        sink.dead_letter(DeadLetter::new(reason, error, source, raw));
    }

    /// Input `input` goes idle (or active again): it stops holding the watermark back.
    pub fn set_idle<S: Sink + ?Sized>(&mut self, input: usize, idle: bool, sink: &mut S) {
        self.watermarks.set_idle(input, idle);
        self.advance(sink);
    }

    /// Watermark progress of input `input` reported by an upstream stage (the re-key
    /// stage's markers, SPEC 8.6): its largest event time so far, and whether it is idle.
    /// No event: nothing is counted and the engine's own event time does not move.
    pub fn mark<S: Sink + ?Sized>(&mut self, input: usize, max_ts: Option<Millis>, idle: bool, sink: &mut S) {
        // Progress first, then idleness, as if the events had come and the input then
        // gone quiet: an input that reports its last event time and goes idle in one
        // marker must still move the watermark to it when it is the last one active.
        if let Some(ts) = max_ts {
            self.watermarks.observe(input, ts);
            self.advance(sink);
        }
        self.watermarks.set_idle(input, idle);
        self.advance(sink);
    }

    /// Input `input` has ended.
    pub fn finish_input<S: Sink + ?Sized>(&mut self, input: usize, sink: &mut S) {
        self.watermarks.finish(input);
        self.advance(sink);
    }

    /// Moves the engine's watermark to `w` directly (drivers that decide event time
    /// themselves: tests, the fuzz target).
    pub fn advance_watermark<S: Sink + ?Sized>(&mut self, w: Millis, sink: &mut S) {
        self.engine.advance_watermark(w, &mut ToSink(sink));
    }

    /// End of all input: every pending event becomes final.
    pub fn finish<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        self.engine.finish(&mut ToSink(sink));
    }

    #[inline]
    fn advance<S: Sink + ?Sized>(&mut self, sink: &mut S) {
        if let Some(w) = self.watermarks.current() {
            self.engine.advance_watermark(w, &mut ToSink(sink));
        }
    }
}

//! Local replay: JSONL files in, records and dead letters out, no broker (SPEC §7).
//!
//! Each file is one input with its own watermark (SPEC §5). Files are read side by side:
//! the next line always comes from the unfinished file that is furthest behind in event
//! time, which keeps the combined watermark moving and the pending queue short. At the
//! end of the last file every pending event becomes final.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::codec::{encode_record, Encoder};
use crate::config::Config;
use crate::engine::watermark::Watermarks;
use crate::engine::{Engine, Stats, UnitKey};
use crate::model::{DeadLetter, Record, RecordView, SourcePos};
use crate::pipeline::{Pipeline, Processing, Sink};

/// A [`Sink`] that writes somewhere and may fail: replay stops at the first error.
pub trait ReplaySink: Sink {
    /// The first write error since the last call.
    fn take_error(&mut self) -> Option<io::Error> {
        None
    }
}

/// Records as JSON lines to one writer, dead letters and shadow records to others (or
/// nowhere).
pub struct JsonLinesSink<R: Write, D: Write> {
    records: R,
    dead_letters: Option<D>,
    shadow: Option<Box<dyn Write>>,
    buf: Vec<u8>,
    /// Consecutive shadow records of an item share its encoded fields.
    shadow_encoder: Encoder,
    error: Option<io::Error>,
}

impl<R: Write, D: Write> JsonLinesSink<R, D> {
    /// A sink writing records to `records` and dead letters to `dead_letters` if given.
    pub fn new(records: R, dead_letters: Option<D>) -> Self {
        JsonLinesSink {
            records,
            dead_letters,
            shadow: None,
            buf: Vec::with_capacity(1024),
            shadow_encoder: Encoder::default(),
            error: None,
        }
    }

    /// Shadow-model records go to `shadow` (otherwise they are dropped).
    pub fn with_shadow(mut self, shadow: Box<dyn Write>) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// Flushes every writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.records.flush()?;
        if let Some(d) = &mut self.dead_letters {
            d.flush()?;
        }
        if let Some(s) = &mut self.shadow {
            s.flush()?;
        }
        Ok(())
    }

    /// Writes lines encoded elsewhere (parallel replay encodes on its shard threads).
    pub fn write_encoded(&mut self, records: &[u8], shadow: &[u8], dead_letters: &[u8]) -> io::Result<()> {
        self.records.write_all(records)?;
        if let Some(s) = &mut self.shadow {
            s.write_all(shadow)?;
        }
        if let Some(d) = &mut self.dead_letters {
            d.write_all(dead_letters)?;
        }
        Ok(())
    }

    /// Whether shadow records and dead letters are written (else they need no encoding).
    pub fn writes(&self) -> (bool, bool) {
        (self.shadow.is_some(), self.dead_letters.is_some())
    }

    fn keep(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

impl<R: Write, D: Write> Sink for JsonLinesSink<R, D> {
    fn record(&mut self, record: &RecordView<'_>, _tag: u64) {
        if record.shadow && self.shadow.is_none() {
            return; // counted by the engine, written nowhere: not worth encoding
        }
        self.buf.clear();
        if record.shadow {
            self.shadow_encoder.encode(record, &mut self.buf);
        } else {
            encode_record(record, &mut self.buf);
        }
        let r = if record.shadow {
            match &mut self.shadow {
                Some(s) => s.write_all(&self.buf),
                None => Ok(()),
            }
        } else {
            self.records.write_all(&self.buf)
        };
        self.keep(r);
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        if let Some(d) = &mut self.dead_letters {
            let r =
                serde_json::to_writer(&mut *d, &dead_letter).map_err(io::Error::from).and_then(|()| d.write_all(b"\n"));
            self.keep(r);
        }
    }
}

impl<R: Write, D: Write> ReplaySink for JsonLinesSink<R, D> {
    fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }
}

/// Everything in memory: for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemorySink {
    pub records: Vec<Record>,
    pub shadow: Vec<Record>,
    pub dead_letters: Vec<DeadLetter>,
}

impl Sink for MemorySink {
    fn record(&mut self, record: &RecordView<'_>, _tag: u64) {
        if record.shadow {
            self.shadow.push(record.to_record());
        } else {
            self.records.push(record.to_record());
        }
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        self.dead_letters.push(dead_letter);
    }
}

impl ReplaySink for MemorySink {}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub stats: Stats,
    pub bytes_read: u64,
    pub elapsed: Duration,
    /// Wall time from reading a purchase or refund to writing its records, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Most live touches and pending purchases seen (sampled every [`OBSERVE_EVERY`] lines).
    pub peak_live_touches: usize,
    pub peak_pending: usize,
    /// The limits they are compared with (`limits.max_live_touches`, `max_pending_purchases`).
    pub max_live_touches: usize,
    pub max_pending_purchases: usize,
    /// Engines the shoppers were split over (`--jobs`).
    pub jobs: usize,
}

/// Lines between two looks at the state (peaks, progress).
pub const OBSERVE_EVERY: u64 = 4096;

/// Lines read between two reads of the clock for the latency tags: a read costs about as
/// much as 1/50 of an event (callgrind: ~90 instructions of ~4,300), and 16 lines take
/// ~30 µs here, well below the histogram's interest (watermark holds of milliseconds).
/// A record's latency is measured from the last read before its event's line.
const CLOCK_EVERY: u64 = 16;

/// Watches a replay as it goes: progress bars, metrics.
pub trait Observer {
    /// Called every [`OBSERVE_EVERY`] lines and once at the end.
    fn observe(&mut self, bytes_read: u64, engine: &Engine);
}

/// Watches nothing.
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&mut self, _: u64, _: &Engine) {}
}

impl Summary {
    /// Input events per second of wall time.
    pub fn events_per_sec(&self) -> f64 {
        self.stats.events_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One input: a name for dead letters and a line reader.
pub struct Input<R> {
    pub name: String,
    pub reader: R,
}

/// Opens files as inputs.
pub fn open_files(paths: &[PathBuf]) -> io::Result<Vec<Input<BufReader<File>>>> {
    paths
        .iter()
        .map(|p| {
            let file = File::open(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            Ok(Input { name: p.display().to_string(), reader: BufReader::with_capacity(1 << 20, file) })
        })
        .collect()
}

/// Measures read-to-record latency on the way to the real sink.
pub(crate) struct Timed<'a, S: ?Sized> {
    pub sink: &'a mut S,
    pub start: Instant,
    pub latency_us: Histogram<u64>,
}

impl<'a, S: ?Sized> Timed<'a, S> {
    pub fn new(sink: &'a mut S, start: Instant) -> Self {
        Timed { sink, start, latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds") }
    }
}

impl<S: Sink + ?Sized> Sink for Timed<'_, S> {
    #[inline]
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        // Paid records only: a shadow record leaves with the paid ones of its event, and
        // reading the clock per shadow record costs more than the latency it would show.
        if tag > 0 && !record.shadow {
            let now = self.start.elapsed().as_nanos() as u64;
            self.latency_us.saturating_record(now.saturating_sub(tag) / 1000);
        }
        self.sink.record(record, tag);
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        self.sink.dead_letter(dead_letter);
    }

    #[inline]
    fn unit(&mut self, key: &UnitKey<'_>, on_arrival: bool) {
        self.sink.unit(key, on_arrival);
    }
}

struct Reader<R> {
    name: String,
    reader: R,
    line_no: u64,
}

/// The inputs of a replay, read side by side: the next line always comes from the
/// unfinished input furthest behind in event time (lowest index on ties). Shared by
/// replay and `restate`, which feeds each line to two pipelines.
pub(crate) struct Lines<R> {
    readers: Vec<Reader<R>>,
    line: Vec<u8>,
    /// `(input, bytes)` of the line handed out last in place, consumed at the next call.
    consume: Option<(usize, usize)>,
}

/// What [`Lines::next`] read.
pub(crate) enum Step<'a> {
    /// Input `input` has ended.
    End(usize),
    /// One line of input `input` (without its line break; may be blank), `bytes` long
    /// with the break.
    Line { input: usize, raw: &'a [u8], name: &'a str, line_no: u64, bytes: usize },
}

impl<R: BufRead> Lines<R> {
    pub fn new(inputs: Vec<Input<R>>) -> Self {
        let readers = inputs.into_iter().map(|i| Reader { name: i.name, reader: i.reader, line_no: 0 }).collect();
        Lines { readers, line: Vec::with_capacity(4096), consume: None }
    }

    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// The next line, picked by the inputs' `watermarks`; `None` once every input ended.
    pub fn next(&mut self, watermarks: &Watermarks) -> io::Result<Option<Step<'_>>> {
        if let Some((i, n)) = self.consume.take() {
            self.readers[i].reader.consume(n);
        }
        let Some(i) = next_input(watermarks, self.readers.len()) else {
            return Ok(None);
        };
        let r = &mut self.readers[i];
        // A whole line in the reader's buffer is used where it lies (and consumed at the
        // next call); one that straddles the buffer's end is copied out.
        let buf = r.reader.fill_buf()?;
        let newline = memchr::memchr(b'\n', buf);
        let n = match newline {
            Some(p) => p + 1,
            None if buf.is_empty() => 0,
            None => {
                self.line.clear();
                r.reader.read_until(b'\n', &mut self.line)?
            }
        };
        if n == 0 {
            return Ok(Some(Step::End(i)));
        }
        r.line_no += 1;
        let raw = if newline.is_some() {
            self.consume = Some((i, n));
            &r.reader.fill_buf()?[..n]
        } else {
            &self.line[..]
        };
        Ok(Some(Step::Line { input: i, raw: trim_line(raw), name: &r.name, line_no: r.line_no, bytes: n }))
    }
}

/// Replays the inputs through one engine into `sink`.
pub fn replay<R: BufRead, S: ReplaySink + ?Sized>(
    config: &Config,
    inputs: Vec<Input<R>>,
    sink: &mut S,
) -> io::Result<Summary> {
    replay_observed(config, inputs, sink, &mut NoObserver)
}

/// [`replay`], reporting progress to `observer`.
///
/// Replay has no back-pressure to apply: it already reads the input furthest behind in
/// event time next, which is what the worker falls back to under back-pressure. It
/// reports the state's peaks against the limits instead (see [`Summary`]).
pub fn replay_observed<R: BufRead, S: ReplaySink + ?Sized>(
    config: &Config,
    inputs: Vec<Input<R>>,
    sink: &mut S,
    observer: &mut dyn Observer,
) -> io::Result<Summary> {
    let start = Instant::now();
    let (mut peak_live_touches, mut peak_pending, mut lines) = (0, 0, 0u64);
    let mut pipeline = Pipeline::new(Processing::from_config(config), inputs.len());
    let mut lines_in = Lines::new(inputs);
    let mut out = Timed::new(sink, start);
    let mut bytes_read = 0u64;
    let mut tag = 0;
    while let Some(step) = lines_in.next(pipeline.watermarks())? {
        match step {
            Step::End(i) => pipeline.finish_input(i, &mut out),
            Step::Line { input: i, raw, name, line_no, bytes } => {
                bytes_read += bytes as u64;
                lines += 1;
                if lines % OBSERVE_EVERY == 0 {
                    peak_live_touches = peak_live_touches.max(pipeline.engine().live_touches());
                    peak_pending = peak_pending.max(pipeline.engine().pending());
                    observer.observe(bytes_read, pipeline.engine());
                    if let Some(e) = out.sink.take_error() {
                        return Err(e);
                    }
                }
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue; // a blank line is not an event
                }
                if lines % CLOCK_EVERY == 1 || tag == 0 {
                    tag = (start.elapsed().as_nanos() as u64).max(1); // 0: no latency
                }
                pipeline.on_message(
                    i,
                    raw,
                    || SourcePos::File { file: name.to_string(), line: line_no },
                    None,
                    tag,
                    &mut out,
                );
            }
        }
    }
    peak_live_touches = peak_live_touches.max(pipeline.engine().live_touches());
    peak_pending = peak_pending.max(pipeline.engine().pending());
    pipeline.finish(&mut out);
    if let Some(e) = out.sink.take_error() {
        return Err(e);
    }
    observer.observe(bytes_read, pipeline.engine());
    Ok(Summary {
        stats: pipeline.engine().stats().clone(),
        bytes_read,
        elapsed: start.elapsed(),
        latency_us: out.latency_us,
        peak_live_touches,
        peak_pending,
        max_live_touches: config.max_live_touches,
        max_pending_purchases: config.max_pending_purchases,
        jobs: 1,
    })
}

/// The input to read next: the unfinished one furthest behind in event time (lowest
/// index on ties). `explain` reads in the same order, so it sees the same watermarks.
#[inline]
pub(crate) fn next_input(w: &Watermarks, inputs: usize) -> Option<usize> {
    (0..inputs).filter(|&i| !w.is_finished(i)).min_by_key(|&i| w.max_ts(i))
}

pub(crate) fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Replays files into JSON-lines writers (the `attrib replay` command).
pub fn replay_files(
    config: &Config,
    files: &[PathBuf],
    records: impl Write,
    dead_letters: Option<impl Write>,
) -> io::Result<Summary> {
    let inputs = open_files(files)?;
    let mut sink = JsonLinesSink::new(records, dead_letters);
    let summary = replay(config, inputs, &mut sink)?;
    sink.flush()?;
    Ok(summary)
}

/// Replays in-memory JSONL texts (one per input) and collects everything: for tests.
pub fn replay_texts(config: &Config, texts: &[&str]) -> (MemorySink, Summary) {
    let inputs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Input { name: format!("input-{i}"), reader: io::Cursor::new(t.as_bytes()) })
        .collect();
    let mut sink = MemorySink::default();
    let summary = replay(config, inputs, &mut sink).expect("in-memory replay cannot fail to read or write");
    (sink, summary)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::model::EventType;
        let s = &self.stats;
        writeln!(f, "attrib replay summary")?;
        writeln!(
            f,
            "  input      {} events, {:.1} MB in {:.3} s = {:.0} events/s",
            s.events_in,
            self.bytes_read as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.events_per_sec()
        )?;
        writeln!(
            f,
            "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
            "type", "read", "processed", "dup_event", "dup_order", "late", "too_late"
        )?;
        for t in EventType::ALL {
            let x = &s.by_type[t as usize];
            writeln!(
                f,
                "  {:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}",
                t.as_str(),
                x.read,
                x.processed,
                x.duplicate_event,
                x.duplicate_order,
                x.late,
                x.too_late
            )?;
        }
        let dl: Vec<String> = crate::model::DeadLetterReason::ALL
            .iter()
            .filter(|r| s.dead_letter[**r as usize] > 0)
            .map(|r| format!("{} {}", r.as_str(), s.dead_letter[*r as usize]))
            .collect();
        writeln!(
            f,
            "  dead letters {} ({})",
            s.dead_letter.iter().sum::<u64>(),
            if dl.is_empty() { "none".into() } else { dl.join(", ") }
        )?;
        writeln!(
            f,
            "  purchases  attributed {}, unattributed {} (items {} / {})",
            s.purchases_attributed, s.purchases_unattributed, s.items_attributed, s.items_unattributed
        )?;
        writeln!(
            f,
            "  refunds    applied {}, unknown order {}, unattributed order {}, expired {}, after lock {}, excess units {}",
            s.refund_applied,
            s.refund_unknown_order,
            s.refund_unattributed_order,
            s.refund_expired,
            s.refund_after_lock,
            s.refund_excess_units
        )?;
        writeln!(
            f,
            "  records    commission {}, reversal {}, lock {}, shadow {}",
            s.records_commission, s.records_reversal, s.records_lock, s.records_shadow
        )?;
        for (currency, (paid, reversed)) in &s.money {
            writeln!(
                f,
                "  {currency}        commission {} reversed {} net {}{} (minor units)",
                paid,
                reversed,
                paid.saturating_add(*reversed),
                s.locked.get(currency).map(|l| format!(" locked {l}")).unwrap_or_default()
            )?;
        }
        let h = &self.latency_us;
        if !h.is_empty() {
            writeln!(
                f,
                "  latency    read-to-record p50 {} us, p99 {} us, p99.9 {} us, max {} us",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )?;
        }
        let over = |peak: usize, limit: usize| if peak > limit { " OVER THE LIMIT" } else { "" };
        writeln!(
            f,
            "  state      peak live touches {} (limit {}{}), peak pending purchases {} (limit {}{})",
            self.peak_live_touches,
            self.max_live_touches,
            over(self.peak_live_touches, self.max_live_touches),
            self.peak_pending,
            self.max_pending_purchases,
            over(self.peak_pending, self.max_pending_purchases)
        )?;
        write!(f, "  accounted  {} of {} inputs (processed + duplicates + dead letters)", s.accounted(), s.events_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_straddling_the_read_buffer_are_read_whole() {
        let text = "{\"type\":\"click\",\"event_id\":\"k\",\"ts\":1,\"user_id\":\"u\",\"creator_id\":\"c\"}\n\
                    \r\n  \n{bad\r\n\
                    {\"type\":\"purchase\",\"event_id\":\"o\",\"ts\":2,\"user_id\":\"u\",\"order_id\":\"o\",\"currency\":\"USD\",\"items\":[{\"product_id\":\"p\",\"quantity\":1,\"unit_price\":100}]}";
        let (whole, _) = replay_texts(&Config::default(), &[text]);
        assert_eq!(whole.records.len(), 1);
        assert_eq!(whole.dead_letters.len(), 1);
        for capacity in [1, 7, 16, 64, 1 << 20] {
            let inputs =
                vec![Input { name: "input-0".into(), reader: BufReader::with_capacity(capacity, text.as_bytes()) }];
            let mut sink = MemorySink::default();
            let summary = replay(&Config::default(), inputs, &mut sink).unwrap();
            assert_eq!(sink, whole, "buffer of {capacity} bytes");
            assert_eq!(summary.bytes_read, text.len() as u64);
        }
    }

    #[test]
    fn summary_reports_state_peaks_over_the_limits() {
        let config = Config { max_live_touches: 2, ..Config::default() };
        let lines: String = (0..5)
            .map(|i| format!("{{\"type\":\"click\",\"event_id\":\"c{i}\",\"ts\":{i},\"user_id\":\"u{i}\",\"creator_id\":\"k\"}}\n"))
            .collect();
        let (_, summary) = replay_texts(&config, &[&lines]);
        assert_eq!(summary.peak_live_touches, 5, "sampled at the end at least");
        assert!(summary.to_string().contains("peak live touches 5 (limit 2 OVER THE LIMIT)"), "{summary}");
        let (_, summary) = replay_texts(&Config::default(), &[&lines]);
        assert!(!summary.to_string().contains("OVER THE LIMIT"));
    }
}

//! Parallel replay (`attrib replay --jobs N`, SPEC 8.7): the shoppers are split over N
//! engines on N threads, and the output is byte for byte what one engine writes, in the
//! same order, with the same dead letters and the same summary counters.
//!
//! # Stages
//!
//! ```text
//! reader per input ──chunks──▶ decoder pool (N) ──▶ sequencer ──batches──▶ shard 0..N ──▶ merger
//!                                                   (one order)   (all lines)  (engines)    (writes)
//! ```
//!
//! - **Readers** cut each input into chunks of lines ([`CHUNK_LINES`] or [`CHUNK_BYTES`]).
//! - **Decoders** (N threads) decode every line of a chunk and pick the owner of each
//!   valid event: shard `xxh3(user_id) % N`. Decode errors belong to shard 0.
//! - The **sequencer** puts the lines in the order one engine reads them (the
//!   unfinished input furthest behind in event time next, as [`crate::replay`] does) and
//!   sends the same batch to every shard.
//! - Each **shard** runs a [`Pipeline`] over every line: events of its own shoppers
//!   go through [`Pipeline::on_decoded`], the others only move event time
//!   ([`Pipeline::observe_only`]), so every shard sees the same watermark steps at the
//!   same input positions, the end of each input and the end of all input included.
//!   Records and dead letters are encoded on the shard, each group tagged with the
//!   position it belongs to (see below).
//! - The **merger** (the calling thread) puts the groups of the N shards back in the
//!   one-engine order and writes them.
//!
//! # Why the order is the one-engine order
//!
//! For each input line one engine writes (1) what the line itself causes on arrival (a
//! decode or `too_late` dead letter, or the records of a purchase or refund late enough
//! to be final on arrival), then (2) what the watermark step after it makes final:
//! locks and pending purchases and refunds, popped from one queue in [`UnitKey`] order.
//! (1) comes from the shard that owns the line. In (2) every queued item belongs to one
//! shopper, hence to one shard; a shard's queue pops greedily in the same key order,
//! and an item a pop enqueues (a lock) lands in the same shard, so merging the shards'
//! groups of one step by their heads' keys gives exactly the one engine's pops. Groups
//! are compared by `(position, arrival before drain, UnitKey)`; keys never tie across
//! shards because they end with the shopper. Groups that write nothing are not kept.
//!
//! Counters are per shard and merged with [`Stats::merge`]. Where one engine and N
//! differ, it is in what is not output: the summary's latency is read-to-encode (the
//! shard encodes) and its peaks of live touches and pending purchases are the sums of
//! the shards' peaks (an upper bound of the true peak); `--jobs` shows no progress bar.

use std::io::{self, BufRead, Write};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use hdrhistogram::Histogram;

use crate::codec::{encode_record, DecodeError, Decoder, Encoder};
use crate::config::Config;
use crate::engine::watermark::Watermarks;
use crate::engine::{Stats, UnitKey};
use crate::model::{DeadLetter, Event, Millis, RecordView, SourcePos};
use crate::pipeline::{Pipeline, Processing, Sink};
use crate::replay::{trim_line, Input, JsonLinesSink, Summary, OBSERVE_EVERY};

/// Most lines in a chunk (and in a batch handed to the shards).
pub const CHUNK_LINES: usize = 4096;
/// Most bytes in a chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks or batches in flight between two stages.
const QUEUE: usize = 4;

/// `--jobs`: 0 means every core.
pub fn resolve_jobs(jobs: usize) -> usize {
    if jobs == 0 {
        thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        jobs
    }
}

/// The shard that owns a shopper among `shards`.
pub fn shard_of(user_id: &str, shards: usize) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(user_id.as_bytes()) % shards as u64) as u32
}

enum Decoded {
    Event { event: Event, shard: u32 },
    Error(DecodeError),
}

/// Consecutive lines of one input, decoded.
struct Chunk {
    input: u32,
    bytes: Vec<u8>,
    /// Non-blank lines: start, end (line break excluded) and line number.
    lines: Vec<(usize, usize, u64)>,
    decoded: Vec<Decoded>,
    /// Bytes read, blank lines and line breaks included.
    bytes_read: u64,
    /// When it was read (ns since the start): the latency tag of its records.
    tag: u64,
}

impl Chunk {
    fn raw(&self, i: usize) -> &[u8] {
        let (s, e, _) = self.lines[i];
        &self.bytes[s..e]
    }
}

enum Entry {
    Line { chunk: u32, line: u32 },
    Finish(u32),
}

/// Lines in the one-engine order, for every shard.
struct Batch {
    chunks: Vec<Arc<Chunk>>,
    entries: Vec<Entry>,
}

/// A group of output lines: what one position or one final event or lock wrote.
struct Group {
    position: u32,
    /// `None`: on arrival; else the drained unit's key, its ids in [`ShardOut::keys`].
    key: Option<OwnedKey>,
    rec: usize,
    shadow: usize,
    dl: usize,
}

#[derive(Clone, Copy)]
struct OwnedKey {
    time: Millis,
    class: u8,
    at: Millis,
    start: u32,
    event_id: u32,
    user_id: u32,
}

/// One shard's encoded output for one batch.
#[derive(Default)]
struct ShardOut {
    rec: Vec<u8>,
    shadow: Vec<u8>,
    dl: Vec<u8>,
    keys: Vec<u8>,
    groups: Vec<Group>,
}

impl ShardOut {
    fn ids(&self, k: &OwnedKey) -> (&[u8], &[u8]) {
        let s = k.start as usize;
        let e = s + k.event_id as usize;
        (&self.keys[s..e], &self.keys[e..e + k.user_id as usize])
    }

    /// Empty, keeping the capacity.
    fn cleared(mut self) -> ShardOut {
        self.rec.clear();
        self.shadow.clear();
        self.dl.clear();
        self.keys.clear();
        self.groups.clear();
        self
    }

    /// The ranges of group `g`: records, shadow records, dead letters.
    fn ranges(&self, g: usize) -> [(usize, usize); 3] {
        let a = &self.groups[g];
        let (r, s, d) = match self.groups.get(g + 1) {
            Some(b) => (b.rec, b.shadow, b.dl),
            None => (self.rec.len(), self.shadow.len(), self.dl.len()),
        };
        [(a.rec, r), (a.shadow, s), (a.dl, d)]
    }
}

/// The [`Sink`] of a shard: encodes and groups.
struct ShardSink {
    out: ShardOut,
    position: u32,
    /// The key of the current drained unit (`None`: on arrival).
    key: Option<OwnedKey>,
    /// Whether the last group is the current one.
    open: bool,
    /// Whether a group uses the current key's ids in `out.keys`.
    key_used: bool,
    shadow: bool,
    dead_letters: bool,
    /// Consecutive shadow records of an item share its encoded fields.
    shadow_encoder: Encoder,
    start: Instant,
    latency_us: Histogram<u64>,
}

impl ShardSink {
    fn begin(&mut self, position: u32) {
        self.position = position;
        self.drop_key();
    }

    /// Ends the current unit; forgets its ids if it wrote nothing.
    fn drop_key(&mut self) {
        self.open = false;
        if let Some(old) = self.key.take() {
            if !self.key_used {
                self.out.keys.truncate(old.start as usize);
            }
        }
        self.key_used = false;
    }

    fn group(&mut self) {
        if !self.open {
            self.open = true;
            self.key_used |= self.key.is_some();
            let o = &mut self.out;
            o.groups.push(Group {
                position: self.position,
                key: self.key,
                rec: o.rec.len(),
                shadow: o.shadow.len(),
                dl: o.dl.len(),
            });
        }
    }
}

impl Sink for ShardSink {
    fn record(&mut self, record: &RecordView<'_>, tag: u64) {
        // Paid records only, as in a replay on one thread.
        if tag > 0 && !record.shadow {
            let now = self.start.elapsed().as_nanos() as u64;
            self.latency_us.saturating_record(now.saturating_sub(tag) / 1000);
        }
        if record.shadow && !self.shadow {
            return;
        }
        self.group();
        if record.shadow {
            self.shadow_encoder.encode(record, &mut self.out.shadow);
        } else {
            encode_record(record, &mut self.out.rec);
        }
    }

    fn dead_letter(&mut self, dead_letter: DeadLetter) {
        if self.dead_letters {
            self.group();
            let dl = &mut self.out.dl;
            serde_json::to_writer(&mut *dl, &dead_letter).expect("dead letters serialise");
            dl.push(b'\n');
        }
    }

    fn unit(&mut self, key: &UnitKey<'_>, on_arrival: bool) {
        self.drop_key();
        if !on_arrival {
            let keys = &mut self.out.keys;
            let start = keys.len() as u32;
            keys.extend_from_slice(key.event_id.as_bytes());
            keys.extend_from_slice(key.user_id.as_bytes());
            self.key = Some(OwnedKey {
                time: key.time,
                class: key.class,
                at: key.at,
                start,
                event_id: key.event_id.len() as u32,
                user_id: key.user_id.len() as u32,
            });
        }
    }
}

/// What a shard hands back at the end.
struct ShardEnd {
    stats: Stats,
    latency_us: Histogram<u64>,
    peak_live_touches: usize,
    peak_pending: usize,
}

/// Replays `inputs` over `jobs` engines (0: every core) into `sink`: the same bytes as
/// [`crate::replay::replay`] into the same sink.
pub fn replay<R: BufRead + Send, W: Write, D: Write>(
    config: &Config,
    inputs: Vec<Input<R>>,
    jobs: usize,
    sink: &mut JsonLinesSink<W, D>,
) -> io::Result<Summary> {
    let start = Instant::now();
    let shards = resolve_jobs(jobs).max(1);
    let processing = Processing::from_config(config);
    let names: Arc<Vec<String>> = Arc::new(inputs.iter().map(|i| i.name.clone()).collect());
    let n_inputs = inputs.len();
    let (want_shadow, want_dl) = sink.writes();

    let result = thread::scope(|scope| -> io::Result<(Vec<ShardEnd>, u64)> {
        // Decoder pool.
        let (decode_tx, decode_rx) = bounded::<(Chunk, Sender<io::Result<Chunk>>)>(QUEUE * shards);
        for _ in 0..shards {
            let rx = decode_rx.clone();
            let limits = processing.limits;
            scope.spawn(move || {
                let mut decoder = Decoder::new(limits);
                for (mut chunk, done) in rx {
                    chunk.decoded = (0..chunk.lines.len())
                        .map(|i| match decoder.decode(chunk.raw(i)) {
                            Ok(event) => {
                                let shard = shard_of(event.user_id(), shards);
                                Decoded::Event { event, shard }
                            }
                            Err(e) => Decoded::Error(e),
                        })
                        .collect();
                    let _ = done.send(Ok(chunk));
                }
            });
        }
        drop(decode_rx);

        // Readers: one per input, chunks decoded in order.
        let mut ordered = Vec::with_capacity(n_inputs);
        for (index, input) in inputs.into_iter().enumerate() {
            let (order_tx, order_rx) = bounded::<Receiver<io::Result<Chunk>>>(QUEUE);
            ordered.push(order_rx);
            let decode_tx = decode_tx.clone();
            scope.spawn(move || read_input(index as u32, input.reader, start, &decode_tx, &order_tx));
        }
        drop(decode_tx);

        // Shards.
        let mut batch_txs = Vec::with_capacity(shards);
        let mut out_rxs = Vec::with_capacity(shards);
        // Written buffers go back to their shard, to be filled again without growing.
        let mut spent_txs = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for k in 0..shards {
            let (batch_tx, batch_rx) = bounded::<Option<Arc<Batch>>>(QUEUE);
            let (out_tx, out_rx) = bounded::<ShardOut>(QUEUE);
            let (spent_tx, spent_rx) = bounded::<ShardOut>(QUEUE + 2);
            spent_txs.push(spent_tx);
            batch_txs.push(batch_tx);
            out_rxs.push(out_rx);
            let processing = processing.clone();
            let names = names.clone();
            let sink = ShardSink {
                out: ShardOut::default(),
                position: 0,
                key: None,
                open: false,
                key_used: false,
                shadow: want_shadow,
                dead_letters: want_dl,
                shadow_encoder: Encoder::default(),
                start,
                latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            };
            handles.push(
                scope.spawn(move || {
                    run_shard(k as u32, processing, n_inputs, &names, sink, batch_rx, (out_tx, spent_rx))
                }),
            );
        }

        // Sequencer.
        let moo = processing.engine.max_out_of_orderness;
        let sequencer = scope.spawn(move || sequence(ordered, moo, batch_txs));

        // Merger: here, so the sink need not be Send.
        let merged = merge(&out_rxs, &spent_txs, sink);
        drop(out_rxs); // on a write error, every stage stops at its next send
        let bytes_read = sequencer.join().expect("sequencer panicked");
        let ends: Vec<Option<ShardEnd>> = handles.into_iter().map(|h| h.join().expect("shard panicked")).collect();
        merged?;
        let bytes_read = bytes_read?;
        let ends =
            ends.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| io::Error::other("a shard stopped early"))?;
        Ok((ends, bytes_read))
    });
    let (ends, bytes_read) = result?;
    let mut stats = Stats::default();
    let mut latency_us = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let (mut peak_live_touches, mut peak_pending) = (0, 0);
    for end in &ends {
        stats.merge(&end.stats);
        latency_us.add(&end.latency_us).expect("same histogram bounds");
        peak_live_touches += end.peak_live_touches;
        peak_pending += end.peak_pending;
    }
    Ok(Summary {
        stats,
        bytes_read,
        elapsed: start.elapsed(),
        latency_us,
        peak_live_touches,
        peak_pending,
        max_live_touches: config.max_live_touches,
        max_pending_purchases: config.max_pending_purchases,
        jobs: shards,
    })
}

/// Cuts one input into chunks and hands them to the decoders, keeping their order.
fn read_input<R: BufRead>(
    input: u32,
    mut reader: R,
    start: Instant,
    decode_tx: &Sender<(Chunk, Sender<io::Result<Chunk>>)>,
    order_tx: &Sender<Receiver<io::Result<Chunk>>>,
) {
    let mut line_no = 0u64;
    loop {
        let mut chunk = Chunk {
            input,
            bytes: Vec::with_capacity(CHUNK_BYTES + 4096),
            lines: Vec::with_capacity(CHUNK_LINES),
            decoded: Vec::new(),
            bytes_read: 0,
            tag: start.elapsed().as_nanos() as u64,
        };
        let mut eof = false;
        while chunk.lines.len() < CHUNK_LINES && chunk.bytes.len() < CHUNK_BYTES {
            let at = chunk.bytes.len();
            match reader.read_until(b'\n', &mut chunk.bytes) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    chunk.bytes_read += n as u64;
                    line_no += 1;
                    let raw = trim_line(&chunk.bytes[at..]);
                    if raw.iter().all(u8::is_ascii_whitespace) {
                        chunk.bytes.truncate(at); // a blank line is not an event
                    } else {
                        chunk.lines.push((at, at + raw.len(), line_no));
                    }
                }
                Err(e) => {
                    let (tx, rx) = bounded(1);
                    let _ = tx.send(Err(e));
                    let _ = order_tx.send(rx);
                    return;
                }
            }
        }
        if chunk.bytes_read > 0 {
            let (tx, rx) = bounded(1);
            if decode_tx.send((chunk, tx)).is_err() || order_tx.send(rx).is_err() {
                return;
            }
        }
        if eof {
            return;
        }
    }
}

/// Puts the lines of every input in the order one engine reads them and hands them to
/// every shard. Returns the bytes read.
fn sequence(
    ordered: Vec<Receiver<Receiver<io::Result<Chunk>>>>,
    max_out_of_orderness: Millis,
    shards: Vec<crossbeam_channel::Sender<Option<Arc<Batch>>>>,
) -> io::Result<u64> {
    let n = ordered.len();
    let mut watermarks = Watermarks::new(n, max_out_of_orderness);
    // The chunk being read per input (its index in the batch) and the next line.
    let mut current: Vec<Option<(Arc<Chunk>, usize)>> = vec![None; n];
    let mut batch = Batch { chunks: Vec::new(), entries: Vec::with_capacity(CHUNK_LINES) };
    let mut index: Vec<Option<u32>> = vec![None; n];
    let mut bytes_read = 0u64;
    let send = |batch: Batch| -> bool {
        let batch = Arc::new(batch);
        shards.iter().all(|tx| tx.send(Some(batch.clone())).is_ok())
    };
    // The unfinished input furthest behind in event time goes next (lowest index on ties).
    while let Some(i) = (0..n).filter(|&i| !watermarks.is_finished(i)).min_by_key(|&i| watermarks.max_ts(i)) {
        let exhausted = current[i].as_ref().is_none_or(|(c, next)| *next >= c.lines.len());
        if exhausted {
            current[i] = None;
            index[i] = None;
            match ordered[i].recv() {
                Err(_) => {
                    watermarks.finish(i);
                    batch.entries.push(Entry::Finish(i as u32));
                }
                Ok(rx) => {
                    let chunk = rx.recv().map_err(|_| io::Error::other("a decoder stopped"))??;
                    bytes_read += chunk.bytes_read;
                    current[i] = Some((Arc::new(chunk), 0));
                }
            }
            continue;
        }
        let (chunk, next) = current[i].as_mut().expect("not exhausted");
        let line = *next;
        *next += 1;
        if let Decoded::Event { event, .. } = &chunk.decoded[line] {
            watermarks.observe(i, event.ts());
        }
        let c = *index[i].get_or_insert_with(|| {
            batch.chunks.push(chunk.clone());
            batch.chunks.len() as u32 - 1
        });
        batch.entries.push(Entry::Line { chunk: c, line: line as u32 });
        if batch.entries.len() >= CHUNK_LINES {
            let full =
                std::mem::replace(&mut batch, Batch { chunks: Vec::new(), entries: Vec::with_capacity(CHUNK_LINES) });
            index.iter_mut().for_each(|x| *x = None);
            if !send(full) {
                return Ok(bytes_read); // the merger stopped; it reports why
            }
        }
    }
    if !batch.entries.is_empty() {
        send(batch);
    }
    for tx in &shards {
        let _ = tx.send(None); // the end of all input
    }
    Ok(bytes_read)
}

/// One engine over the shoppers of shard `k`; `None` if it stopped before the end.
fn run_shard(
    k: u32,
    processing: Processing,
    inputs: usize,
    names: &[String],
    mut sink: ShardSink,
    batches: Receiver<Option<Arc<Batch>>>,
    (out, spent): (Sender<ShardOut>, Receiver<ShardOut>),
) -> Option<ShardEnd> {
    let send = |sink: &mut ShardSink| {
        let next = spent.try_recv().map(ShardOut::cleared).unwrap_or_default();
        out.send(std::mem::replace(&mut sink.out, next)).ok()
    };
    let mut pipeline = Pipeline::new(processing, inputs);
    let (mut peak_live_touches, mut peak_pending, mut lines) = (0, 0, 0u64);
    loop {
        let batch = batches.recv().ok()?;
        let Some(batch) = batch else { break };
        for (position, entry) in batch.entries.iter().enumerate() {
            sink.begin(position as u32);
            match *entry {
                Entry::Finish(i) => pipeline.finish_input(i as usize, &mut sink),
                Entry::Line { chunk, line } => {
                    let c = &batch.chunks[chunk as usize];
                    let line = line as usize;
                    let input = c.input as usize;
                    let source = || SourcePos::File { file: names[input].clone(), line: c.lines[line].2 };
                    match &c.decoded[line] {
                        Decoded::Event { event, shard } if *shard == k => {
                            pipeline.on_decoded(input, Ok(event), c.raw(line), source, None, c.tag, &mut sink)
                        }
                        Decoded::Event { event, .. } => pipeline.observe_only(input, event.ts(), &mut sink),
                        Decoded::Error(e) if k == 0 => {
                            pipeline.on_decoded(input, Err(e), c.raw(line), source, None, c.tag, &mut sink)
                        }
                        Decoded::Error(_) => {} // moves nothing
                    }
                    lines += 1;
                    if lines % OBSERVE_EVERY == 0 {
                        peak_live_touches = peak_live_touches.max(pipeline.engine().live_touches());
                        peak_pending = peak_pending.max(pipeline.engine().pending());
                    }
                }
            }
        }
        drop(batch);
        send(&mut sink)?;
    }
    peak_live_touches = peak_live_touches.max(pipeline.engine().live_touches());
    peak_pending = peak_pending.max(pipeline.engine().pending());
    // Locks at the end follow the largest event time of the whole input.
    let max_ts = (0..inputs).map(|i| pipeline.watermarks().max_ts(i)).max().unwrap_or(Millis::MIN);
    pipeline.engine_mut().observe_ts(max_ts);
    sink.begin(0);
    pipeline.finish(&mut sink);
    send(&mut sink)?;
    Some(ShardEnd {
        stats: pipeline.engine().stats().clone(),
        latency_us: sink.latency_us,
        peak_live_touches,
        peak_pending,
    })
}

/// Writes the shards' groups in the one-engine order, batch by batch.
fn merge<W: Write, D: Write>(
    outs: &[Receiver<ShardOut>],
    spent: &[Sender<ShardOut>],
    sink: &mut JsonLinesSink<W, D>,
) -> io::Result<()> {
    let n = outs.len();
    let mut batch: Vec<ShardOut> = Vec::with_capacity(n);
    let mut next = vec![0usize; n];
    loop {
        for (o, tx) in batch.drain(..).zip(spent) {
            let _ = tx.try_send(o);
        }
        for rx in outs {
            match rx.recv() {
                Ok(o) => batch.push(o),
                Err(_) => return Ok(()), // the end, or a stage failed (it reports why)
            }
        }
        next.iter_mut().for_each(|x| *x = 0);
        // A run of consecutive groups of one shard is written at once.
        let mut run: Option<(usize, usize, usize)> = None;
        loop {
            let mut best: Option<usize> = None;
            for k in 0..n {
                if next[k] < batch[k].groups.len()
                    && best.is_none_or(|b| before(&batch[k], next[k], &batch[b], next[b]))
                {
                    best = Some(k);
                }
            }
            let Some(k) = best else { break };
            match &mut run {
                Some((rk, _, end)) if *rk == k => *end += 1,
                _ => {
                    if let Some((rk, first, end)) = run {
                        write_run(sink, &batch[rk], first, end)?;
                    }
                    run = Some((k, next[k], next[k] + 1));
                }
            }
            next[k] += 1;
        }
        if let Some((rk, first, end)) = run {
            write_run(sink, &batch[rk], first, end)?;
        }
    }
}

/// Whether group `i` of `a` comes before group `j` of `b`.
fn before(a: &ShardOut, i: usize, b: &ShardOut, j: usize) -> bool {
    let (x, y) = (&a.groups[i], &b.groups[j]);
    let order = x.position.cmp(&y.position).then_with(|| match (&x.key, &y.key) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(p), Some(q)) => {
            (p.time, p.class, p.at).cmp(&(q.time, q.class, q.at)).then_with(|| a.ids(p).cmp(&b.ids(q)))
        }
    });
    order.is_lt()
}

fn write_run<W: Write, D: Write>(
    sink: &mut JsonLinesSink<W, D>,
    out: &ShardOut,
    first: usize,
    end: usize,
) -> io::Result<()> {
    let [r0, s0, d0] = out.ranges(first);
    let [r1, s1, d1] = out.ranges(end - 1);
    sink.write_encoded(&out.rec[r0.0..r1.1], &out.shadow[s0.0..s1.1], &out.dl[d0.0..d1.1])
}

/// Replays in-memory JSONL texts (one per input; bytes, as input need not be UTF-8) over `jobs` engines: records, shadow
/// records and dead letters as bytes. For tests.
pub fn replay_texts<T: AsRef<[u8]>>(config: &Config, texts: &[T], jobs: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>, Summary) {
    run_texts(texts, |inputs, sink| replay(config, inputs, jobs, sink))
}

/// [`replay_texts`] through one engine ([`crate::replay::replay`]), for comparison.
pub fn replay_texts_one<T: AsRef<[u8]>>(config: &Config, texts: &[T]) -> (Vec<u8>, Vec<u8>, Vec<u8>, Summary) {
    run_texts(texts, |inputs, sink| crate::replay::replay(config, inputs, sink))
}

type TextSink = JsonLinesSink<SharedBuf, SharedBuf>;

fn run_texts<T: AsRef<[u8]>>(
    texts: &[T],
    run: impl FnOnce(Vec<Input<io::Cursor<Vec<u8>>>>, &mut TextSink) -> io::Result<Summary>,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, Summary) {
    let inputs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Input { name: format!("input-{i}"), reader: io::Cursor::new(t.as_ref().to_vec()) })
        .collect();
    let (records, shadow, dead_letters) = (SharedBuf::default(), SharedBuf::default(), SharedBuf::default());
    let mut sink =
        JsonLinesSink::new(records.clone(), Some(dead_letters.clone())).with_shadow(Box::new(shadow.clone()));
    let summary = run(inputs, &mut sink).expect("in-memory replay cannot fail to read or write");
    sink.flush().expect("in memory");
    (records.take(), shadow.take(), dead_letters.take(), summary)
}

/// A writer into memory that can be read after its writer is gone.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuf {
    /// What was written.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
